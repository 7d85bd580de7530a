//! Criterion benchmarks of the CPU backend's ops at the `small` training
//! config (B=8, T=256, C=384, NH=6, Vp=8192) and GPT-2 124M matmul shapes.
//! matmul reports FLOP/s as "elem/s" (2*m*n*k per call); both GEMM engines
//! run so docs/perf.md can compare them on the same machine.
//!
//! Threads: `KILN_THREADS` (default: all cores).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_abi::{
    AttentionArgs, AttentionBackwardArgs, AttentionShape, BackendBox, BackendExt, Backend_TO,
    BufId, DType, IntoBResult, MatmulArgs, NormArgs, NormBackwardArgs, NormKind, ROption, Rounding,
    Unary,
};
use kiln_tensor::{CpuBackend, GemmEngine};

const B: usize = 8;
const T: usize = 256;
const C: usize = 384;
const NH: usize = 6;
const V: usize = 8192;
const VP: usize = 8192;

fn threads() -> Option<usize> {
    std::env::var("KILN_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
}

fn backend(engine: GemmEngine) -> BackendBox {
    Backend_TO::from_value(
        CpuBackend::with_engine(threads(), engine),
        kiln_abi::abi_stable::sabi_trait::TD_Opaque,
    )
}

/// A buffer of `n` deterministic values in [-1, 1).
fn data(be: &mut BackendBox, n: usize, seed: u32) -> BufId {
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40503));
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    be.from_f32(&v).unwrap()
}

fn matmul(c: &mut Criterion) {
    let bt = B * T;
    // (label, m, n, k, trans_a, trans_b): forward `x @ W^T`, backward
    // `dout @ W` and `dout^T @ x` as the model issues them.
    let shapes = [
        ("small qkv fwd", bt, 3 * C, C, false, true),
        ("small fc fwd", bt, 4 * C, C, false, true),
        ("small fcproj fwd", bt, C, 4 * C, false, true),
        ("small lm_head fwd", bt, VP, C, false, true),
        ("small lm_head dinp", bt, C, VP, false, false),
        ("small lm_head dW", VP, C, bt, true, false),
        ("small fc dinp", bt, C, 4 * C, false, false),
        ("small fc dW", 4 * C, C, bt, true, false),
        ("gpt2 1024x768x768", 1024, 768, 768, false, true),
        ("gpt2 1024x3072x768", 1024, 3072, 768, false, true),
    ];
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    for engine in [GemmEngine::Gemm, GemmEngine::MatrixMultiply] {
        let mut be = backend(engine);
        for &(label, m, n, k, ta, tb) in &shapes {
            let (a, b, out) = (
                data(&mut be, m * k, 1),
                data(&mut be, k * n, 2),
                data(&mut be, m * n, 3),
            );
            let args = MatmulArgs {
                trans_a: ta,
                trans_b: tb,
                ..MatmulArgs::new(out, a, b, m, n, k)
            };
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::new(format!("{engine:?}"), label), |bch| {
                bch.iter(|| be.matmul(args).ok_or_err().unwrap())
            });
            for id in [a, b, out] {
                be.free(id).unwrap();
            }
        }
    }
    // bf16 operands and output (the mixed-precision policy's GEMMs): the
    // native AVX512-BF16 kernel where the CPU has it ("Gemm-bf16"), and the
    // widening path through the built-in f32 engine ("Gemm-bf16-widen").
    for native in [true, false] {
        let mut cpu = CpuBackend::with_engine(threads(), GemmEngine::Gemm);
        if cpu.set_bf16_gemm(native) != native {
            eprintln!("matmul: this CPU lacks avx512bf16; no native bf16 rows");
            continue;
        }
        let name = if native {
            "Gemm-bf16"
        } else {
            "Gemm-bf16-widen"
        };
        let mut be = Backend_TO::from_value(cpu, kiln_abi::abi_stable::sabi_trait::TD_Opaque);
        for &(label, m, n, k, ta, tb) in &shapes {
            let to_bf16 = |be: &mut BackendBox, src: BufId, len: usize| {
                let dst = be.alloc_buf(DType::BF16, len).unwrap();
                be.cast(dst, src, len, Rounding::NearestEven, 0)
                    .ok_or_err()
                    .unwrap();
                be.free(src).unwrap();
                dst
            };
            let a = data(&mut be, m * k, 1);
            let a = to_bf16(&mut be, a, m * k);
            let b = data(&mut be, k * n, 2);
            let b = to_bf16(&mut be, b, k * n);
            let out = be.alloc_buf(DType::BF16, m * n).unwrap();
            let args = MatmulArgs {
                trans_a: ta,
                trans_b: tb,
                ..MatmulArgs::new(out, a, b, m, n, k)
            };
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::new(name, label), |bch| {
                bch.iter(|| be.matmul(args).ok_or_err().unwrap())
            });
            for id in [a, b, out] {
                be.free(id).unwrap();
            }
        }
    }
    g.finish();
}

