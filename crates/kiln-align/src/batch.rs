//! Right-padded token batches, the one layout every alignment method feeds
//! the model with.
//!
//! Rows are padded to the longest row of the batch (not to the context), so
//! a batch of short chats costs what its tokens cost. Padding sits after the
//! real tokens; with causal attention it cannot influence any real position,
//! and its targets are [`IGNORE`], so it adds nothing to a loss or gradient.
//!
//! Two layouts:
//! - [`TokenBatch::next_token`]: language-model layout. A sequence `ids` of
//!   `n` tokens gives inputs `ids[..n-1]` and targets `ids[1..]`, a target
//!   kept only where its token is learned (`learn[i]`, e.g. assistant tokens)
//!   and [`IGNORE`] elsewhere. Position `i` predicts `ids[i+1]`.
//! - [`TokenBatch::whole`]: every token is an input, no targets; for heads
//!   that read a position (a reward model reads the last real token).
//!
//! [`PackedBatch::next_token`] is the language-model layout with several
//! sequences per row (SFT's optional packing): each sequence keeps its own
//! positions (restarting at 0) and attends only to itself, so its losses are
//! those it gets alone in a [`TokenBatch::next_token`] row.

use kiln_model::{Packing, Rng};

/// Batches per window that [`group_by_length`] sorts.
pub const LENGTH_GROUP_WINDOW: usize = 16;

/// Reorders a shuffled `order` so that each run of `batch` ids has similar
/// lengths (rows pad to the longest, so mixed lengths waste compute):
/// windows of [`LENGTH_GROUP_WINDOW`] batches are sorted by length and cut
/// into batches, and the full batches are shuffled (Hugging Face's
/// `group_by_length`). A partial last batch stays last, so runs of `batch`
/// ids stay aligned. The same ids, each once; deterministic from `rng`.
pub fn group_by_length(order: &mut Vec<usize>, lens: &[usize], batch: usize, rng: &mut Rng) {
    let batch = batch.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(order.len().div_ceil(batch));
    for window in order.chunks(batch * LENGTH_GROUP_WINDOW) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        batches.extend(w.chunks(batch).map(<[usize]>::to_vec));
    }
    let partial = batches.pop_if(|b| b.len() < batch);
    crate::sft::shuffle(&mut batches, rng);
    batches.extend(partial);
    *order = batches.concat();
}

/// A target the loss skips (any id `>= vocab_size` is ignored by the model).
pub const IGNORE: u32 = u32::MAX;

/// Token ids and, per id, whether it is learned (is a target).
#[derive(Debug, Clone, Copy)]
pub struct LmSequence<'a> {
    pub ids: &'a [u32],
    pub learn: &'a [bool],
}

/// `prompt ++ completion` with only the completion learned: the layout of
/// DPO / PPO sequences. Returns `(ids, learn)`.
pub fn prompt_completion(prompt: &[u32], completion: &[u32]) -> (Vec<u32>, Vec<bool>) {
    let mut ids = Vec::with_capacity(prompt.len() + completion.len());
    ids.extend_from_slice(prompt);
    ids.extend_from_slice(completion);
    let mut learn = vec![false; prompt.len()];
    learn.resize(ids.len(), true);
    (ids, learn)
}

