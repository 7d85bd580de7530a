//! The native bf16 GEMM (AVX512-BF16): against an f64 reference on random
//! shapes, bit-identical across thread counts, and the backend's choice
//! between it and the widening f32 path. Skipped (with a message) on CPUs
//! without avx512bf16.

mod common;

use common::{assert_close, mm_args, to_f64, upload, upload_as, widened, Rng};
use half::bf16;
use kiln_abi::{
    abi_stable::sabi_trait::TD_Opaque, BackendBox, BackendExt, Backend_TO, DType, IntoBResult,
};
use kiln_tensor::gemm_bf16::{available, gemm_bf16_with, Bf16Kernel, Bf16Mat};
use kiln_tensor::CpuBackend;
use proptest::prelude::*;

/// The kernels this CPU runs (each is tested).
fn kernels() -> Vec<Bf16Kernel> {
    let all = [Bf16Kernel::Amx, Bf16Kernel::Avx512];
    for k in all.iter().filter(|k| !k.available()) {
        eprintln!("skipped: the {k:?} bf16 kernel does not run on this CPU");
    }
    all.into_iter().filter(|k| k.available()).collect()
}

fn skip() -> bool {
    if !available() {
        eprintln!("skipped: this CPU lacks avx512bf16 (the native bf16 GEMM is not used here)");
    }
    !available()
}

/// One product's inputs: logical `a[m,k]`, `b[k,n]` stored row-major (or
/// transposed) with row strides padded by `pad`, and the prior `c`.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    lda: usize,
    ldb: usize,
    ldc: usize,
    alpha: f32,
    beta: f32,
    a: Vec<bf16>,
    b: Vec<bf16>,
    c: Vec<f32>,
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn new(
        (m, n, k): (usize, usize, usize),
        ta: bool,
        tb: bool,
        pad: usize,
        alpha: f32,
        beta: f32,
        seed: u64,
    ) -> Case {
        let mut rng = Rng::new(seed);
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
        let mut gen =
            |len: usize| -> Vec<bf16> { (0..len).map(|_| bf16::from_f32(rng.uniform())).collect() };
        let a = gen(ar * lda);
        let b = gen(br * ldb);
        let c: Vec<f32> = (0..m * ldc)
            .map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0)
            .collect();
        Case {
            m,
            n,
            k,
            ta,
            tb,
            lda,
            ldb,
            ldc,
            alpha,
            beta,
            a,
            b,
            c,
        }
    }

    fn a_at(&self, i: usize, p: usize) -> f64 {
        let idx = if self.ta {
            p * self.lda + i
        } else {
            i * self.lda + p
        };
        self.a[idx].to_f64()
    }

    fn b_at(&self, p: usize, j: usize) -> f64 {
        let idx = if self.tb {
            j * self.ldb + p
        } else {
            p * self.ldb + j
        };
        self.b[idx].to_f64()
    }

    /// Runs `kernel` on the current rayon pool; returns all of `c`.
    fn run(&self, kernel: Bf16Kernel) -> Vec<f32> {
        let mut c = self.c.clone();
        gemm_bf16_with(
            kernel,
            self.m,
            self.n,
            self.k,
            self.alpha,
            Bf16Mat {
                data: &self.a,
                ld: self.lda,
                trans: self.ta,
            },
            Bf16Mat {
                data: &self.b,
                ld: self.ldb,
                trans: self.tb,
            },
            self.beta,
            &mut c,
            self.ldc,
        );
        c
    }

    /// Checks `got` against f64: products are exact, so the only error is
    /// f32 summation, bounded by `k * 2^-23 * sum |a b|` (plus the scalars').
    fn check(&self, kernel: Bf16Kernel, got: &[f32]) {
        for i in 0..self.m {
            for j in 0..self.ldc {
                let at = i * self.ldc + j;
                let prior = self.c[at] as f64;
                if j >= self.n {
                    assert_eq!(got[at].to_bits(), self.c[at].to_bits(), "padding [{i},{j}]");
                    continue;
                }
                let (mut s, mut abs) = (0f64, 0f64);
                for p in 0..self.k {
                    let x = self.a_at(i, p) * self.b_at(p, j);
                    s += x;
                    abs += x.abs();
                }
                let beta = self.beta as f64;
                let want = self.alpha as f64 * s + if beta == 0.0 { 0.0 } else { beta * prior };
                let scale = (self.alpha as f64).abs() * abs + (beta * prior).abs();
                let tol = (self.k as f64 + 4.0) * 2f64.powi(-23) * scale + 1e-30;
                let g = got[at] as f64;
                assert!(
                    (g - want).abs() <= tol,
                    "{kernel:?} m={} n={} k={} ta={} tb={} [{i},{j}]: got {g}, want {want}, tol {tol:e}",
                    self.m,
                    self.n,
                    self.k,
                    self.ta,
                    self.tb
                );
            }
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn matches_f64_reference(
        m in 1usize..40,
        n in 1usize..80,
        k in 0usize..70,
        ta in any::<bool>(),
        tb in any::<bool>(),
        pad in 0usize..3,
        alpha in prop::sample::select(vec![1.0f32, 0.5, -2.0]),
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.75]),
        seed in any::<u64>(),
    ) {
        if !skip() {
            let case = Case::new((m, n, k), ta, tb, pad, alpha, beta, seed);
            for kernel in kernels() {
                case.check(kernel, &case.run(kernel));
            }
        }
    }
}

