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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    }
}
