//! BPE training.
//!
//! 1. Count pre-tokens: documents are split (special tokens removed, then
//!    the pattern), in parallel, and only distinct pre-tokens with counts
//!    are kept, so memory grows with the number of distinct pre-tokens, not
//!    with the corpus. Feed the corpus in batches ([`Trainer::feed`]).
//! 2. Merge: pair counts are kept incrementally (only words containing the
//!    merged pair are revisited) and the best pair comes from a max-heap
//!    with lazy invalidation.
//!
//! Deterministic tie-break: the pair with the highest count wins; among
//! equal counts, the smallest `(left id, right id)`, where ids 0..=255 are
//! the byte values and merge k makes id 256 + k. Nothing depends on hash
//! map iteration order. Special tokens get the ids after the merges, in
//! the order given.

use crate::error::Error;
use crate::pattern::{Pattern, PreTokenizer};
use crate::special::Specials;
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Total vocabulary: 256 bytes + merges + special tokens.
    pub vocab_size: usize,
    pub pattern: Pattern,
    pub special_tokens: Vec<String>,
    /// A pair seen fewer times than this is never merged.
    pub min_frequency: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            vocab_size: 32768,
            pattern: Pattern::Cl100k,
            special_tokens: vec![crate::ENDOFTEXT.to_string()],
            min_frequency: 0,
        }
    }
}

/// Streaming trainer: `feed` batches of documents, then `finish`.
pub struct Trainer {
    config: TrainConfig,
    pre: PreTokenizer,
    specials: Specials,
    counts: FxHashMap<Box<[u8]>, u64>,
}

/// Progress of the merge phase.
#[derive(Debug, Clone, Copy)]
pub struct MergeProgress {
    pub merges_done: usize,
    pub merges_total: usize,
}

#[inline]
fn key(l: u32, r: u32) -> u64 {
    ((l as u64) << 32) | r as u64
}

