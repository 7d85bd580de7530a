//! 16-bit operands (computed in f32, a 16-bit output rounded once, a
//! 16-bit gradient widened, accumulated and narrowed), casts with
//! nearest-even and stochastic rounding exactly as `kiln_abi::rounding`,
//! the step statistics (`reduce`, `step_control`) and AdamW's device-side
//! control and 16-bit working copy.

mod common;

use common::reference as r;
use common::*;
use half::{bf16, f16};
use kiln_abi::rounding::{bf16_stochastic, f16_stochastic, random_bits};
use kiln_abi::stats::{
    step_control_reference, STAT_GRAD_FACTOR, STAT_GRAD_NORM, STAT_GRAD_SUMSQ, STAT_LOSS,
    STAT_SKIP, STAT_SLOTS,
};
use kiln_abi::{
    AdamWArgs, AttentionShape, BackendExt, DType, IntoBResult, Reduce, Rounding, Unary,
};

/// Rounds like a 16-bit store of `dtype`.
fn round(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

#[test]
fn sixteen_bit_operands_compute_in_f32_and_round_outputs_once() {
    for dtype in [DType::BF16, DType::F16] {
        let (rows, cols) = (6, 40);
        let n = rows * cols;
        let mut rng = Rng::new(61);
        let mut be = backend(2);
        let (xi, x) = upload_as(&mut be, dtype, &rng.vec(n, 2.0));
        let (yi, y) = upload_as(&mut be, dtype, &rng.vec(n, 2.0));
        // The f32 op on the held (already rounded) values, then rounded once.
        let fx = upload(&mut be, &x);
        let fy = upload(&mut be, &y);
        let f_out = zeros(&mut be, n);
        let h_out = be.alloc_buf(dtype, n).unwrap();
        be.add(f_out, fx, fy, n).ok_or_err().unwrap();
        be.add(h_out, xi, yi, n).ok_or_err().unwrap();
        let want: Vec<f32> = download(&mut be, f_out)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, h_out), want, "{dtype} add");
        be.unary_forward(Unary::Silu, f_out, fx, n)
            .ok_or_err()
            .unwrap();
        be.unary_forward(Unary::Silu, h_out, xi, n)
            .ok_or_err()
            .unwrap();
        let want: Vec<f32> = download(&mut be, f_out)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, h_out), want, "{dtype} silu");

        // A 16-bit gradient accumulates: widened, += in f32, narrowed.
        let (gi, g) = upload_as(&mut be, dtype, &rng.vec(n, 1.0));
        let (di, d0) = upload_as(&mut be, dtype, &rng.vec(n, 1.0));
        let (fg, fd) = (upload(&mut be, &g), upload(&mut be, &d0));
        be.unary_backward(Unary::Gelu, fd, fx, fg, n)
            .ok_or_err()
            .unwrap();
        be.unary_backward(Unary::Gelu, di, xi, gi, n)
            .ok_or_err()
            .unwrap();
        let want: Vec<f32> = download(&mut be, fd)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, di), want, "{dtype} gelu backward");

        // Matmul, layernorm, attention: 16-bit in, 16-bit out, against f32 on the same values.
        let w = upload_as(&mut be, dtype, &rng.vec(cols * cols, 0.3));
        let fw = upload(&mut be, &w.1);
        let mm = |out, a, b| mm_args(out, a, b, None, (rows, cols, cols), false, true, 1.0, 0.0);
        be.matmul(mm(f_out, fx, fw)).ok_or_err().unwrap();
        be.matmul(mm(h_out, xi, w.0)).ok_or_err().unwrap();
        let want: Vec<f32> = download(&mut be, f_out)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, h_out), want, "{dtype} matmul");

        let s = AttentionShape {
            b: 2,
            t: 3,
            nh: 2,
            nkv: 1,
            hd: 10,
            window: 0,
        }; // row 40 = 4 heads * 10
        let ws = zeros(&mut be, 2 * 2 * 3 * 3);
        let (fo, ho) = (zeros(&mut be, 6 * 20), be.alloc_buf(dtype, 6 * 20).unwrap());
        attn_fwd(&mut be, fo, ws, fx, None, s).ok_or_err().unwrap();
        attn_fwd(&mut be, ho, ws, xi, None, s).ok_or_err().unwrap();
        let want: Vec<f32> = download(&mut be, fo)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, ho), want, "{dtype} attention");

        let (lw, lb) = (
            upload(&mut be, &vec![1.5; cols]),
            upload(&mut be, &vec![0.25; cols]),
        );
        let (m, rs) = (zeros(&mut be, rows), zeros(&mut be, rows));
        layernorm_fwd(&mut be, f_out, m, rs, fx, lw, lb, rows, cols, 1e-5)
            .ok_or_err()
            .unwrap();
        layernorm_fwd(&mut be, h_out, m, rs, xi, lw, lb, rows, cols, 1e-5)
            .ok_or_err()
            .unwrap();
        let want: Vec<f32> = download(&mut be, f_out)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, h_out), want, "{dtype} layernorm");

        // Cross-entropy from 16-bit logits, in place.
        let tg = be.from_u32(&[1, 5, 39, 0, 2, 7]).unwrap();
        let (loss, lse, dl) = (
            zeros(&mut be, rows),
            zeros(&mut be, rows),
            upload(&mut be, &[1.0; 6]),
        );
        be.crossentropy_forward(loss, lse, xi, tg, rows, cols, cols)
            .ok_or_err()
            .unwrap();
        let want_l = r::logsumexp_rows(&to_f64(&x), rows, cols, cols);
        assert_close("lse", &download(&mut be, lse), &want_l, 1e-6, 1e-6);
        be.crossentropy_backward(xi, xi, lse, tg, dl, rows, cols, cols)
            .ok_or_err()
            .unwrap();
        be.crossentropy_backward(fx, fx, lse, tg, dl, rows, cols, cols)
            .ok_or_err()
            .unwrap();
        let want: Vec<f32> = download(&mut be, fx)
            .iter()
            .map(|&v| round(dtype, v))
            .collect();
        assert_eq!(widened(&mut be, xi), want, "{dtype} crossentropy backward");
    }
}

