//! zero, copy, cast, scale, add, axpy, the unary activations and SwiGLU.

use half::{bf16, f16};
use kiln_abi::rounding::{bf16_stochastic, f16_stochastic, random_bits};
use kiln_abi::{DType, Rounding, Unary};

use super::same_bits_or_nan;
use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

/// Odd lengths on purpose: vector kernels must handle their tails.
const N: usize = 37;

pub fn zero(env: &mut Env, dt: DType) -> Cases {
    let mut c = OpCase::new("zero", "whole buffer", dt);
    let buf = c.data("buf", env.rng.vec(N));
    // any dtype, any length: zero has no size argument
    c.set_kind(buf, crate::case::Kind::Any);
    c.loose(buf);
    c.expect_exact(buf, &[0.0; N]);
    c.call(move |be, ids| be.zero(ids[buf]));
    Ok(vec![c])
}

pub fn copy(env: &mut Env, dt: DType) -> Cases {
    let n = N;
    let mut c = OpCase::new("copy", "first n of a longer dst", dt);
    let dst = c.data("dst", env.rng.vec(n + 3));
    c.loose(dst);
    let src = c.data("src", env.rng.vec(n));
    let mut want = c.vals(src);
    want.extend(&c.vals(dst)[n..]);
    c.expect_exact(dst, &want);
    c.call(move |be, ids| be.copy(ids[dst], ids[src], n));
    Ok(vec![c])
}

/// Values where rounding is decided: ties, overflow, subnormals, specials.
fn rounding_inputs(env: &mut Env) -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 2f64.powi(-8),       // bf16 tie: to even (1.0)
        1.0 + 3.0 * 2f64.powi(-8), // bf16 tie: to even (up)
        1.0 + 2f64.powi(-11),      // f16 tie
        -(1.0 + 3.0 * 2f64.powi(-11)),
        65504.0, // largest f16
        65520.0, // rounds to inf in f16
        1e-6,    // f16 subnormal
        3e-8,    // below f16's smallest subnormal
        3.4e38,  // rounds to inf in bf16
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -1.5e-40, // f32 subnormal
    ];
    for scale in [1e-3, 1.0, 300.0] {
        v.extend(env.rng.vec(7).iter().map(|x| x * scale));
    }
    v.iter().map(|&x| x as f32 as f64).collect()
}

fn narrow(dst: DType, x: f32, rounding: Rounding, seed: u64, i: usize) -> f64 {
    match (dst, rounding) {
        (DType::BF16, Rounding::NearestEven) => bf16::from_f32(x).to_f64(),
        (DType::F16, Rounding::NearestEven) => f16::from_f32(x).to_f64(),
        (DType::BF16, Rounding::Stochastic) => {
            bf16_stochastic(x, random_bits(seed, i as u64)).to_f64()
        }
        (DType::F16, Rounding::Stochastic) => {
            f16_stochastic(x, random_bits(seed, i as u64)).to_f64()
        }
        _ => x as f64,
    }
}

/// Every pair of claimed float dtypes, narrowing both ways, bit for bit
/// against `kiln_abi::rounding` (a NaN may be any NaN).
pub fn cast(env: &mut Env, _dt: DType) -> Cases {
    let claimed: Vec<DType> = [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .filter(|&d| env.info.supports("cast", d))
        .collect();
    let inputs = rounding_inputs(env);
    let n = inputs.len();
    let seed = 0x5EED_0001;
    let mut cases = Vec::new();
    for &from in &claimed {
        for &to in &claimed {
            let modes: &[Rounding] = if to.size() < from.size() || (to != from && to != DType::F32)
            {
                &[Rounding::NearestEven, Rounding::Stochastic]
            } else {
                &[Rounding::NearestEven]
            };
            for &rounding in modes {
                let mut c = OpCase::new("cast", format!("{from} -> {to} ({rounding:?})"), from);
                let src = c.float("src", from, inputs.clone());
                let tail = env.rng.vec(2);
                let dst = c.float("dst", to, [vec![0.5; n], tail].concat());
                c.loose(dst);
                let mut want: Vec<f64> = c
                    .vals(src)
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| narrow(to, x as f32, rounding, seed, i))
                    .collect();
                want.extend(&c.vals(dst)[n..]);
                c.verify(move |out| {
                    same_bits_or_nan(to, &out[dst], &want).map_err(|e| format!("`dst`: {e}"))
                });
                c.call(move |be, ids| be.cast(ids[dst], ids[src], n, rounding, seed));
                cases.push(c);
            }
        }
    }
    Ok(cases)
}

pub fn scale(env: &mut Env, dt: DType) -> Cases {
    let n = N - 2;
    let factor = -1.375f32;
    let mut c = OpCase::new("scale", "first n elements", dt);
    let buf = c.data("buf", env.rng.vec(N));
    c.loose(buf);
    let mut want: Vec<f64> = c.vals(buf)[..n].iter().map(|x| x * factor as f64).collect();
    want.extend(&c.vals(buf)[n..]);
    c.expect(buf, want);
    c.call(move |be, ids| be.scale(ids[buf], n, factor));
    Ok(vec![c])
}

