//! The ops ABI generation 2 added (RMSNorm and the fused residual, SiLU,
//! sigmoid, ReLU, SwiGLU, RoPE, grouped-query and windowed attention, the
//! GELU matmul epilogue and leading dimensions, softmax with lse, the MoE
//! routing ops) against f64 references, and their backwards against central
//! differences. Backward ops accumulate, so gradients start non-zero.

mod common;

use common::reference as r;
use common::*;
use kiln_abi::{
    AttentionShape, BackendExt, Epilogue, IntoBResult, MatmulArgs, NormArgs, NormBackwardArgs,
    NormKind, RopeArgs, Unary,
};

#[test]
fn rmsnorm_with_fused_residual_forward_and_gradients() {
    let (rows, cols, eps) = (20, 13, 1e-5f32); // two tasks of 16 rows
    let mut rng = Rng::new(41);
    let (x, res) = (rng.vec(rows * cols, 2.0), rng.vec(rows * cols, 1.0));
    let w: Vec<f32> = rng.vec(cols, 0.5).iter().map(|v| v + 1.0).collect();
    let dout = rng.vec(rows * cols, 1.0);
    let (dx0, dw0) = (rng.vec(rows * cols, 1.0), rng.vec(cols, 1.0));
    let mut be = backend(2);
    let (xi, ri, wi) = (
        upload(&mut be, &x),
        upload(&mut be, &res),
        upload(&mut be, &w),
    );
    let (out, rstd, ro) = (
        zeros(&mut be, rows * cols),
        zeros(&mut be, rows),
        zeros(&mut be, rows * cols),
    );
    let args = NormArgs {
        kind: NormKind::RmsNorm,
        out,
        mean: None.into(),
        rstd,
        inp: xi,
        weight: wi,
        bias: None.into(),
        residual: Some(ri).into(),
        residual_out: Some(ro).into(),
        rows,
        cols,
        eps,
    };
    be.norm_forward(args).ok_or_err().unwrap();
    let sum: Vec<f32> = x.iter().zip(&res).map(|(a, b)| a + b).collect();
    assert_eq!(download(&mut be, ro), sum, "residual_out = inp + residual");
    let (want, want_rstd) = r::rmsnorm(&to_f64(&sum), &to_f64(&w), rows, cols, eps as f64);
    assert_close("out", &download(&mut be, out), &want, 1e-5, 1e-5);
    assert_close("rstd", &download(&mut be, rstd), &want_rstd, 1e-5, 1e-6);

    let (dxi, dwi, gi) = (
        upload(&mut be, &dx0),
        upload(&mut be, &dw0),
        upload(&mut be, &dout),
    );
    let back = NormBackwardArgs {
        kind: NormKind::RmsNorm,
        dinp: dxi,
        dweight: Some(dwi).into(),
        dbias: None.into(),
        dout: gi,
        inp: ro,
        weight: wi,
        mean: None.into(),
        rstd,
        rows,
        cols,
    };
    be.norm_backward(back).ok_or_err().unwrap();
    let (s64, w64, g) = (to_f64(&sum), to_f64(&w), to_f64(&dout));
    let loss = |x: &[f64], w: &[f64]| weighted_sum(&g, &r::rmsnorm(x, w, rows, cols, eps as f64).0);
    let gx = numeric_grad(&s64, |x| loss(x, &w64));
    let gw = numeric_grad(&w64, |w| loss(&s64, w));
    assert_close(
        "dinp",
        &download(&mut be, dxi),
        &plus(&dx0, &gx),
        1e-4,
        1e-4,
    );
    assert_close(
        "dweight",
        &download(&mut be, dwi),
        &plus(&dw0, &gw),
        1e-4,
        1e-4,
    );

    // Without dweight only dinp moves (frozen weight).
    let dxi2 = upload(&mut be, &dx0);
    let back = NormBackwardArgs {
        dinp: dxi2,
        dweight: None.into(),
        ..back
    };
    be.norm_backward(back).ok_or_err().unwrap();
    assert_eq!(download(&mut be, dxi2), download(&mut be, dxi));
}