#[test]
fn casts_round_nearest_even_or_stochastically_as_the_reference() {
    let n = 40_000; // several parallel chunks: element indices are global
    let mut rng = Rng::new(62);
    let x = rng.vec(n, 300.0);
    let mut be = backend(3);
    let xi = upload(&mut be, &x);
    let (b, h) = (
        be.alloc_buf(DType::BF16, n).unwrap(),
        be.alloc_buf(DType::F16, n).unwrap(),
    );
    let seed = 12345;
    be.cast(b, xi, n, Rounding::Stochastic, seed)
        .ok_or_err()
        .unwrap();
    be.cast(h, xi, n, Rounding::Stochastic, seed)
        .ok_or_err()
        .unwrap();
    let want_b: Vec<bf16> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| bf16_stochastic(v, random_bits(seed, i as u64)))
        .collect();
    let want_h: Vec<f16> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| f16_stochastic(v, random_bits(seed, i as u64)))
        .collect();
    assert_eq!(be.download_bf16(b).unwrap(), want_b);
    assert_eq!(be.download_f16(h).unwrap(), want_h);
    // Another seed gives other bits; nearest-even is half's rounding.
    be.cast(b, xi, n, Rounding::Stochastic, seed + 1)
        .ok_or_err()
        .unwrap();
    assert_ne!(be.download_bf16(b).unwrap(), want_b);
    be.cast(b, xi, n, Rounding::NearestEven, 0)
        .ok_or_err()
        .unwrap();
    let ne: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(be.download_bf16(b).unwrap(), ne);
    // A view casts only its elements, with indices counted from the view.
    let v = be.view_of(xi, 100, 50).unwrap();
    let bv = be.alloc_buf(DType::BF16, 50).unwrap();
    be.cast(bv, v, 50, Rounding::Stochastic, seed)
        .ok_or_err()
        .unwrap();
    let want: Vec<bf16> = (0..50)
        .map(|i| bf16_stochastic(x[100 + i], random_bits(seed, i as u64)))
        .collect();
    assert_eq!(be.download_bf16(bv).unwrap(), want);
}

