//! A small seeded generator for test data (splitmix64, as kiln-abi's
//! rounding uses), so that the suite needs no RNG crate and every run sees
//! the same inputs.

use kiln_abi::rounding::splitmix64;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    /// `n` values uniform in `[-1, 1)`.
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform(-1.0, 1.0)).collect()
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn vec_in(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// An integer in `0..n`.
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }

    /// `len` indices in `0..n` that include `n - 1` (so that a buffer one
    /// row shorter is too small) and at least one repeat when `len > n`.
    pub fn indices(&mut self, len: usize, n: u32) -> Vec<u32> {
        let mut v: Vec<u32> = (0..len).map(|_| self.below(n)).collect();
        if let Some(first) = v.first_mut() {
            *first = n - 1;
        }
        v
    }
}