/// `b` rows of `t` positions, row-major (`[b*t]`), right-padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub b: usize,
    pub t: usize,
    /// Input ids; padding positions hold the pad id.
    pub tokens: Vec<u32>,
    /// Target of each position, [`IGNORE`] where nothing is learned (always
    /// all [`IGNORE`] in the [`TokenBatch::whole`] layout).
    pub targets: Vec<u32>,
    /// Real (non-padding) input positions of each row.
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// Language-model layout (see the module docs). Every sequence needs at
    /// least 2 tokens and `learn.len() == ids.len()`; `learn[0]` is unused
    /// (the first token is never predicted).
    pub fn next_token(seqs: &[LmSequence<'_>], pad: u32) -> Result<TokenBatch, String> {
        if seqs.is_empty() {
            return Err("a batch needs at least one sequence".into());
        }
        for (r, s) in seqs.iter().enumerate() {
            if s.ids.len() < 2 {
                return Err(format!(
                    "sequence {r} has {} token(s); at least 2 are needed to predict one",
                    s.ids.len()
                ));
            }
            if s.learn.len() != s.ids.len() {
                return Err(format!(
                    "sequence {r}: {} learn flags for {} ids",
                    s.learn.len(),
                    s.ids.len()
                ));
            }
        }
        let t = seqs.iter().map(|s| s.ids.len() - 1).max().unwrap_or(0);
        let b = seqs.len();
        let mut tokens = vec![pad; b * t];
        let mut targets = vec![IGNORE; b * t];
        let mut lengths = Vec::with_capacity(b);
        for (r, s) in seqs.iter().enumerate() {
            let n = s.ids.len() - 1;
            let row = r * t;
            tokens[row..row + n].copy_from_slice(&s.ids[..n]);
            for ((y, &id), &learn) in targets[row..row + n]
                .iter_mut()
                .zip(&s.ids[1..])
                .zip(&s.learn[1..])
            {
                if learn {
                    *y = id;
                }
            }
            lengths.push(n);
        }
        Ok(TokenBatch {
            b,
            t,
            tokens,
            targets,
            lengths,
        })
    }

    /// Every id an input, no targets (reward / value heads).
    pub fn whole(seqs: &[&[u32]], pad: u32) -> Result<TokenBatch, String> {
        if seqs.is_empty() {
            return Err("a batch needs at least one sequence".into());
        }
        if let Some(r) = seqs.iter().position(|s| s.is_empty()) {
            return Err(format!("sequence {r} is empty"));
        }
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let b = seqs.len();
        let mut tokens = vec![pad; b * t];
        for (r, s) in seqs.iter().enumerate() {
            tokens[r * t..r * t + s.len()].copy_from_slice(s);
        }
        Ok(TokenBatch {
            b,
            t,
            tokens,
            targets: vec![IGNORE; b * t],
            lengths: seqs.iter().map(|s| s.len()).collect(),
        })
    }

    /// Positions whose target counts (`< vocab_size`; [`IGNORE`] never does).
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&y| y != IGNORE).count()
    }

    /// Whether position `i` (flat index) has a target.
    pub fn is_counted(&self, i: usize) -> bool {
        self.targets[i] != IGNORE
    }

    /// Flat index of each row's last real input position.
    pub fn last_positions(&self) -> Vec<usize> {
        self.lengths
            .iter()
            .enumerate()
            .map(|(r, &n)| r * self.t + n - 1)
            .collect()
    }

    /// Per-row sums of `values` (`[b*t]`) over the positions with a target,
    /// e.g. a completion's summed log-probability.
    pub fn sum_counted_per_row(&self, values: &[f32]) -> Vec<f32> {
        assert_eq!(values.len(), self.b * self.t, "values must be [b*t]");
        (0..self.b)
            .map(|r| {
                let row = r * self.t..(r + 1) * self.t;
                let s: f64 = values[row.clone()]
                    .iter()
                    .zip(&self.targets[row])
                    .filter(|(_, &y)| y != IGNORE)
                    .map(|(&v, _)| v as f64)
                    .sum();
                s as f32
            })
            .collect()
    }

    /// Targets counted in each row.
    pub fn counted_per_row(&self) -> Vec<usize> {
        self.targets
            .chunks(self.t)
            .map(|row| row.iter().filter(|&&y| y != IGNORE).count())
            .collect()
    }

    /// Input positions that are real tokens (not padding).
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// Language-model rows of up to `t_max` positions, each holding as many
/// whole sequences as fit, with the per-token positions and segment ids the
/// model needs to keep them apart ([`kiln_model::Packing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBatch {
    /// Tokens and targets laid out as in [`TokenBatch::next_token`], several
    /// sequences per row; `lengths` are each row's real positions.
    pub batch: TokenBatch,
    pub packing: Packing,
}