#[test]
fn layernorm_without_bias_and_fused_residual_equals_the_unfused_ops() {
    let (rows, cols) = (7, 24);
    let mut rng = Rng::new(42);
    let (x, res, w) = (
        rng.vec(rows * cols, 1.0),
        rng.vec(rows * cols, 1.0),
        rng.vec(cols, 1.0),
    );
    let mut be = backend(2);
    let (xi, ri, wi) = (
        upload(&mut be, &x),
        upload(&mut be, &res),
        upload(&mut be, &w),
    );
    let zero_b = zeros(&mut be, cols);
    let n = rows * cols;
    let (sum, o1, m1, s1) = (
        zeros(&mut be, n),
        zeros(&mut be, n),
        zeros(&mut be, rows),
        zeros(&mut be, rows),
    );
    be.add(sum, xi, ri, n).ok_or_err().unwrap();
    layernorm_fwd(&mut be, o1, m1, s1, sum, wi, zero_b, rows, cols, 1e-5)
        .ok_or_err()
        .unwrap();
    let (ro, o2, m2, s2) = (
        zeros(&mut be, n),
        zeros(&mut be, n),
        zeros(&mut be, rows),
        zeros(&mut be, rows),
    );
    let args = NormArgs {
        kind: NormKind::LayerNorm,
        out: o2,
        mean: Some(m2).into(),
        rstd: s2,
        inp: xi,
        weight: wi,
        bias: None.into(),
        residual: Some(ri).into(),
        residual_out: Some(ro).into(),
        rows,
        cols,
        eps: 1e-5,
    };
    be.norm_forward(args).ok_or_err().unwrap();
    for (a, b) in [(sum, ro), (o1, o2), (m1, m2), (s1, s2)] {
        assert_eq!(download(&mut be, a), download(&mut be, b));
    }
}

fn unary_ref(kind: Unary, x: f64) -> f64 {
    match kind {
        Unary::Gelu => r::gelu(x),
        Unary::Silu => r::silu(x),
        Unary::Sigmoid => r::sigmoid(x),
        Unary::Relu => x.max(0.0),
    }
}