impl Trainer {
    pub fn new(config: TrainConfig) -> Result<Self, Error> {
        let floor = 256 + config.special_tokens.len();
        if config.vocab_size < floor {
            return Err(Error::Train(format!(
                "vocab_size {} is below 256 bytes + {} special tokens; use at least {floor}",
                config.vocab_size,
                config.special_tokens.len()
            )));
        }
        let pre = PreTokenizer::new(&config.pattern)
            .map_err(|e| Error::Train(format!("the pattern does not compile: {e}")))?;
        let specials = Specials::new(
            config
                .special_tokens
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i as u32))
                .collect(),
        );
        Ok(Trainer {
            config,
            pre,
            specials,
            counts: FxHashMap::default(),
        })
    }

    /// Counts the pre-tokens of a batch of documents (in parallel).
    pub fn feed<S: AsRef<str> + Sync>(&mut self, docs: &[S]) {
        let pre = &self.pre;
        let specials = &self.specials;
        let batch = docs
            .par_iter()
            .fold(FxHashMap::<&str, u64>::default, |mut m, d| {
                count_pretokens(pre, specials, d.as_ref(), &mut m);
                m
            })
            .reduce(FxHashMap::default, add_counts);
        for (k, v) in batch {
            match self.counts.get_mut(k.as_bytes()) {
                Some(c) => *c += v,
                None => {
                    self.counts.insert(k.as_bytes().into(), v);
                }
            }
        }
    }

    /// Distinct pre-tokens counted so far (the memory that training needs).
    pub fn distinct_pretokens(&self) -> usize {
        self.counts.len()
    }

    /// Runs the merges and builds the tokenizer.
    pub fn finish(self) -> Result<Tokenizer, Error> {
        self.finish_with_progress(|_| {})
    }

    pub fn finish_with_progress(
        self,
        mut progress: impl FnMut(MergeProgress),
    ) -> Result<Tokenizer, Error> {
        let cfg = &self.config;
        let merges_total = cfg.vocab_size - 256 - cfg.special_tokens.len();
        let mut words: Vec<Vec<u32>> = Vec::with_capacity(self.counts.len());
        let mut freq: Vec<u64> = Vec::with_capacity(self.counts.len());
        // Sorted so that even internal visiting order is reproducible.
        let mut entries: Vec<(Box<[u8]>, u64)> = self.counts.into_iter().collect();
        entries.par_sort_unstable();
        for (w, c) in entries {
            if w.len() > 1 {
                words.push(w.iter().map(|&b| b as u32).collect());
                freq.push(c);
            }
        }

        // Initial pair counts (parallel) and pair -> words index.
        let pair_counts: FxHashMap<u64, i64> = words
            .par_iter()
            .zip(freq.par_iter())
            .fold(FxHashMap::default, |mut m, (w, &c)| {
                for p in w.windows(2) {
                    *m.entry(key(p[0], p[1])).or_insert(0) += c as i64;
                }
                m
            })
            .reduce(FxHashMap::default, add_counts);
        let mut pair_counts = pair_counts;
        let mut pair_words: FxHashMap<u64, Vec<u32>> = FxHashMap::default();
        for (i, w) in words.iter().enumerate() {
            for p in w.windows(2) {
                let v = pair_words.entry(key(p[0], p[1])).or_default();
                if v.last() != Some(&(i as u32)) {
                    v.push(i as u32);
                }
            }
        }
        let mut heap: BinaryHeap<(i64, Reverse<u64>)> = pair_counts
            .iter()
            .filter(|(_, &c)| c > 0)
            .map(|(&k, &c)| (c, Reverse(k)))
            .collect();

        let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut merges: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(merges_total);
        let mut seen = vec![u32::MAX; words.len()];
        let min_count = cfg.min_frequency.max(1) as i64;
        let mut touched: FxHashSet<u64> = FxHashSet::default();
        let step = (merges_total / 100).max(1);

        while merges.len() < merges_total {
            let Some((c, Reverse(k))) = heap.pop() else {
                break;
            };
            let cur = pair_counts.get(&k).copied().unwrap_or(0);
            if cur != c {
                if cur > 0 {
                    heap.push((cur, Reverse(k)));
                }
                continue;
            }
            if c < min_count {
                break;
            }
            let (l, r) = ((k >> 32) as u32, k as u32);
            let new_id = token_bytes.len() as u32;
            let mut nb = token_bytes[l as usize].clone();
            nb.extend_from_slice(&token_bytes[r as usize]);
            token_bytes.push(nb);
            merges.push((
                token_bytes[l as usize].clone(),
                token_bytes[r as usize].clone(),
            ));
            let stamp = merges.len() as u32;
            touched.clear();
            let list = pair_words.remove(&k).unwrap_or_default();
            for wi in list {
                let wi_us = wi as usize;
                if seen[wi_us] == stamp {
                    continue;
                }
                seen[wi_us] = stamp;
                let w = &mut words[wi_us];
                if !w.windows(2).any(|p| p[0] == l && p[1] == r) {
                    continue;
                }
                let n = freq[wi_us] as i64;
                for p in w.windows(2) {
                    *pair_counts.entry(key(p[0], p[1])).or_insert(0) -= n;
                }
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == l && w[i + 1] == r {
                        out.push(new_id);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                *w = out;
                for p in w.windows(2) {
                    let pk = key(p[0], p[1]);
                    *pair_counts.entry(pk).or_insert(0) += n;
                    if p[0] == new_id || p[1] == new_id {
                        touched.insert(pk);
                        let v = pair_words.entry(pk).or_default();
                        if v.last() != Some(&wi) {
                            v.push(wi);
                        }
                    }
                }
            }
            pair_counts.remove(&k);
            for &pk in &touched {
                let c = pair_counts[&pk];
                if c > 0 {
                    heap.push((c, Reverse(pk)));
                }
            }
            if merges.len().is_multiple_of(step) {
                progress(MergeProgress {
                    merges_done: merges.len(),
                    merges_total,
                });
            }
        }
        progress(MergeProgress {
            merges_done: merges.len(),
            merges_total,
        });

        let vocab: Vec<(Vec<u8>, u32)> = token_bytes
            .into_iter()
            .enumerate()
            .map(|(i, b)| (b, i as u32))
            .collect();
        let first_special = vocab.len() as u32;
        let specials = cfg
            .special_tokens
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), first_special + i as u32))
            .collect();
        Tokenizer::from_merges(vocab, &merges, cfg.pattern.clone(), specials, false)
            .map_err(Error::from)
    }
}

/// Adds the pre-tokens of one document (special tokens cut out) to `m`.
fn count_pretokens<'a>(
    pre: &PreTokenizer,
    specials: &Specials,
    doc: &'a str,
    m: &mut FxHashMap<&'a str, u64>,
) {
    let mut last = 0;
    for s in specials.find_iter(doc) {
        pre.split(&doc[last..s.start], |p| *m.entry(p).or_insert(0) += 1);
        last = s.end;
    }
    pre.split(&doc[last..], |p| *m.entry(p).or_insert(0) += 1);
}

/// Sums two count maps, iterating over the smaller one.
fn add_counts<K: std::hash::Hash + Eq, V: std::ops::AddAssign + Default>(
    mut a: FxHashMap<K, V>,
    mut b: FxHashMap<K, V>,
) -> FxHashMap<K, V> {
    if a.len() < b.len() {
        std::mem::swap(&mut a, &mut b);
    }
    for (k, v) in b {
        *a.entry(k).or_default() += v;
    }
    a
}

/// Trains a tokenizer on in-memory documents.
pub fn train<S: AsRef<str> + Sync>(
    corpus: &[S],
    vocab_size: usize,
    pattern: Pattern,
    special_tokens: &[&str],
    min_frequency: u64,
) -> Result<Tokenizer, Error> {
    let mut t = Trainer::new(TrainConfig {
        vocab_size,
        pattern,
        special_tokens: special_tokens.iter().map(|s| s.to_string()).collect(),
        min_frequency,
    })?;
    t.feed(corpus);
    t.finish()
}