impl PackedBatch {
    /// Packs `seqs` first-fit (in order) into rows of at most `t_max` input
    /// positions. A sequence of `n` ids takes `n - 1` positions, exactly as in
    /// [`TokenBatch::next_token`]: its last id is only a target, so no target
    /// reaches into the next sequence of the row. Segment ids number the
    /// sequences of a row from 0; the padding after them is a segment of its
    /// own ([`IGNORE`] as id). The rows are as long as the fullest one.
    pub fn next_token(
        seqs: &[LmSequence<'_>],
        t_max: usize,
        pad: u32,
    ) -> Result<PackedBatch, String> {
        // Validates every sequence (>= 2 ids, one learn flag per id).
        TokenBatch::next_token(seqs, pad)?;
        if let Some((r, s)) = seqs
            .iter()
            .enumerate()
            .find(|(_, s)| s.ids.len() - 1 > t_max)
        {
            return Err(format!(
                "sequence {r} needs {} positions; rows hold {t_max}",
                s.ids.len() - 1
            ));
        }
        // First fit: each sequence goes to the first row with room.
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut fill: Vec<usize> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let n = s.ids.len() - 1;
            match fill.iter().position(|&f| f + n <= t_max) {
                Some(r) => {
                    rows[r].push(i);
                    fill[r] += n;
                }
                None => {
                    rows.push(vec![i]);
                    fill.push(n);
                }
            }
        }
        let (b, t) = (rows.len(), fill.iter().copied().max().unwrap_or(0));
        let mut tokens = vec![pad; b * t];
        let mut targets = vec![IGNORE; b * t];
        let mut segments = vec![IGNORE; b * t];
        for (r, members) in rows.iter().enumerate() {
            let mut at = r * t;
            for (k, &i) in members.iter().enumerate() {
                let s = &seqs[i];
                let n = s.ids.len() - 1;
                tokens[at..at + n].copy_from_slice(&s.ids[..n]);
                for ((y, &id), &learn) in targets[at..at + n]
                    .iter_mut()
                    .zip(&s.ids[1..])
                    .zip(&s.learn[1..])
                {
                    if learn {
                        *y = id;
                    }
                }
                segments[at..at + n].fill(k as u32);
                at += n;
            }
        }
        Ok(PackedBatch {
            batch: TokenBatch {
                b,
                t,
                tokens,
                targets,
                lengths: fill,
            },
            packing: Packing::from_segments(segments, t),
        })
    }