#[test]
fn unary_activations_forward_and_gradients() {
    let n = 40_000; // several chunks
    let mut rng = Rng::new(43);
    let x: Vec<f32> = rng
        .vec(n, 8.0)
        .into_iter()
        .map(|v| if v.abs() < 1e-3 { 0.5 } else { v })
        .collect();
    let (dout, d0) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    let mut be = backend(2);
    let (xi, gi) = (upload(&mut be, &x), upload(&mut be, &dout));
    for kind in [Unary::Gelu, Unary::Silu, Unary::Sigmoid, Unary::Relu] {
        let (out, di) = (zeros(&mut be, n), upload(&mut be, &d0));
        be.unary_forward(kind, out, xi, n).ok_or_err().unwrap();
        let want: Vec<f64> = x.iter().map(|&v| unary_ref(kind, v as f64)).collect();
        assert_close(
            &format!("{kind:?}"),
            &download(&mut be, out),
            &want,
            1e-5,
            1e-6,
        );
        be.unary_backward(kind, di, xi, gi, n).ok_or_err().unwrap();
        let h = 1e-6;
        let grad: Vec<f64> = x
            .iter()
            .zip(&dout)
            .map(|(&v, &g)| {
                let v = v as f64;
                (unary_ref(kind, v + h) - unary_ref(kind, v - h)) / (2.0 * h) * g as f64
            })
            .collect();
        assert_close(
            &format!("d {kind:?}"),
            &download(&mut be, di),
            &plus(&d0, &grad),
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn swiglu_forward_and_gradient() {
    let (rows, f) = (6, 9);
    let mut rng = Rng::new(44);
    let x = rng.vec(rows * 2 * f, 3.0);
    let (dout, d0) = (rng.vec(rows * f, 1.0), rng.vec(rows * 2 * f, 1.0));
    let fwd = |x: &[f64]| -> Vec<f64> {
        (0..rows * f)
            .map(|i| {
                let (r_, j) = (i / f, i % f);
                r::silu(x[r_ * 2 * f + j]) * x[r_ * 2 * f + f + j]
            })
            .collect()
    };
    let mut be = backend(2);
    let (xi, out, gi, di) = (
        upload(&mut be, &x),
        zeros(&mut be, rows * f),
        upload(&mut be, &dout),
        upload(&mut be, &d0),
    );
    be.swiglu_forward(out, xi, rows, f).ok_or_err().unwrap();
    assert_close(
        "swiglu",
        &download(&mut be, out),
        &fwd(&to_f64(&x)),
        1e-5,
        1e-6,
    );
    be.swiglu_backward(di, xi, gi, rows, f).ok_or_err().unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&x), |x| weighted_sum(&g, &fwd(x)));
    assert_close(
        "dinp",
        &download(&mut be, di),
        &plus(&d0, &grad),
        1e-4,
        1e-5,
    );
}

#[test]
fn rope_rotates_the_chosen_heads_and_inverse_undoes_it() {
    // The k part of a GQA qkv row: 3 query heads, then 1 key head, then 1 value head.
    let (b, t, hd, max_t) = (2, 5, 6, 9);
    let width = 5 * hd;
    let (col_offset, n_heads) = (3 * hd, 1);
    let half = hd / 2;
    let mut rng = Rng::new(45);
    let x = rng.vec(b * t * width, 1.0);
    let theta: Vec<f64> = (0..max_t * half)
        .map(|i| (i / half) as f64 * 10000f64.powf(-2.0 * (i % half) as f64 / hd as f64))
        .collect();
    let cos: Vec<f32> = theta.iter().map(|a| a.cos() as f32).collect();
    let sin: Vec<f32> = theta.iter().map(|a| a.sin() as f32).collect();
    let positions: Vec<u32> = vec![0, 1, 2, 0, 1, 4, 5, 6, 7, 8];
    let mut be = backend(2);
    let (bi, ci, si) = (
        upload(&mut be, &x),
        upload(&mut be, &cos),
        upload(&mut be, &sin),
    );
    let pi = be.from_u32(&positions).unwrap();
    let mut args = RopeArgs {
        buf: bi,
        cos: ci,
        sin: si,
        positions: Some(pi).into(),
        pos0: 0,
        b,
        t,
        row_width: width,
        col_offset,
        n_heads,
        head_dim: hd,
        inverse: false,
    };
    be.rope(args).ok_or_err().unwrap();
    let pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
    let want = r::rope(
        &to_f64(&x),
        &to_f64(&cos),
        &to_f64(&sin),
        &pos,
        width,
        col_offset,
        n_heads,
        hd,
        false,
    );
    let got = download(&mut be, bi);
    assert_close("rope", &got, &want, 1e-6, 1e-6);
    // Only the chosen head moved.
    for (i, (&g, &x0)) in got.iter().zip(&x).enumerate() {
        let col = i % width;
        if !(col_offset..col_offset + hd).contains(&col) {
            assert_eq!(g, x0, "column {col}");
        }
    }
    // The backward of a rotation is the inverse rotation: applied to the
    // gradient it matches the transpose of the forward's Jacobian.
    let dout = rng.vec(b * t * width, 1.0);
    let di = upload(&mut be, &dout);
    args.buf = di;
    args.inverse = true;
    be.rope(args).ok_or_err().unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&x), |x| {
        weighted_sum(
            &g,
            &r::rope(
                x,
                &to_f64(&cos),
                &to_f64(&sin),
                &pos,
                width,
                col_offset,
                n_heads,
                hd,
                false,
            ),
        )
    });
    assert_close("d rope", &download(&mut be, di), &grad, 1e-5, 1e-6);
    // pos0 + t, no positions table: rows 0..5 and 1..6 of the table.
    args.buf = bi;
    args.positions = None.into();
    args.pos0 = 4;
    args.inverse = false;
    be.upload_f32(bi, &x).unwrap();
    be.rope(args).ok_or_err().unwrap();
    let pos: Vec<usize> = (0..b * t).map(|i| 4 + i % t).collect();
    let want = r::rope(
        &to_f64(&x),
        &to_f64(&cos),
        &to_f64(&sin),
        &pos,
        width,
        col_offset,
        n_heads,
        hd,
        false,
    );
    assert_close("rope pos0", &download(&mut be, bi), &want, 1e-6, 1e-6);
    args.pos0 = 5; // 5 + 5 > 9 rows
    let err = be.rope(args).ok_or_err().unwrap_err().0;
    assert!(err.contains("rope") && err.contains("cos"), "{err}");
}

