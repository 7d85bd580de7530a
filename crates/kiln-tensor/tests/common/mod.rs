//! Shared test helpers: a seeded generator, f64 reference implementations of
//! every op, central-difference gradients and tolerance checks.
#![allow(dead_code)]

pub mod reference;

use kiln_abi::{BackendBox, BackendExt, BufId, DType};

/// SplitMix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central-difference gradient of `f` at `x` (f64 throughout).
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let fp = f(&xp);
            xp[i] = orig - h;
            let fm = f(&xp);
            xp[i] = orig;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// `sum(r * y)`: the scalar whose gradient w.r.t. `y` is `r`.
pub fn weighted_sum(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (|err| = {err:e})"
        );
    }
}

pub fn backend(threads: usize) -> BackendBox {
    kiln_tensor::cpu_backend(Some(threads))
}

pub fn upload(be: &mut BackendBox, data: &[f32]) -> BufId {
    be.from_f32(data).expect("upload")
}

pub fn zeros(be: &mut BackendBox, n: usize) -> BufId {
    be.alloc_buf(DType::F32, n).expect("alloc")
}

pub fn download(be: &mut BackendBox, id: BufId) -> Vec<f32> {
    be.download_f32(id).expect("download")
}

/// `base + delta` in f64, for checking that backward ops accumulate.
pub fn plus(base: &[f32], delta: &[f64]) -> Vec<f64> {
    base.iter()
        .zip(delta)
        .map(|(&b, &d)| b as f64 + d)
        .collect()
}
