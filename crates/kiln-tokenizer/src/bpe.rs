//! The BPE merge loop over token ids.
//!
//! A pair table maps `(left id, right id)` to `(rank, merged id)`; the lowest
//! rank is merged first, ties go to the leftmost pair. This one rule covers
//! both conventions:
//! - merge lists (GPT-2 merges.txt, tokenizer.json, kiln training): rank =
//!   position in the list, only listed pairs merge;
//! - tiktoken rank files: every split of a token into two tokens is a pair
//!   whose rank is the token's rank (tiktoken merges any adjacent pair whose
//!   concatenation is a token, lowest rank first).
//!
//! The merge loop sees a rule through [`Pairs`]: a pair table for merge
//! lists, the token map itself for rank files (the joined bytes of two parts
//! are a token or not, so no table has to be built when a file loads).
//!
//! Short pieces use a flat array scan (cache friendly, like tiktoken); long
//! pieces use a heap over a linked list, O(n log n), so adversarial input
//! (one million `^`) stays fast.

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub type Rank = u32;
const NONE: u32 = u32::MAX;

/// Pieces up to this many bytes use the quadratic-but-tiny array merge.
const SMALL_PIECE: usize = 48;

/// What the merge loop asks of a merge rule. Values are packed
/// `(rank << 32) | merged id`, `u64::MAX` for "does not merge": ordering
/// them orders by rank, and the merged id comes with it (no second lookup).
pub(crate) trait Pairs {
    /// Two adjacent parts, `left` and `right`, whose bytes together are
    /// `joined` (a rule may look up either).
    fn packed(&self, left: u32, right: u32, joined: &[u8]) -> u64;
    /// Two single bytes: the first round, every pair of a piece.
    fn byte_pair(&self, a: u8, b: u8) -> u64;
}

/// Every pair of two bytes, looked up once: a piece's first round of pair
/// lookups is most of its lookups, and this 512 KiB table stays in cache
/// where the hash maps (hundreds of thousands of entries) miss.
#[derive(Debug, Clone)]
pub(crate) struct BytePairs(Box<[u64]>);

impl BytePairs {
    /// The table of `packed(a, b)` for every two bytes.
    pub fn new(packed: impl Fn(u8, u8) -> u64) -> Self {
        let mut t = vec![u64::MAX; 1 << 16];
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                t[(a as usize) << 8 | b as usize] = packed(a, b);
            }
        }
        BytePairs(t.into())
    }

    #[inline(always)]
    pub fn get(&self, a: u8, b: u8) -> u64 {
        self.0[(a as usize) << 8 | b as usize]
    }
}

impl Default for BytePairs {
    fn default() -> Self {
        BytePairs(vec![u64::MAX; 1 << 16].into())
    }
}

/// A rule restricted to pairs of rank below `limit`.
struct Below<'a, P>(&'a P, Rank);

impl<P: Pairs> Pairs for Below<'_, P> {
    #[inline(always)]
    fn packed(&self, left: u32, right: u32, joined: &[u8]) -> u64 {
        self.keep(self.0.packed(left, right, joined))
    }
    #[inline(always)]
    fn byte_pair(&self, a: u8, b: u8) -> u64 {
        self.keep(self.0.byte_pair(a, b))
    }
}

impl<P> Below<'_, P> {
    #[inline(always)]
    fn keep(&self, v: u64) -> u64 {
        if ((v >> 32) as u32) < self.1 {
            v
        } else {
            u64::MAX
        }
    }
}

/// An explicit pair table: `(left id, right id)` -> `(rank, merged id)`.
#[derive(Debug, Clone, Default)]
pub struct PairTable {
    map: FxHashMap<u64, u64>,
}

#[inline(always)]
fn key(l: u32, r: u32) -> u64 {
    ((l as u64) << 32) | r as u64
}

impl PairTable {
    pub fn with_capacity(n: usize) -> Self {
        let mut map = FxHashMap::default();
        map.reserve(n);
        PairTable { map }
    }

    /// Adds a pair; an existing entry with a lower rank wins.
    pub fn insert(&mut self, left: u32, right: u32, rank: Rank, merged: u32) {
        let v = ((rank as u64) << 32) | merged as u64;
        self.map
            .entry(key(left, right))
            .and_modify(|old| {
                if v < *old {
                    *old = v
                }
            })
            .or_insert(v);
    }

    /// `(rank, merged id)` of a pair, if it merges.
    #[inline(always)]
    pub fn get(&self, left: u32, right: u32) -> Option<(Rank, u32)> {
        self.map
            .get(&key(left, right))
            .map(|&v| ((v >> 32) as u32, v as u32))
    }

