//! MinHash-LSH near-duplicate detection with datatrove's parameterisation
//! (FineWeb: 5-word shingles, 14 bands x 8 hashes, xxh64 shingle hashes,
//! permutations `(h * a + b) mod (2^61 - 1)` with 64-bit wrap-around, seed 1).
//!
//! Two documents are candidates when all 8 hashes of any band agree;
//! candidates are joined with union-find and one document (the earliest) is
//! kept per cluster. Index cost: one u64 per band per document (14 x 8 =
//! 112 bytes) plus 4 bytes of union-find.

use super::minhash_params::{SEED1_A, SEED1_B};
use super::union_find::UnionFind;
use serde::Deserialize;
use std::collections::HashMap;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::xxh3_64;
use xxhash_rust::xxh64::xxh64;

const MERSENNE_61: u64 = (1 << 61) - 1;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MinHashConfig {
    pub enabled: bool,
    pub n_grams: usize,
    pub num_buckets: usize,
    pub hashes_per_bucket: usize,
    /// Seed 1 uses datatrove's exact constants; other seeds a SplitMix64 stream.
    pub seed: u64,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        MinHashConfig {
            enabled: true,
            n_grams: 5,
            num_buckets: 14,
            hashes_per_bucket: 8,
            seed: 1,
        }
    }
}

/// datatrove's `PUNCTUATION` string (utils/text.py): these become spaces.
const PUNCTUATION: &str =
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»";

fn is_simplify_punct(c: char) -> bool {
    let u = c as u32;
    (u < 9) || (11..32).contains(&u) || (127..160).contains(&u) || PUNCTUATION.contains(c)
}

/// datatrove's `simplify_text` with its default config: lowercase, numbers
/// (`\p{Nd}+([.,،٫⎖⎗⎘]\p{Nd}+)?`) to "0", punctuation to spaces, whitespace
/// runs to one space, NFD with combining marks removed.
pub fn simplify_text(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut s = String::with_capacity(lower.len());
    let chars: Vec<char> = lower.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_unicode_digit(c) {
            while i < chars.len() && is_unicode_digit(chars[i]) {
                i += 1;
            }
            if i + 1 < chars.len()
                && matches!(chars[i], '.' | ',' | '،' | '٫' | '⎖' | '⎗' | '⎘')
                && is_unicode_digit(chars[i + 1])
            {
                i += 1;
                while i < chars.len() && is_unicode_digit(chars[i]) {
                    i += 1;
                }
            }
            s.push('0');
            continue;
        }
        s.push(if is_simplify_punct(c) { ' ' } else { c });
        i += 1;
    }
    let mut out = String::with_capacity(s.len());
    for w in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    if out.is_ascii() {
        return out;
    }
    out.nfd()
        .filter(|&c| !is_combining_mark(c))
        .collect::<String>()
        .trim()
        .to_string()
}

/// Decimal digits (Unicode Nd), via char::to_digit for ASCII and the
/// `is_numeric` + known Nd blocks elsewhere.
fn is_unicode_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    // Nd characters come in aligned runs of ten starting at a code point
    // ending in 0 (or 6 for a few scripts); is_numeric alone also matches
    // No/Nl (fractions, roman numerals), which the Nd pattern does not.
    c.is_numeric() && unicode_nd(c)
}

fn unicode_nd(c: char) -> bool {
    const ND_STARTS: &[u32] = &[
        0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
        0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
        0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
        0xFF10,
    ];
    let u = c as u32;
    ND_STARTS.iter().any(|&s| (s..s + 10).contains(&u))
}

/// Shingle hashes: xxh64 (seed 0) of each run of `n` words joined by " ",
/// words being the whitespace-separated tokens of the simplified text.
pub fn shingles(text: &str, n: usize) -> Vec<u64> {
    let simple = simplify_text(text);
    let words: Vec<&str> = simple.split(' ').filter(|w| !w.is_empty()).collect();
    if words.len() < n {
        return Vec::new();
    }
    let mut buf = String::new();
    words
        .windows(n)
        .map(|g| {
            buf.clear();
            for (k, w) in g.iter().enumerate() {
                if k > 0 {
                    buf.push(' ');
                }
                buf.push_str(w);
            }
            xxh64(buf.as_bytes(), 0)
        })
        .collect()
}

/// `x % (2^61 - 1)` without a division: 2^61 = 1 (mod p), so
/// x = hi * 2^61 + lo = hi + lo (mod p), and hi + lo < 2p.
#[inline]
pub fn mod_mersenne61(x: u64) -> u64 {
    let r = (x & MERSENNE_61) + (x >> 61);
    if r >= MERSENNE_61 {
        r - MERSENNE_61
    } else {
        r
    }
}