fn gqa_case(s: AttentionShape, segments: Option<&[u32]>, seed: u64, check_grad: bool) {
    let row = (s.nh + 2 * s.nkv) * s.hd;
    let n_out = s.b * s.t * s.nh * s.hd;
    let mut rng = Rng::new(seed);
    let qkv = rng.vec(s.b * s.t * row, 1.5);
    let dout = rng.vec(n_out, 1.0);
    let dqkv0 = rng.vec(s.b * s.t * row, 1.0);
    let mut be = backend(2);
    let qi = upload(&mut be, &qkv);
    let ws_len = be.attention_workspace_len(s).unwrap();
    let (out, ws) = (zeros(&mut be, n_out), zeros(&mut be, ws_len));
    let seg = segments.map(|v| be.from_u32(v).unwrap());
    attn_fwd(&mut be, out, ws, qi, seg, s).ok_or_err().unwrap();
    let (want_out, _) = r::attention_gqa(
        &to_f64(&qkv),
        s.b,
        s.t,
        s.nh,
        s.nkv,
        s.hd,
        s.window,
        segments,
    );
    assert_close("out", &download(&mut be, out), &want_out, 1e-5, 1e-5);
    if !check_grad {
        return;
    }
    let (di, gi) = (upload(&mut be, &dqkv0), upload(&mut be, &dout));
    attn_bwd(&mut be, di, gi, qi, out, ws, seg, s)
        .ok_or_err()
        .unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&qkv), |x| {
        weighted_sum(
            &g,
            &r::attention_gqa(x, s.b, s.t, s.nh, s.nkv, s.hd, s.window, segments).0,
        )
    });
    assert_close(
        "dqkv",
        &download(&mut be, di),
        &plus(&dqkv0, &grad),
        1e-4,
        1e-4,
    );
}

#[test]
fn grouped_query_windowed_attention_forward_and_gradients() {
    let s = AttentionShape {
        b: 2,
        t: 6,
        nh: 4,
        nkv: 2,
        hd: 3,
        window: 0,
    };
    gqa_case(s, None, 46, true);
    gqa_case(AttentionShape { window: 3, ..s }, None, 47, true);
    gqa_case(
        AttentionShape {
            nkv: 1,
            window: 2,
            ..s
        },
        None,
        48,
        true,
    );
    // Packed segments (one reused id: masked key by key) with a window.
    let seg = [0, 0, 1, 1, 1, 0, 4, 4, 4, 4, 4, 4];
    gqa_case(AttentionShape { window: 2, ..s }, Some(&seg), 49, true);
    // Several query blocks (T > 64) and a window narrower than a block.
    gqa_case(
        AttentionShape {
            b: 1,
            t: 90,
            nh: 2,
            nkv: 1,
            hd: 4,
            window: 20,
        },
        None,
        50,
        false,
    );
}