    /// The packed entry of a pair, `u64::MAX` if it does not merge.
    #[inline(always)]
    pub(crate) fn packed(&self, left: u32, right: u32) -> u64 {
        self.map.get(&key(left, right)).copied().unwrap_or(u64::MAX)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// [`merge`] with only the pairs of rank below `limit` (`Rank::MAX`: all).
#[inline(always)]
pub(crate) fn merge_below(piece: &[u8], ids: &mut Vec<u32>, rule: &impl Pairs, limit: Rank) {
    if limit == Rank::MAX {
        merge(piece, ids, rule)
    } else {
        merge(piece, ids, &Below(rule, limit))
    }
}

/// Merges the ids of one piece in place. `ids` start as the byte ids of
/// `piece`, one per byte.
pub(crate) fn merge(piece: &[u8], ids: &mut Vec<u32>, rule: &impl Pairs) {
    debug_assert_eq!(piece.len(), ids.len());
    if ids.len() < 2 {
        return;
    }
    if ids.len() <= SMALL_PIECE {
        merge_small(piece, ids, rule)
    } else {
        merge_large(piece, ids, rule)
    }
}

fn merge_small(piece: &[u8], ids: &mut Vec<u32>, rule: &impl Pairs) {
    let n = ids.len();
    let mut ranks = [u64::MAX; SMALL_PIECE];
    // Byte offset where part i starts; starts[len] = the piece's end.
    let mut starts = [0u8; SMALL_PIECE + 1];
    for (i, s) in starts[..=n].iter_mut().enumerate() {
        *s = i as u8;
    }
    for i in 0..n - 1 {
        ranks[i] = rule.byte_pair(piece[i], piece[i + 1]);
    }
    let span = |starts: &[u8], a: usize, b: usize| &piece[starts[a] as usize..starts[b] as usize];
    let mut len = n;
    loop {
        let mut best = u64::MAX;
        let mut at = 0;
        // Strictly lower only: the leftmost of equal ranks wins.
        for (i, &r) in ranks[..len - 1].iter().enumerate() {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best == u64::MAX {
            break;
        }
        let merged = best as u32;
        ids[at] = merged;
        ids.remove(at + 1);
        ranks.copy_within(at + 2..len, at + 1);
        starts.copy_within(at + 2..=len, at + 1);
        len -= 1;
        ranks[len - 1] = u64::MAX;
        ranks[at] = if at + 1 < len {
            rule.packed(merged, ids[at + 1], span(&starts, at, at + 2))
        } else {
            u64::MAX
        };
        if at > 0 {
            ranks[at - 1] = rule.packed(ids[at - 1], merged, span(&starts, at - 1, at + 1));
        }
    }
}

/// Linked list over the byte positions: node `p` is the part starting at
/// byte `p`, and it ends where `next[p]` starts.
fn merge_large(piece: &[u8], ids: &mut Vec<u32>, rule: &impl Pairs) {
    let n = ids.len();
    let mut next: Vec<u32> = (1..=n as u32).collect();
    next[n - 1] = NONE;
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NONE;
    let mut alive = vec![true; n];
    let end = |i: u32| if i == NONE { n } else { i as usize };
    // Packed value of the pair starting at node `p` (whose next is `q`).
    let pair = |ids: &[u32], next: &[u32], p: usize, q: usize| {
        rule.packed(ids[p], ids[q], &piece[p..end(next[q])])
    };
    // (rank, position of the left node): min-heap, leftmost on ties.
    let mut heap = BinaryHeap::with_capacity(n);
    for i in 0..n - 1 {
        let v = rule.byte_pair(piece[i], piece[i + 1]);
        if v != u64::MAX {
            heap.push(Reverse(((v >> 32) as u32, i as u32)));
        }
    }
    let push = |heap: &mut BinaryHeap<_>, v: u64, p: u32| {
        if v != u64::MAX {
            heap.push(Reverse(((v >> 32) as u32, p)));
        }
    };
    while let Some(Reverse((r, pos))) = heap.pop() {
        let p = pos as usize;
        if !alive[p] || next[p] == NONE {
            continue;
        }
        let q = next[p] as usize;
        // Stale entry: the pair at `p` changed since it was pushed.
        // The same rank means the same merge, so it is still valid.
        let v = pair(ids, &next, p, q);
        if v == u64::MAX || (v >> 32) as u32 != r {
            continue;
        }
        ids[p] = v as u32;
        alive[q] = false;
        let nq = next[q];
        next[p] = nq;
        if nq != NONE {
            prev[nq as usize] = p as u32;
            push(&mut heap, pair(ids, &next, p, nq as usize), p as u32);
        }
        let pp = prev[p];
        if pp != NONE {
            push(&mut heap, pair(ids, &next, pp as usize, p), pp);
        }
    }
    let mut w = 0;
    let mut i = 0u32;
    while i != NONE {
        ids[w] = ids[i as usize];
        w += 1;
        i = next[i as usize];
    }
    ids.truncate(w);
}

/// Merges a sequence of symbol ids in place by a pair table: the lowest
/// rank first, the leftmost on ties (HF's `Word::merge_all`). For models
/// whose first symbols are characters, not bytes (SentencePiece-style BPE):
/// a heap over a linked list, O(n log n), since a Metaspace tokenizer
/// without `split` hands the whole text over as one piece.
pub(crate) fn merge_ids(ids: &mut Vec<u32>, table: &PairTable) {
    let n = ids.len();
    if n < 2 {
        return;
    }
    let mut next: Vec<u32> = (1..=n as u32).collect();
    next[n - 1] = NONE;
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NONE;
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::with_capacity(n);
    let push = |heap: &mut BinaryHeap<_>, v: u64, p: u32| {
        if v != u64::MAX {
            heap.push(Reverse(((v >> 32) as u32, p)));
        }
    };
    for i in 0..n - 1 {
        push(&mut heap, table.packed(ids[i], ids[i + 1]), i as u32);
    }
    while let Some(Reverse((r, pos))) = heap.pop() {
        let p = pos as usize;
        if !alive[p] || next[p] == NONE {
            continue;
        }
        let q = next[p] as usize;
        // Stale entry: the pair at `p` changed since it was pushed.
        let v = table.packed(ids[p], ids[q]);
        if v == u64::MAX || (v >> 32) as u32 != r {
            continue;
        }
        ids[p] = v as u32;
        alive[q] = false;
        let nq = next[q];
        next[p] = nq;
        if nq != NONE {
            prev[nq as usize] = p as u32;
            push(&mut heap, table.packed(ids[p], ids[nq as usize]), p as u32);
        }
        let pp = prev[p];
        if pp != NONE {
            push(&mut heap, table.packed(ids[pp as usize], ids[p]), pp);
        }
    }
    let mut w = 0;
    let mut i = 0u32;
    while i != NONE {
        ids[w] = ids[i as usize];
        w += 1;
        i = next[i as usize];
    }
    ids.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A tiny merge table over byte ids 0..4 (id = byte): ids 4.. are merges.
    struct Table(PairTable);

    impl Pairs for Table {
        fn packed(&self, left: u32, right: u32, _: &[u8]) -> u64 {
            self.0.packed(left, right)
        }
        fn byte_pair(&self, a: u8, b: u8) -> u64 {
            self.0.packed(a as u32, b as u32)
        }
    }

    fn table(merges: &[(u32, u32)]) -> Table {
        let mut t = PairTable::default();
        for (k, &(l, r)) in merges.iter().enumerate() {
            t.insert(l, r, k as u32, 4 + k as u32);
        }
        Table(t)
    }

    fn merged(t: &Table, bytes: &[u8], limit: Rank) -> Vec<u32> {
        let mut ids = bytes.iter().map(|&b| b as u32).collect();
        merge_below(bytes, &mut ids, t, limit);
        ids
    }

    #[test]
    fn lowest_rank_first_leftmost_on_ties() {
        // (0,0) -> 4; "0 0 0" merges the left pair first
        let t = table(&[(0, 0)]);
        assert_eq!(merged(&t, &[0, 0, 0], NONE), vec![4, 0]);
        // rank decides, not position: (1,2) beats (0,1)
        let t = table(&[(1, 2), (0, 1)]);
        assert_eq!(merged(&t, &[0, 1, 2], NONE), vec![0, 4]);
        // a limit keeps only the lower ranks
        assert_eq!(merged(&t, &[0, 1, 2], 0), vec![0, 1, 2]);
        assert_eq!(merged(&t, &[0, 1, 2], 1), vec![0, 4]);
    }

    #[test]
    fn byte_pairs_hold_the_rule_for_every_two_bytes() {
        let t = table(&[(1, 2), (3, 3)]);
        let bp = BytePairs::new(|a, b| t.byte_pair(a, b));
        assert_eq!(bp.get(1, 2), 4);
        assert_eq!(bp.get(3, 3), 1 << 32 | 5);
        assert_eq!(bp.get(2, 1), u64::MAX);
        assert_eq!(bp.get(255, 255), u64::MAX);
    }

    proptest! {
        /// The heap merge and the array merge are the same function.
        #[test]
        fn large_equals_small(
            merges in proptest::collection::vec((0u32..8, 0u32..8), 0..12),
            bytes in proptest::collection::vec(0u8..4, 2..SMALL_PIECE),
            limit in 0u32..14,
        ) {
            let merges: Vec<(u32, u32)> = merges.into_iter().enumerate()
                .filter(|(k, (l, r))| *l < 4 + *k as u32 && *r < 4 + *k as u32)
                .map(|(_, p)| p).collect();
            let t = table(&merges);
            let rule = Below(&t, limit);
            let mut a: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
            let mut b = a.clone();
            merge_small(&bytes, &mut a, &rule);
            merge_large(&bytes, &mut b, &rule);
            prop_assert_eq!(&a, &b);
        }

        /// The id-only merge (characters as first symbols) is the same
        /// function as the byte merge when the symbols are the bytes.
        #[test]
        fn id_merge_equals_byte_merge(
            merges in proptest::collection::vec((0u32..8, 0u32..8), 0..12),
            bytes in proptest::collection::vec(0u8..4, 0..SMALL_PIECE * 2),
        ) {
            let merges: Vec<(u32, u32)> = merges.into_iter().enumerate()
                .filter(|(k, (l, r))| *l < 4 + *k as u32 && *r < 4 + *k as u32)
                .map(|(_, p)| p).collect();
            let t = table(&merges);
            let mut a: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
            let mut b = a.clone();
            merge(&bytes, &mut a, &t);
            merge_ids(&mut b, &t.0);
            prop_assert_eq!(a, b);
        }
    }
}