fn layernorm_args(
    out: BufId,
    mean: BufId,
    rstd: BufId,
    x: BufId,
    w: BufId,
    bias: BufId,
) -> NormArgs {
    NormArgs {
        kind: NormKind::LayerNorm,
        out,
        mean: ROption::RSome(mean),
        rstd,
        inp: x,
        weight: w,
        bias: ROption::RSome(bias),
        residual: ROption::RNone,
        residual_out: ROption::RNone,
        rows: B * T,
        cols: C,
        eps: 1e-5,
    }
}

fn layers(c: &mut Criterion) {
    let bt = B * T;
    let mut be = backend(GemmEngine::Gemm);
    let mut g = c.benchmark_group("ops-small");
    g.sample_size(10);

    let shape = AttentionShape {
        b: B,
        t: T,
        nh: NH,
        nkv: NH,
        hd: C / NH,
        window: 0,
    };
    let scale = 1.0 / ((C / NH) as f32).sqrt();
    let ws_len = be.attention_workspace_len(shape).ok_or_err().unwrap();
    let qkv = data(&mut be, bt * 3 * C, 4);
    let (out, att) = (data(&mut be, bt * C, 5), data(&mut be, ws_len, 6));
    let (dqkv, dout) = (data(&mut be, bt * 3 * C, 7), data(&mut be, bt * C, 8));
    g.bench_function("attention_forward", |b| {
        b.iter(|| {
            be.attention_forward(AttentionArgs {
                out,
                workspace: att,
                qkv,
                segments: ROption::RNone,
                shape,
                scale,
            })
            .ok_or_err()
            .unwrap()
        })
    });
    g.bench_function("attention_backward", |b| {
        b.iter(|| {
            be.attention_backward(AttentionBackwardArgs {
                dqkv,
                dout,
                qkv,
                out,
                workspace: att,
                segments: ROption::RNone,
                shape,
                scale,
            })
            .ok_or_err()
            .unwrap()
        })
    });

    let (x, w, bias) = (
        data(&mut be, bt * C, 9),
        data(&mut be, C, 10),
        data(&mut be, C, 11),
    );
    let (mean, rstd) = (data(&mut be, bt, 12), data(&mut be, bt, 13));
    let (dx, dw, db) = (
        data(&mut be, bt * C, 14),
        data(&mut be, C, 15),
        data(&mut be, C, 16),
    );
    g.bench_function("layernorm_forward", |b| {
        b.iter(|| {
            be.norm_forward(layernorm_args(out, mean, rstd, x, w, bias))
                .ok_or_err()
                .unwrap()
        })
    });
    g.bench_function("layernorm_backward", |b| {
        b.iter(|| {
            be.norm_backward(NormBackwardArgs {
                kind: NormKind::LayerNorm,
                dinp: dx,
                dweight: ROption::RSome(dw),
                dbias: ROption::RSome(db),
                dout,
                inp: x,
                weight: w,
                mean: ROption::RSome(mean),
                rstd,
                rows: bt,
                cols: C,
            })
            .ok_or_err()
            .unwrap()
        })
    });

    let n = bt * 4 * C;
    let (h, hg, dh) = (
        data(&mut be, n, 17),
        data(&mut be, n, 18),
        data(&mut be, n, 19),
    );
    g.bench_function("gelu_forward", |b| {
        b.iter(|| be.unary_forward(Unary::Gelu, hg, h, n).ok_or_err().unwrap())
    });
    g.bench_function("gelu_backward", |b| {
        b.iter(|| {
            be.unary_backward(Unary::Gelu, dh, h, hg, n)
                .ok_or_err()
                .unwrap()
        })
    });

    let logits = data(&mut be, bt * VP, 20);
    let targets: Vec<u32> = (0..bt as u32).map(|i| i * 7 % V as u32).collect();
    let targets = be.from_u32(&targets).unwrap();
    let (losses, lse, dlogits) = (
        data(&mut be, bt, 21),
        data(&mut be, bt, 22),
        data(&mut be, bt * VP, 23),
    );
    let dlosses = be.from_f32(&vec![1.0 / bt as f32; bt]).unwrap();
    g.bench_function("crossentropy_forward", |b| {
        b.iter(|| {
            be.crossentropy_forward(losses, lse, logits, targets, bt, V, VP)
                .ok_or_err()
                .unwrap()
        })
    });
    g.bench_function("crossentropy_backward", |b| {
        b.iter(|| {
            be.crossentropy_backward(dlogits, logits, lse, targets, dlosses, bt, V, VP)
                .ok_or_err()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, matmul, layers);
criterion_main!(benches);