/// The permutation constants (a, b) for `num_hashes` hashes.
pub fn parameters(seed: u64, num_hashes: usize) -> (Vec<u64>, Vec<u64>) {
    if seed == 1 && num_hashes <= SEED1_A.len() {
        return (
            SEED1_A[..num_hashes].to_vec(),
            SEED1_B[..num_hashes].to_vec(),
        );
    }
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let a = (0..num_hashes)
        .map(|_| 1 + next() % (MERSENNE_61 - 1))
        .collect();
    let b = (0..num_hashes).map(|_| next() % MERSENNE_61).collect();
    (a, b)
}

pub struct MinHasher {
    cfg: MinHashConfig,
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    pub fn new(cfg: MinHashConfig) -> Self {
        let (a, b) = parameters(cfg.seed, cfg.num_buckets * cfg.hashes_per_bucket);
        MinHasher { cfg, a, b }
    }

    /// The signature: for each permutation, the minimum over shingles of
    /// `(h * a + b) mod (2^61 - 1)` computed with u64 wrap-around (as numpy
    /// does). `None` for documents with fewer than `n_grams` words.
    pub fn signature(&self, text: &str) -> Option<Vec<u64>> {
        let sh = shingles(text, self.cfg.n_grams);
        if sh.is_empty() {
            return None;
        }
        let mut sig = vec![u64::MAX; self.a.len()];
        for &h in &sh {
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let v = mod_mersenne61(h.wrapping_mul(a).wrapping_add(b));
                if v < *s {
                    *s = v;
                }
            }
        }
        Some(sig)
    }

    /// One key per band: a hash of the band's hashes (the band index is
    /// mixed in so equal values in different bands never collide).
    pub fn band_keys(&self, sig: &[u64]) -> Vec<u64> {
        sig.chunks(self.cfg.hashes_per_bucket)
            .enumerate()
            .map(|(band, chunk)| {
                let mut bytes = Vec::with_capacity(8 * (chunk.len() + 1));
                bytes.extend_from_slice(&(band as u64).to_le_bytes());
                for v in chunk {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                xxh3_64(&bytes)
            })
            .collect()
    }

    pub fn doc_keys(&self, text: &str) -> Option<Vec<u64>> {
        self.signature(text).map(|s| self.band_keys(&s))
    }
}

/// Clusters documents by shared band keys. Returns, per document, `Some(k)`
/// when it is removed as a near duplicate of document `k` (the cluster's
/// earliest member), `None` when kept.
pub fn cluster(keys: &[Option<Vec<u64>>]) -> Vec<Option<u32>> {
    let mut uf = UnionFind::new(keys.len());
    let mut first: HashMap<u64, u32> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        for &key in k.iter().flatten() {
            match first.get(&key) {
                Some(&j) => uf.union(j, i as u32),
                None => {
                    first.insert(key, i as u32);
                }
            }
        }
    }
    (0..keys.len() as u32)
        .map(|i| {
            let r = uf.find(i);
            (r != i).then_some(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "It was the best of times, it was the worst of times, it was the age of \
        wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of \
        incredulity, it was the season of Light, it was the season of Darkness, it was the spring \
        of hope, it was the winter of despair, we had everything before us, we had nothing before us.";

    #[test]
    fn simplify_matches_datatrove_rules() {
        assert_eq!(
            simplify_text("Hello,   World! 3.14 and 1,000 Café"),
            "hello world 0 and 0 cafe"
        );
        assert_eq!(simplify_text("a\tb\nc"), "a b c");
    }

    #[test]
    fn one_word_changed_is_clustered_distinct_is_not() {
        let m = MinHasher::new(MinHashConfig::default());
        let near = TEXT.replace("wisdom", "knowledge");
        let other = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm \
            windowsill and the birds sing in the old oak tree behind the small red house by the river.";
        let keys = vec![
            m.doc_keys(TEXT),
            m.doc_keys(&near),
            m.doc_keys(other),
            m.doc_keys("too short"),
        ];
        assert!(keys[3].is_none());
        assert_eq!(cluster(&keys), vec![None, Some(0), None, None]);
    }

    proptest::proptest! {
        #[test]
        fn fast_mod_equals_remainder(x: u64) {
            proptest::prop_assert_eq!(mod_mersenne61(x), x % MERSENNE_61);
        }
    }

    #[test]
    fn fast_mod_edges() {
        for x in [
            0,
            MERSENNE_61 - 1,
            MERSENNE_61,
            MERSENNE_61 + 1,
            2 * MERSENNE_61,
            u64::MAX,
        ] {
            assert_eq!(mod_mersenne61(x), x % MERSENNE_61, "{x}");
        }
    }

    #[test]
    fn signature_is_min_of_wrapping_permutation() {
        let m = MinHasher::new(MinHashConfig {
            num_buckets: 1,
            hashes_per_bucket: 2,
            ..Default::default()
        });
        let sh = shingles(TEXT, 5);
        let sig = m.signature(TEXT).unwrap();
        for (k, &s) in sig.iter().enumerate() {
            let want = sh
                .iter()
                .map(|&h| h.wrapping_mul(SEED1_A[k]).wrapping_add(SEED1_B[k]) % MERSENNE_61)
                .min()
                .unwrap();
            assert_eq!(s, want);
        }
    }
}
