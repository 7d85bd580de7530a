//! A fixed-size Bloom filter over 128-bit hashes: no false negatives, a
//! false-positive rate set by its size. Memory is fixed when it is built, so
//! it dedups corpora larger than memory.
//!
//! Sizing (the standard optimum for `n` expected items and target rate `p`):
//! `m = ceil(-n ln p / (ln 2)^2)` bits (rounded up to 64) and
//! `k = round(m/n ln 2)` probes, e.g. 14.4 bits (1.8 bytes) per item and
//! 10 probes for p = 1e-3. After `n` insertions the false-positive rate is
//! `(1 - e^(-k n / m))^k` ≈ p; beyond `n` it grows (the filter reports its
//! current rate, [`Bloom::current_fp_rate`]). Probes use double hashing
//! (Kirsch & Mitzenmacher): `g_i = h1 + i h2`, mapped to `[0, m)` by a
//! multiply-shift, from the two halves of one xxh3-128 hash.

/// A Bloom filter with `m` bits and `k` probes.
#[derive(Clone, Debug)]
pub struct Bloom {
    words: Vec<u64>,
    m: u64,
    k: u32,
    /// Bits set so far (for the current false-positive rate).
    set: u64,
}

impl Bloom {
    /// Sized for `expected_items` at false-positive rate `fp_rate`.
    pub fn for_items(expected_items: u64, fp_rate: f64) -> Self {
        let (m, k) = Self::size(expected_items, fp_rate);
        Self::with_bits(m, k)
    }

    /// `(m bits, k probes)` for `n` items at rate `p`.
    pub fn size(n: u64, p: f64) -> (u64, u32) {
        let n = n.max(1) as f64;
        let p = p.clamp(1e-300, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let m = (-n * p.ln() / (ln2 * ln2)).ceil().max(64.0) as u64;
        let m = m.div_ceil(64) * 64;
        let k = ((m as f64 / n) * ln2).round().clamp(1.0, 64.0) as u32;
        (m, k)
    }

    pub fn with_bits(m: u64, k: u32) -> Self {
        let m = m.max(64).div_ceil(64) * 64;
        Bloom {
            words: vec![0; (m / 64) as usize],
            m,
            k: k.max(1),
            set: 0,
        }
    }

    pub fn bits(&self) -> u64 {
        self.m
    }

    pub fn probes(&self) -> u32 {
        self.k
    }

    pub fn bytes(&self) -> u64 {
        self.m / 8
    }

    #[inline]
    fn positions(&self, h: u128) -> impl Iterator<Item = u64> + '_ {
        let h1 = h as u64;
        let h2 = ((h >> 64) as u64) | 1; // odd: the probes never collapse to one
        (0..self.k as u64).map(move |i| {
            let g = h1.wrapping_add(i.wrapping_mul(h2));
            ((g as u128 * self.m as u128) >> 64) as u64
        })
    }

    #[inline]
    fn get(&self, bit: u64) -> bool {
        self.words[(bit / 64) as usize] >> (bit % 64) & 1 == 1
    }

    /// Whether `h` may have been inserted (false only if it never was).
    pub fn contains(&self, h: u128) -> bool {
        self.positions(h).all(|b| self.get(b))
    }

    /// Inserts `h`; returns whether it was (possibly) present already.
    pub fn insert(&mut self, h: u128) -> bool {
        let mut present = true;
        let h1 = h as u64;
        let h2 = ((h >> 64) as u64) | 1;
        for i in 0..self.k as u64 {
            let g = h1.wrapping_add(i.wrapping_mul(h2));
            let bit = ((g as u128 * self.m as u128) >> 64) as u64;
            let w = &mut self.words[(bit / 64) as usize];
            let mask = 1u64 << (bit % 64);
            if *w & mask == 0 {
                *w |= mask;
                self.set += 1;
                present = false;
            }
        }
        present
    }

    /// The chance that an item never inserted is reported present now:
    /// (fraction of bits set)^k.
    pub fn current_fp_rate(&self) -> f64 {
        (self.set as f64 / self.m as f64).powi(self.k as i32)
    }

    /// The expected false-positive rate after `n` distinct insertions.
    pub fn expected_fp_rate(&self, n: u64) -> f64 {
        let k = self.k as f64;
        (1.0 - (-k * n as f64 / self.m as f64).exp()).powf(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_128;

    fn h(i: u64) -> u128 {
        xxh3_128(&i.to_le_bytes())
    }

    #[test]
    fn sizing_matches_the_formula() {
        let (m, k) = Bloom::size(1_000_000, 1e-3);
        // 14.38 bits per item, 10 probes.
        assert!((14_377_000..14_378_000).contains(&m), "{m}");
        assert_eq!(k, 10);
        let (m, k) = Bloom::size(1000, 0.01);
        assert_eq!((m, k), (9600, 7));
    }

    /// Filled to its design size with random items, the measured
    /// false-positive rate on other random items is close to the target.
    #[test]
    fn measured_false_positive_rate_is_near_the_target() {
        for (n, p) in [(20_000u64, 0.01), (20_000, 0.001)] {
            let mut b = Bloom::for_items(n, p);
            for i in 0..n {
                b.insert(h(i));
            }
            let queries = 400_000u64;
            let fp = (n..n + queries).filter(|&i| b.contains(h(i))).count();
            let rate = fp as f64 / queries as f64;
            let expected = b.expected_fp_rate(n);
            assert!(
                (0.8 * p..1.2 * p).contains(&rate),
                "n={n} p={p}: measured {rate}"
            );
            assert!((0.8 * expected..1.2 * expected).contains(&rate));
            // The running estimate from the fill agrees with the formula.
            assert!((b.current_fp_rate() / expected - 1.0).abs() < 0.1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// No false negatives, whatever the size (even overfilled).
        #[test]
        fn never_forgets(items in proptest::collection::vec(any::<u128>(), 1..500),
                         n in 1u64..100, p in 1e-6f64..0.3) {
            let mut b = Bloom::for_items(n, p);
            for &x in &items {
                b.insert(x);
                prop_assert!(b.contains(x));
            }
            for &x in &items {
                prop_assert!(b.contains(x));
                prop_assert!(b.insert(x));
            }
        }
    }
}