#[test]
fn kv_cache_with_grouped_query_and_window_equals_full_attention() {
    let s = AttentionShape {
        b: 2,
        t: 11,
        nh: 4,
        nkv: 2,
        hd: 3,
        window: 4,
    };
    let t_max = 13;
    let row = (s.nh + 2 * s.nkv) * s.hd;
    let c_out = s.nh * s.hd;
    let mut rng = Rng::new(51);
    let qkv = rng.vec(s.b * s.t * row, 1.5);
    let (full, _) = r::attention_gqa(&to_f64(&qkv), s.b, s.t, s.nh, s.nkv, s.hd, s.window, None);
    let mut be = backend(2);
    let n_cache = s.b * s.nkv * t_max * s.hd;
    let (kc, vc) = (zeros(&mut be, n_cache), zeros(&mut be, n_cache));
    let mut t_past = 0;
    for t_new in [5, 1, 5] {
        let mut piece = Vec::new();
        for b in 0..s.b {
            piece.extend_from_slice(
                &qkv[(b * s.t + t_past) * row..(b * s.t + t_past + t_new) * row],
            );
        }
        let (pi, po) = (upload(&mut be, &piece), zeros(&mut be, s.b * t_new * c_out));
        kv_fwd(
            &mut be,
            po,
            pi,
            kc,
            vc,
            AttentionShape { t: t_new, ..s },
            t_past,
            t_max,
        )
        .ok_or_err()
        .unwrap();
        let got = download(&mut be, po);
        for b in 0..s.b {
            let want = &full[(b * s.t + t_past) * c_out..(b * s.t + t_past + t_new) * c_out];
            assert_close(
                "kv out",
                &got[b * t_new * c_out..(b + 1) * t_new * c_out],
                want,
                1e-5,
                1e-6,
            );
        }
        t_past += t_new;
    }
}

#[test]
fn matmul_gelu_epilogue_and_leading_dimensions() {
    // out = gelu(a @ w^T + bias), written into the middle columns of a wider
    // buffer (ldc) from a's columns 2.. of a wider one (lda).
    let (m, n, k, lda, ldc) = (70, 33, 20, 25, 40);
    let mut rng = Rng::new(52);
    let a_wide = rng.vec(m * lda, 1.0);
    let w = rng.vec(n * k, 1.0);
    let bias = rng.vec(n, 1.0);
    let mut be = backend(2);
    let (ai, wi, bi) = (
        upload(&mut be, &a_wide),
        upload(&mut be, &w),
        upload(&mut be, &bias),
    );
    let (out_wide, pre_wide) = (
        upload(&mut be, &vec![7.0; m * ldc]),
        zeros(&mut be, m * ldc),
    );
    let av = be.view_of(ai, 2, m * lda - 2).unwrap();
    let ov = be.view_of(out_wide, 5, m * ldc - 5).unwrap();
    let pv = be.view_of(pre_wide, 5, m * ldc - 5).unwrap();
    let args = MatmulArgs {
        bias: Some(bi).into(),
        trans_b: true,
        lda,
        ldc,
        epilogue: Epilogue::Gelu,
        pre_act: Some(pv).into(),
        ..MatmulArgs::new(ov, av, wi, m, n, k)
    };
    be.matmul(args).ok_or_err().unwrap();
    let a: Vec<f64> = (0..m * k)
        .map(|i| a_wide[(i / k) * lda + 2 + i % k] as f64)
        .collect();
    let pre = r::matmul(
        &a,
        &to_f64(&w),
        Some(&to_f64(&bias)),
        &[],
        m,
        n,
        k,
        false,
        true,
        1.0,
        0.0,
    );
    let (got_o, got_p) = (download(&mut be, out_wide), download(&mut be, pre_wide));
    for i in 0..m {
        for j in 0..ldc {
            let (o, p) = (got_o[i * ldc + j], got_p[i * ldc + j]);
            if (5..5 + n).contains(&j) {
                let want = pre[i * n + j - 5];
                assert!(
                    (p as f64 - want).abs() < 1e-4,
                    "pre [{i},{j}]: {p} vs {want}"
                );
                assert!((o as f64 - r::gelu(want)).abs() < 1e-4, "out [{i},{j}]");
            } else {
                assert_eq!(o, 7.0, "out [{i},{j}] outside the block is untouched");
            }
        }
    }
}