#[test]
fn reduce_and_step_control_follow_the_reference() {
    let n = 50_000;
    let mut rng = Rng::new(63);
    let x = rng.vec(n, 2.0);
    let mut be = backend(2);
    let (xi, xb) = upload_as(&mut be, DType::BF16, &x);
    let stats = upload(&mut be, &[0.5, 1.0, 9.0, 9.0, 9.0, 0.0, 0.0, 0.0, -7.0]);
    let block = be.view_of(stats, 0, STAT_SLOTS).unwrap();
    be.reduce(Reduce::Sum, block, STAT_LOSS, xi, n)
        .ok_or_err()
        .unwrap();
    be.reduce(Reduce::SumSquares, block, STAT_GRAD_SUMSQ, xi, n)
        .ok_or_err()
        .unwrap();
    be.reduce(Reduce::MaxAbs, block, 5, xi, n)
        .ok_or_err()
        .unwrap();
    let sum: f64 = xb.iter().map(|&v| v as f64).sum();
    let ss: f64 = xb.iter().map(|&v| v as f64 * v as f64).sum();
    let got = download(&mut be, stats);
    assert!(
        (got[STAT_LOSS] as f64 - (0.5 + sum)).abs() < 1e-3,
        "{} vs {}",
        got[0],
        0.5 + sum
    );
    assert_eq!(got[STAT_GRAD_SUMSQ], 1.0 + ss as f32);
    assert_eq!(got[5], xb.iter().fold(0f32, |m, v| m.max(v.abs())));
    assert_eq!(got[8], -7.0, "past the block is untouched");
    for (max_norm, inv) in [(0.0, 1.0), (1.0, 0.5), (1e9, 0.25)] {
        be.step_control(block, max_norm, inv).ok_or_err().unwrap();
        let s = download(&mut be, stats);
        let (f, skip, norm) =
            step_control_reference(s[STAT_LOSS], s[STAT_GRAD_SUMSQ], max_norm, inv);
        assert_eq!(
            [s[STAT_GRAD_FACTOR], s[STAT_SKIP], s[STAT_GRAD_NORM]],
            [f, skip, norm]
        );
        assert_eq!(skip, 0.0);
    }
    // A NaN anywhere: MaxAbs is NaN, the step is skipped.
    let mut bad = x.clone();
    bad[n - 3] = f32::NAN;
    be.upload_f32(stats, &[0.0; 9]).unwrap();
    let bi = upload(&mut be, &bad);
    be.reduce(Reduce::MaxAbs, block, 5, bi, n)
        .ok_or_err()
        .unwrap();
    be.reduce(Reduce::SumSquares, block, STAT_GRAD_SUMSQ, bi, n)
        .ok_or_err()
        .unwrap();
    be.step_control(block, 1.0, 1.0).ok_or_err().unwrap();
    let s = download(&mut be, stats);
    assert!(s[5].is_nan());
    assert_eq!((s[STAT_SKIP], s[STAT_GRAD_FACTOR]), (1.0, 0.0));
}

fn adamw_args(
    params: kiln_abi::BufId,
    grads: kiln_abi::BufId,
    m: kiln_abi::BufId,
    v: kiln_abi::BufId,
    n: usize,
) -> AdamWArgs {
    AdamWArgs {
        params,
        grads,
        m,
        v,
        params_16: None.into(),
        rounding: Rounding::NearestEven,
        seed: 0,
        n,
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 0.5,
        control: None.into(),
        step: 2,
    }
}

#[test]
fn adamw_control_skips_or_scales_and_writes_the_16_bit_copy() {
    let n = 20_000;
    let mut rng = Rng::new(64);
    let (p0, g) = (rng.vec(n, 1.0), rng.vec(n, 2.0));
    let (m0, v0): (Vec<f32>, Vec<f32>) = (
        rng.vec(n, 0.1),
        rng.vec(n, 0.1).iter().map(|x| x.abs()).collect(),
    );
    let mut be = backend(2);
    let setup = |be: &mut kiln_abi::BackendBox| (upload(be, &p0), upload(be, &m0), upload(be, &v0));

    let factor = 0.37f32;
    // With control (factor, no skip), 16-bit grads, and a bf16 copy.
    let (gi, gh) = upload_as(&mut be, DType::BF16, &g);
    let control = upload(&mut be, &[0.0, 0.0, factor, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let (pi, mi, vi) = setup(&mut be);
    let p16 = be.alloc_buf(DType::BF16, n).unwrap();
    let args = AdamWArgs {
        control: Some(control).into(),
        params_16: Some(p16).into(),
        rounding: Rounding::Stochastic,
        seed: 77,
        ..adamw_args(pi, gi, mi, vi, n)
    };
    be.adamw(args).ok_or_err().unwrap();
    let got = download(&mut be, pi);
    // grads went through bf16: compare with the f64 formula on the held values.
    let (mut p, mut m, mut v) = (to_f64(&p0), to_f64(&m0), to_f64(&v0));
    let g64: Vec<f64> = gh.iter().map(|&x| x as f64 * 0.5 * factor as f64).collect();
    r::adamw(&mut p, &g64, &mut m, &mut v, 1e-2, 0.9, 0.95, 1e-8, 0.1, 2);
    assert_close("params", &got, &p, 1e-5, 1e-6);
    let want16: Vec<bf16> = got
        .iter()
        .enumerate()
        .map(|(i, &x)| bf16_stochastic(x, random_bits(77, i as u64)))
        .collect();
    assert_eq!(
        be.download_bf16(p16).unwrap(),
        want16,
        "params_16 = stochastic(params)"
    );

    // The skip flag: nothing is written.
    be.upload_f32(control, &[f32::NAN, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
        .unwrap();
    let before = (
        download(&mut be, pi),
        download(&mut be, mi),
        be.download_bf16(p16).unwrap(),
    );
    be.adamw(args).ok_or_err().unwrap();
    let after = (
        download(&mut be, pi),
        download(&mut be, mi),
        be.download_bf16(p16).unwrap(),
    );
    assert_eq!(before, after);
}