pub fn add(env: &mut Env, dt: DType) -> Cases {
    let mut c = OpCase::new("add", "out = a + b", dt);
    let out = c.data("out", vec![0.0; N]);
    let a = c.data("a", env.rng.vec(N));
    let b = c.data("b", env.rng.vec(N));
    c.expect(out, fd::plus(&c.vals(a), &c.vals(b)));
    c.call(move |be, ids| be.add(ids[out], ids[a], ids[b], N));
    Ok(vec![c])
}

pub fn axpy(env: &mut Env, dt: DType) -> Cases {
    let alpha = -0.75f32;
    let mut c = OpCase::new("axpy", "dst += alpha src", dt);
    let dst = c.data("dst", env.rng.vec(N));
    let src = c.data("src", env.rng.vec(N));
    let want = c
        .vals(dst)
        .iter()
        .zip(c.vals(src))
        .map(|(d, s)| d + alpha as f64 * s)
        .collect();
    c.expect(dst, want);
    c.call(move |be, ids| be.axpy(ids[dst], ids[src], N, alpha));
    Ok(vec![c])
}

/// The f64 reference of each activation.
pub fn activation(kind: Unary, x: f64) -> f64 {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    match kind {
        Unary::Gelu => {
            let s = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (s * (x + 0.044715 * x * x * x)).tanh())
        }
        Unary::Silu => x * sigmoid(x),
        Unary::Sigmoid => sigmoid(x),
        Unary::Relu => x.max(0.0),
    }
}

const UNARIES: [Unary; 4] = [Unary::Gelu, Unary::Silu, Unary::Sigmoid, Unary::Relu];

pub fn unary_forward(env: &mut Env, dt: DType) -> Cases {
    let mut cases = Vec::new();
    for kind in UNARIES {
        let mut c = OpCase::new("unary_forward", format!("{kind:?}"), dt);
        let out = c.data("out", vec![0.0; N]);
        let inp = c.data("inp", env.rng.vec_in(N, -3.0, 3.0));
        c.expect(
            out,
            c.vals(inp).iter().map(|&x| activation(kind, x)).collect(),
        );
        c.call(move |be, ids| be.unary_forward(kind, ids[out], ids[inp], N));
        cases.push(c);
    }
    Ok(cases)
}

pub fn unary_backward(env: &mut Env, dt: DType) -> Cases {
    let mut cases = Vec::new();
    for kind in UNARIES {
        let mut c = OpCase::new("unary_backward", format!("{kind:?} (accumulates)"), dt);
        let dinp = c.data("dinp", env.rng.vec(N));
        let inp = c.data("inp", env.rng.vec_in(N, -3.0, 3.0));
        let dout = c.data("dout", env.rng.vec(N));
        let d = c.vals(dout);
        let g = fd::grad(&c.vals(inp), |x| {
            let y: Vec<f64> = x.iter().map(|&v| activation(kind, v)).collect();
            fd::dot(&d, &y)
        });
        c.expect(dinp, fd::plus(&c.vals(dinp), &g));
        c.call(move |be, ids| be.unary_backward(kind, ids[dinp], ids[inp], ids[dout], N));
        cases.push(c);
    }
    Ok(cases)
}

fn swiglu_ref(inp: &[f64], rows: usize, f: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * f);
    for r in 0..rows {
        for j in 0..f {
            let gate = inp[r * 2 * f + j];
            let up = inp[r * 2 * f + f + j];
            out.push(activation(Unary::Silu, gate) * up);
        }
    }
    out
}

const SW_ROWS: usize = 3;
const SW_F: usize = 5;

pub fn swiglu_forward(env: &mut Env, dt: DType) -> Cases {
    let (rows, f) = (SW_ROWS, SW_F);
    let mut c = OpCase::new("swiglu_forward", format!("{rows}x[{f}|{f}]"), dt);
    let out = c.data("out", vec![0.0; rows * f]);
    let inp = c.data("inp", env.rng.vec_in(rows * 2 * f, -2.0, 2.0));
    c.expect(out, swiglu_ref(&c.vals(inp), rows, f));
    c.call(move |be, ids| be.swiglu_forward(ids[out], ids[inp], rows, f));
    Ok(vec![c])
}

pub fn swiglu_backward(env: &mut Env, dt: DType) -> Cases {
    let (rows, f) = (SW_ROWS, SW_F);
    let mut c = OpCase::new(
        "swiglu_backward",
        format!("{rows}x[{f}|{f}] (accumulates)"),
        dt,
    );
    let dinp = c.data("dinp", env.rng.vec(rows * 2 * f));
    let inp = c.data("inp", env.rng.vec_in(rows * 2 * f, -2.0, 2.0));
    let dout = c.data("dout", env.rng.vec(rows * f));
    let d = c.vals(dout);
    let g = fd::grad(&c.vals(inp), |x| fd::dot(&d, &swiglu_ref(x, rows, f)));
    c.expect(dinp, fd::plus(&c.vals(dinp), &g));
    c.call(move |be, ids| be.swiglu_backward(ids[dinp], ids[inp], ids[dout], rows, f));
    Ok(vec![c])
}