/// Shapes past one task tile and one k-block (odd k included), in parallel.
#[test]
fn large_shapes_and_k_blocks() {
    if skip() {
        return;
    }
    let shapes = [
        (130, 290, 777),
        (97, 33, 1000),
        (1, 300, 385),
        (300, 1, 384),
        (200, 257, 3),
        (70, 40, 1100),
        (33, 290, 513),
    ];
    for (s, &shape) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let case = Case::new(shape, ta, tb, 1, 1.0, 0.5, s as u64);
            for kernel in kernels() {
                case.check(kernel, &pool(3).install(|| case.run(kernel)));
            }
        }
    }
}

/// `beta == 0` never reads the old output (NaNs vanish).
#[test]
fn beta_zero_ignores_nan() {
    if skip() {
        return;
    }
    let mut case = Case::new((13, 35, 9), false, true, 0, 1.0, 0.0, 5);
    case.c.iter_mut().for_each(|v| *v = f32::NAN);
    for kernel in kernels() {
        let got = case.run(kernel);
        assert!(got.iter().all(|v| v.is_finite()), "{kernel:?}");
    }
}

/// Bit-identical for 1, 2 and 3 threads (and run after run).
#[test]
fn deterministic_across_thread_counts() {
    if skip() {
        return;
    }
    for (shape, ta, tb) in [
        ((512, 1152, 384), false, true),
        ((384, 700, 1537), true, false),
        ((64, 2048, 512), false, false),
    ] {
        let case = Case::new(shape, ta, tb, 0, 1.0, 1.0, 11);
        for kernel in kernels() {
            let one = pool(1).install(|| case.run(kernel));
            for threads in [2, 3, 2] {
                let other = pool(threads).install(|| case.run(kernel));
                assert!(
                    one.iter()
                        .zip(&other)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{kernel:?} {shape:?}: {threads} threads differ from 1"
                );
            }
        }
    }
}

fn boxed(native: bool, threads: usize) -> BackendBox {
    let mut be = CpuBackend::new(Some(threads));
    assert_eq!(be.set_bf16_gemm(native), native && available());
    Backend_TO::from_value(be, TD_Opaque)
}

/// The backend's matmul on bf16 operands, native and forced-widening: both
/// within the f32-summation bound of f64, f32 and bf16 outputs, with bias.
#[test]
fn backend_native_and_fallback() {
    if skip() {
        return;
    }
    let (m, n, k) = (70, 45, 133);
    let mut rng = Rng::new(3);
    let (av, bv, biasv, cv) = (
        rng.vec(m * k, 1.0),
        rng.vec(n * k, 1.0),
        rng.vec(n, 1.0),
        rng.vec(m * n, 1.0),
    );
    let mut results = Vec::new();
    for native in [true, false] {
        for out_dtype in [DType::F32, DType::BF16] {
            let mut be = boxed(native, 2);
            let (a, ah) = upload_as(&mut be, DType::BF16, &av);
            let (b, bh) = upload_as(&mut be, DType::BF16, &bv);
            let bias = upload(&mut be, &biasv);
            let (out, ch) = upload_as(&mut be, out_dtype, &cv);
            be.matmul(mm_args(
                out,
                a,
                b,
                Some(bias),
                (m, n, k),
                false,
                true,
                1.0,
                0.5,
            ))
            .ok_or_err()
            .unwrap();
            let got = widened(&mut be, out);
            let want: Vec<f64> = (0..m * n)
                .map(|at| {
                    let (i, j) = (at / n, at % n);
                    let dot: f64 = (0..k)
                        .map(|p| ah[i * k + p] as f64 * bh[j * k + p] as f64)
                        .sum();
                    dot + 0.5 * ch[at] as f64 + biasv[j] as f64
                })
                .collect();
            let rtol = if out_dtype == DType::BF16 { 8e-3 } else { 0.0 };
            assert_close(
                &format!("native={native} out={out_dtype:?}"),
                &got,
                &want,
                rtol,
                1e-4 * k as f64,
            );
            results.push(got);
        }
    }
    // Same values up to summation order: close, not necessarily identical.
    assert_close(
        "native vs widening (f32 out)",
        &results[0],
        &to_f64(&results[2]),
        1e-5,
        1e-4,
    );
}

/// The backend's matmul is bit-identical across thread counts on the
/// native path too.
#[test]
fn backend_native_deterministic() {
    if skip() {
        return;
    }
    let (m, n, k) = (600, 520, 400);
    let mut rng = Rng::new(8);
    let (av, bv) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
    let run = |threads: usize| {
        let mut be = boxed(true, threads);
        let (a, _) = upload_as(&mut be, DType::BF16, &av);
        let (b, _) = upload_as(&mut be, DType::BF16, &bv);
        let out = be.alloc_buf(DType::BF16, m * n).unwrap();
        be.matmul(mm_args(out, a, b, None, (m, n, k), false, false, 1.0, 0.0))
            .ok_or_err()
            .unwrap();
        widened(&mut be, out)
    };
    let one = run(1);
    for t in [2, 3] {
        assert!(one
            .iter()
            .zip(&run(t))
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