    /// Share of the batch's positions that hold real tokens.
    pub fn efficiency(&self) -> f64 {
        let cells = self.batch.b * self.batch.t;
        if cells == 0 {
            0.0
        } else {
            self.batch.real_tokens() as f64 / cells as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_model::Rng;
    use proptest::prelude::*;

    /// Padded tokens of `order` cut into batches of `b`.
    fn padded(order: &[usize], lens: &[usize], b: usize) -> usize {
        order
            .chunks(b)
            .map(|c| c.len() * c.iter().map(|&i| lens[i]).max().unwrap())
            .sum()
    }

    #[test]
    fn group_by_length_keeps_every_id_once_and_cuts_padding() {
        let mut rng = Rng::new(3);
        let lens: Vec<usize> = (0..1000)
            .map(|_| 5 + (rng.next_u64() % 40) as usize)
            .collect();
        let mut order: Vec<usize> = (0..lens.len()).collect();
        crate::sft::shuffle(&mut order, &mut rng);
        let shuffled = order.clone();
        let mut again = order.clone();
        group_by_length(&mut order, &lens, 16, &mut Rng::new(9));
        group_by_length(&mut again, &lens, 16, &mut Rng::new(9));
        assert_eq!(order, again, "deterministic from the rng");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "a permutation");
        let (before, after) = (padded(&shuffled, &lens, 16), padded(&order, &lens, 16));
        let real: usize = lens.iter().sum();
        assert!(
            after < before && (after - real) * 4 < before - real,
            "{real} {before} {after}"
        );
        // 1000 = 62 x 16 + 8: the partial batch stays last.
        assert_eq!(order.chunks(16).last().unwrap().len(), 8);
        assert_eq!(order.chunks(16).filter(|c| c.len() < 16).count(), 1);
    }

    proptest! {
        #[test]
        fn group_by_length_is_a_permutation(n in 0usize..200, b in 1usize..20, seed in 0u64..100) {
            let lens: Vec<usize> = (0..n).map(|i| (i * 7919 + seed as usize) % 50).collect();
            let mut order: Vec<usize> = (0..n).rev().collect();
            group_by_length(&mut order, &lens, b, &mut Rng::new(seed));
            order.sort_unstable();
            prop_assert_eq!(order, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn next_token_shifts_masks_and_pads() {
        let a = [10, 11, 12, 13];
        let la = [false, false, true, true];
        let b = [20, 21];
        let lb = [false, true];
        let batch = TokenBatch::next_token(
            &[
                LmSequence {
                    ids: &a,
                    learn: &la,
                },
                LmSequence {
                    ids: &b,
                    learn: &lb,
                },
            ],
            0,
        )
        .unwrap();
        assert_eq!((batch.b, batch.t), (2, 3));
        assert_eq!(batch.tokens, vec![10, 11, 12, 20, 0, 0]);
        assert_eq!(batch.targets, vec![IGNORE, 12, 13, 21, IGNORE, IGNORE]);
        assert_eq!(batch.lengths, vec![3, 1]);
        assert_eq!(batch.counted(), 3);
        assert_eq!(batch.counted_per_row(), vec![2, 1]);
        assert_eq!(batch.last_positions(), vec![2, 3]);
        let sums = batch.sum_counted_per_row(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(sums, vec![5.0, 4.0]);
    }

    #[test]
    fn whole_keeps_every_token_and_reads_the_last() {
        let batch = TokenBatch::whole(&[&[1, 2, 3], &[4]], 9).unwrap();
        assert_eq!(batch.tokens, vec![1, 2, 3, 4, 9, 9]);
        assert_eq!(batch.last_positions(), vec![2, 3]);
        assert_eq!(batch.counted(), 0);
        assert_eq!(batch.real_tokens(), 4);
    }

    #[test]
    fn bad_sequences_are_refused() {
        assert!(TokenBatch::next_token(&[], 0).is_err());
        let one = [5];
        let e = TokenBatch::next_token(
            &[LmSequence {
                ids: &one,
                learn: &[true],
            }],
            0,
        )
        .unwrap_err();
        assert!(e.contains("sequence 0"), "{e}");
        let e = TokenBatch::next_token(
            &[LmSequence {
                ids: &[1, 2],
                learn: &[true],
            }],
            0,
        )
        .unwrap_err();
        assert!(e.contains("learn flags"), "{e}");
        assert!(TokenBatch::whole(&[&[1], &[]], 0).is_err());
    }

    #[test]
    fn prompt_completion_learns_only_the_completion() {
        let (ids, learn) = prompt_completion(&[1, 2], &[3, 4, 5]);
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(learn, vec![false, false, true, true, true]);
    }

    #[test]
    fn packed_rows_keep_each_sequence_whole_and_apart() {
        let (a, la) = ([10, 11, 12, 13], [false, false, true, true]);
        let (b, lb) = ([20, 21], [false, true]);
        let (c, lc) = ([30, 31, 32, 33, 34], [false, true, true, false, true]);
        let seqs = [
            LmSequence {
                ids: &a,
                learn: &la,
            },
            LmSequence {
                ids: &c,
                learn: &lc,
            },
            LmSequence {
                ids: &b,
                learn: &lb,
            },
        ];
        // a takes 3 positions, c 4 (no room after a in 5: new row), b 1 (fits after a).
        let p = PackedBatch::next_token(&seqs, 5, 0).unwrap();
        let x = &p.batch;
        assert_eq!((x.b, x.t), (2, 4));
        assert_eq!(x.tokens, vec![10, 11, 12, 20, 30, 31, 32, 33]);
        assert_eq!(x.targets, vec![IGNORE, 12, 13, 21, 31, 32, IGNORE, 34]);
        assert_eq!(x.lengths, vec![4, 4]);
        assert_eq!(p.packing.segments, vec![0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(p.packing.positions, vec![0, 1, 2, 0, 0, 1, 2, 3]);
        assert_eq!(p.efficiency(), 1.0);
        // The same sequences one per row: same targets counted, 3 rows.
        let plain = TokenBatch::next_token(&seqs, 0).unwrap();
        assert_eq!((plain.b, plain.counted()), (3, x.counted()));

        // Padding after the last sequence of a row is a segment of its own.
        let p = PackedBatch::next_token(&seqs[..1], 6, 7).unwrap();
        assert_eq!(p.batch.t, 3);
        let p = PackedBatch::next_token(&[seqs[0], seqs[1]], 8, 7).unwrap();
        assert_eq!(p.batch.b, 1);
        assert_eq!(p.packing.segments, vec![0, 0, 0, 1, 1, 1, 1]);
        let p = PackedBatch::next_token(&[seqs[1], seqs[2]], 4, 7).unwrap();
        assert_eq!(p.batch.tokens, vec![30, 31, 32, 33, 20, 7, 7, 7]);
        assert_eq!(
            p.packing.segments,
            vec![0, 0, 0, 0, 0, IGNORE, IGNORE, IGNORE]
        );
        assert_eq!(p.packing.positions, vec![0, 1, 2, 3, 0, 0, 1, 2]);
        assert!((p.efficiency() - 5.0 / 8.0).abs() < 1e-12);

        let e = PackedBatch::next_token(&seqs, 3, 0).unwrap_err();
        assert!(
            e.contains("sequence 1 needs 4 positions; rows hold 3"),
            "{e}"
        );
        assert!(PackedBatch::next_token(&[], 3, 0).is_err());
    }

    proptest! {
        /// Every learned token (after the first) appears exactly once as a
        /// target, one position before its own, whatever the padding.
        #[test]
        fn targets_are_the_learned_next_tokens(
            seqs in prop::collection::vec(
                prop::collection::vec((0u32..50, any::<bool>()), 2..12), 1..5),
            pad in 0u32..50,
        ) {
            let split: Vec<(Vec<u32>, Vec<bool>)> =
                seqs.iter().map(|s| s.iter().copied().unzip()).collect();
            let views: Vec<LmSequence<'_>> = split
                .iter()
                .map(|(ids, learn)| LmSequence { ids, learn })
                .collect();
            let batch = TokenBatch::next_token(&views, pad).unwrap();
            let mut expected = 0;
            for (r, (ids, learn)) in split.iter().enumerate() {
                for i in 1..ids.len() {
                    let want = if learn[i] { ids[i] } else { IGNORE };
                    prop_assert_eq!(batch.targets[r * batch.t + i - 1], want);
                    prop_assert_eq!(batch.tokens[r * batch.t + i - 1], ids[i - 1]);
                    expected += usize::from(learn[i]);
                }
                for i in ids.len() - 1..batch.t {
                    prop_assert_eq!(batch.targets[r * batch.t + i], IGNORE);
                    prop_assert_eq!(batch.tokens[r * batch.t + i], pad);
                }
            }
            prop_assert_eq!(batch.counted(), expected);
        }

        /// Packing keeps every sequence contiguous in one row, with its own
        /// positions 0.., one segment, and the targets of its unpacked row;
        /// it never needs more rows than sequences.
        #[test]
        fn packed_sequences_are_their_unpacked_rows(
            seqs in prop::collection::vec(
                prop::collection::vec((0u32..50, any::<bool>()), 2..12), 1..8),
            extra in 0usize..10,
        ) {
            let split: Vec<(Vec<u32>, Vec<bool>)> =
                seqs.iter().map(|s| s.iter().copied().unzip()).collect();
            let views: Vec<LmSequence<'_>> = split
                .iter()
                .map(|(ids, learn)| LmSequence { ids, learn })
                .collect();
            let plain = TokenBatch::next_token(&views, 0).unwrap();
            let t_max = plain.t + extra;
            let p = PackedBatch::next_token(&views, t_max, 0).unwrap();
            let x = &p.batch;
            prop_assert!(x.b <= plain.b && x.t <= t_max);
            prop_assert_eq!(x.counted(), plain.counted());
            prop_assert_eq!(x.real_tokens(), plain.real_tokens());
            // Find each sequence: rows are scanned segment by segment.
            let mut found = vec![false; views.len()];
            for r in 0..x.b {
                let mut i = 0;
                while i < x.lengths[r] {
                    let at = r * x.t + i;
                    let seg = p.packing.segments[at];
                    let n = (i..x.lengths[r])
                        .take_while(|&j| p.packing.segments[r * x.t + j] == seg)
                        .count();
                    let k = (0..views.len())
                        .find(|&k| {
                            !found[k]
                                && plain.lengths[k] == n
                                && plain.tokens[k * plain.t..][..n] == x.tokens[at..at + n]
                                && plain.targets[k * plain.t..][..n] == x.targets[at..at + n]
                        });
                    prop_assert!(k.is_some(), "row {} at {} matches no sequence", r, i);
                    found[k.unwrap()] = true;
                    let want: Vec<u32> = (0..n as u32).collect();
                    prop_assert_eq!(&p.packing.positions[at..at + n], &want[..]);
                    i += n;
                }
                for j in x.lengths[r]..x.t {
                    prop_assert_eq!(x.targets[r * x.t + j], IGNORE);
                    prop_assert_eq!(p.packing.segments[r * x.t + j], IGNORE);
                }
            }
            prop_assert!(found.iter().all(|&f| f));
        }
    }
}
