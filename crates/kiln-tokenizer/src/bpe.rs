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

    #[inline(always)]
    fn rank(&self, left: u32, right: u32, limit: Rank) -> Rank {
        match self.map.get(&key(left, right)) {
            Some(&v) if ((v >> 32) as u32) < limit => (v >> 32) as u32,
            _ => NONE,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Merges the ids of one piece in place (`ids` start as the byte ids),
    /// using only pairs with rank below `limit`.
    pub fn merge(&self, ids: &mut Vec<u32>, limit: Rank) {
        if ids.len() < 2 {
            return;
        }
        if ids.len() <= SMALL_PIECE {
            self.merge_small(ids, limit)
        } else {
            self.merge_large(ids, limit)
        }
    }

    /// `(rank << 32) | merged` of the pair if its rank is below `limit`,
    /// else `u64::MAX`: ordering these orders by rank, and the merged id
    /// comes with it (no second lookup).
    #[inline(always)]
    fn packed(&self, left: u32, right: u32, limit: Rank) -> u64 {
        match self.map.get(&key(left, right)) {
            Some(&v) if ((v >> 32) as u32) < limit => v,
            _ => u64::MAX,
        }
    }

    fn merge_small(&self, ids: &mut Vec<u32>, limit: Rank) {
        let n = ids.len();
        let mut ranks = [u64::MAX; SMALL_PIECE];
        for i in 0..n - 1 {
            ranks[i] = self.packed(ids[i], ids[i + 1], limit);
        }
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
            len -= 1;
            ranks[len - 1] = u64::MAX;
            if at + 1 < len {
                ranks[at] = self.packed(merged, ids[at + 1], limit);
            } else {
                ranks[at] = u64::MAX;
            }
            if at > 0 {
                ranks[at - 1] = self.packed(ids[at - 1], merged, limit);
            }
        }
    }

    fn merge_large(&self, ids: &mut Vec<u32>, limit: Rank) {
        let n = ids.len();
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut alive = vec![true; n];
        // (rank, position of the left node): min-heap, leftmost on ties.
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            let r = self.rank(ids[i], ids[i + 1], limit);
            if r != NONE {
                heap.push(Reverse((r, i as u32)));
            }
        }
        while let Some(Reverse((r, pos))) = heap.pop() {
            let p = pos as usize;
            if !alive[p] || next[p] == NONE {
                continue;
            }
            let q = next[p] as usize;
            // Stale entry: the pair at `p` changed since it was pushed.
            // The same rank means the same merge, so it is still valid.
            if self.rank(ids[p], ids[q], limit) != r {
                continue;
            }
            ids[p] = self.get(ids[p], ids[q]).expect("ranked pair").1;
            alive[q] = false;
            let nq = next[q];
            next[p] = nq;
            if nq != NONE {
                prev[nq as usize] = p as u32;
                let r2 = self.rank(ids[p], ids[nq as usize], limit);
                if r2 != NONE {
                    heap.push(Reverse((r2, p as u32)));
                }
            }
            let pp = prev[p];
            if pp != NONE {
                let r0 = self.rank(ids[pp as usize], ids[p], limit);
                if r0 != NONE {
                    heap.push(Reverse((r0, pp)));
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A tiny merge table over byte ids 0..4: ids 4.. are merges.
    fn table(merges: &[(u32, u32)]) -> PairTable {
        let mut t = PairTable::default();
        for (k, &(l, r)) in merges.iter().enumerate() {
            t.insert(l, r, k as u32, 4 + k as u32);
        }
        t
    }

    #[test]
    fn lowest_rank_first_leftmost_on_ties() {
        // (0,0) -> 4; "0 0 0" merges the left pair first
        let t = table(&[(0, 0)]);
        let mut ids = vec![0, 0, 0];
        t.merge(&mut ids, NONE);
        assert_eq!(ids, vec![4, 0]);
        // rank decides, not position: (1,2) beats (0,1)
        let t = table(&[(1, 2), (0, 1)]);
        let mut ids = vec![0, 1, 2];
        t.merge(&mut ids, NONE);
        assert_eq!(ids, vec![0, 4]);
    }

    proptest! {
        /// The heap merge and the array merge are the same function.
        #[test]
        fn large_equals_small(
            merges in proptest::collection::vec((0u32..8, 0u32..8), 0..12),
            ids in proptest::collection::vec(0u32..4, 2..SMALL_PIECE),
        ) {
            let merges: Vec<(u32, u32)> = merges.into_iter().enumerate()
                .filter(|(k, (l, r))| *l < 4 + *k as u32 && *r < 4 + *k as u32)
                .map(|(_, p)| p).collect();
            let t = table(&merges);
            let mut a = ids.clone();
            t.merge_small(&mut a, NONE);
            let mut b = ids;
            t.merge_large(&mut b, NONE);
            prop_assert_eq!(a, b);
        }
    }
}