#[test]
fn softmax_with_lse_forward_and_gradient() {
    let (rows, cols) = (5, 8);
    let mut rng = Rng::new(53);
    let x = rng.vec(rows * cols, 3.0);
    let (dout, dlse, d0) = (
        rng.vec(rows * cols, 1.0),
        rng.vec(rows, 1.0),
        rng.vec(rows * cols, 1.0),
    );
    let mut be = backend(2);
    let (xi, out, lse) = (
        upload(&mut be, &x),
        zeros(&mut be, rows * cols),
        zeros(&mut be, rows),
    );
    be.softmax_forward(out, Some(lse).into(), xi, rows, cols)
        .ok_or_err()
        .unwrap();
    let (want, want_lse) = r::softmax(&to_f64(&x), rows, cols);
    assert_close("softmax", &download(&mut be, out), &want, 1e-5, 1e-7);
    assert_close("lse", &download(&mut be, lse), &want_lse, 1e-6, 1e-6);
    let (gi, li, di) = (
        upload(&mut be, &dout),
        upload(&mut be, &dlse),
        upload(&mut be, &d0),
    );
    be.softmax_backward(di, out, gi, Some(li).into(), rows, cols)
        .ok_or_err()
        .unwrap();
    let (g, gl) = (to_f64(&dout), to_f64(&dlse));
    let grad = numeric_grad(&to_f64(&x), |x| {
        let (y, l) = r::softmax(x, rows, cols);
        weighted_sum(&g, &y) + weighted_sum(&gl, &l)
    });
    assert_close(
        "dinp",
        &download(&mut be, di),
        &plus(&d0, &grad),
        1e-4,
        1e-5,
    );
}

#[test]
fn topk_selects_with_bias_ties_to_the_lower_column_and_scatters_back() {
    let (rows, cols, k) = (3, 6, 3);
    let scores = vec![
        0.1, 0.5, 0.5, 0.2, 0.9, 0.5, // ties between columns 1, 2 and 5
        1.0, 2.0, 3.0, 4.0, 5.0, 6.0, //
        -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
    ];
    let bias = vec![0.0, 0.0, 0.0, 0.0, -1.0, 0.0]; // pushes column 4 out in row 0, ties it with 3 in row 1
    let mut be = backend(2);
    let (si, bi) = (upload(&mut be, &scores), upload(&mut be, &bias));
    let (vals, idx) = (
        zeros(&mut be, rows * k),
        be.alloc_buf(kiln_abi::DType::U32, rows * k).unwrap(),
    );
    be.topk_forward(vals, idx, si, Some(bi).into(), rows, cols, k)
        .ok_or_err()
        .unwrap();
    assert_eq!(
        be.download_u32(idx).unwrap(),
        vec![1, 2, 5, 5, 3, 4, 0, 1, 2]
    );
    assert_eq!(
        download(&mut be, vals),
        vec![0.5, 0.5, 0.5, 6.0, 4.0, 5.0, -1.0, -1.0, -1.0]
    );
    // Without bias column 4 leads row 0; values are always the raw scores.
    be.topk_forward(vals, idx, si, None.into(), rows, cols, k)
        .ok_or_err()
        .unwrap();
    assert_eq!(be.download_u32(idx).unwrap()[..3], [4, 1, 2]);
    let dv = upload(&mut be, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let ds = upload(&mut be, &vec![0.5; rows * cols]);
    be.topk_backward(ds, dv, idx, rows, cols, k)
        .ok_or_err()
        .unwrap();
    let got = download(&mut be, ds);
    assert_eq!(got[..6], [0.5, 2.5, 3.5, 0.5, 1.5, 0.5]);
    assert_eq!(got[6..12], [0.5, 0.5, 0.5, 6.5, 5.5, 4.5]);
}

#[test]
fn normalize_rows_forward_and_gradient() {
    let (rows, cols) = (4, 5);
    let mut rng = Rng::new(54);
    let x: Vec<f32> = rng
        .vec(rows * cols, 1.0)
        .iter()
        .map(|v| v.abs() + 0.2)
        .collect();
    let (dout, d0) = (rng.vec(rows * cols, 1.0), rng.vec(rows * cols, 1.0));
    let fwd = |x: &[f64]| -> Vec<f64> {
        (0..rows * cols)
            .map(|i| x[i] / x[i / cols * cols..][..cols].iter().sum::<f64>())
            .collect()
    };
    let mut be = backend(2);
    let (xi, out, gi, di) = (
        upload(&mut be, &x),
        zeros(&mut be, rows * cols),
        upload(&mut be, &dout),
        upload(&mut be, &d0),
    );
    be.normalize_rows_forward(out, xi, rows, cols)
        .ok_or_err()
        .unwrap();
    assert_close(
        "normalize",
        &download(&mut be, out),
        &fwd(&to_f64(&x)),
        1e-6,
        1e-7,
    );
    be.normalize_rows_backward(di, xi, out, gi, rows, cols)
        .ok_or_err()
        .unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&x), |x| weighted_sum(&g, &fwd(x)));
    assert_close(
        "dinp",
        &download(&mut be, di),
        &plus(&d0, &grad),
        1e-4,
        1e-5,
    );
}

#[test]
fn gather_scatter_rows_dot_and_counts() {
    let (e, n, cols) = (4, 7, 3);
    let mut rng = Rng::new(55);
    let src = rng.vec(e * cols, 1.0);
    let idx: Vec<u32> = vec![2, 0, 2, 3, 2, 1, 0];
    let w = rng.vec(n, 1.0);
    let mut be = backend(2);
    let (si, ii, wi) = (
        upload(&mut be, &src),
        be.from_u32(&idx).unwrap(),
        upload(&mut be, &w),
    );
    let out = zeros(&mut be, n * cols);
    be.gather_rows(out, si, ii, n, cols).ok_or_err().unwrap();
    let gathered = download(&mut be, out);
    for (i, &r_) in idx.iter().enumerate() {
        assert_eq!(
            gathered[i * cols..][..cols],
            src[r_ as usize * cols..][..cols]
        );
    }
    // Weighted scatter-add, summed in order of i, into a non-zero dst.
    let d0 = rng.vec(e * cols, 1.0);
    let di = upload(&mut be, &d0);
    be.scatter_add_rows(di, out, ii, Some(wi).into(), n, cols)
        .ok_or_err()
        .unwrap();
    let mut want = d0.clone();
    for (i, &r_) in idx.iter().enumerate() {
        for j in 0..cols {
            want[r_ as usize * cols + j] += w[i] * gathered[i * cols + j];
        }
    }
    assert_eq!(
        download(&mut be, di),
        want,
        "same order of additions, same bits"
    );
    // The gather's backward is the unweighted scatter-add: finite differences.
    let dout = rng.vec(n * cols, 1.0);
    let (gi, ds) = (upload(&mut be, &dout), zeros(&mut be, e * cols));
    be.scatter_add_rows(ds, gi, ii, None.into(), n, cols)
        .ok_or_err()
        .unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&src), |s| {
        let y: Vec<f64> = (0..n * cols)
            .map(|p| s[idx[p / cols] as usize * cols + p % cols])
            .collect();
        weighted_sum(&g, &y)
    });
    assert_close("dsrc", &download(&mut be, ds), &grad, 1e-6, 1e-6);
    // rows_dot with and without a_indices accumulates.
    let b = rng.vec(n * cols, 1.0);
    let bi = upload(&mut be, &b);
    let acc = upload(&mut be, &vec![1.0; n]);
    be.rows_dot(acc, si, Some(ii).into(), bi, n, cols)
        .ok_or_err()
        .unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            1.0 + (0..cols)
                .map(|j| src[idx[i] as usize * cols + j] as f64 * b[i * cols + j] as f64)
                .sum::<f64>()
        })
        .collect();
    assert_close("rows_dot", &download(&mut be, acc), &want, 1e-6, 1e-6);
    let acc2 = zeros(&mut be, n);
    be.rows_dot(acc2, out, None.into(), bi, n, cols)
        .ok_or_err()
        .unwrap();
    assert_close(
        "rows_dot plain",
        &download(&mut be, acc2),
        &want.iter().map(|v| v - 1.0).collect::<Vec<_>>(),
        1e-6,
        1e-6,
    );
    let counts = upload(&mut be, &[1.0, 0.0, 0.0, 0.0]);
    be.index_counts(counts, ii, n, e).ok_or_err().unwrap();
    assert_eq!(download(&mut be, counts), vec![3.0, 1.0, 3.0, 1.0]);
    let bad = be.from_u32(&[0, 9]).unwrap();
    let err = be
        .gather_rows(out, si, bad, 2, cols)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(
        err.contains("gather_rows") && err.contains("index 9"),
        "{err}"
    );
}
