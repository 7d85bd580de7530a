//! Forward ops against f64 references, and every backward op against
//! central-difference gradients of the f64 reference forward. Backward ops
//! accumulate, so gradient buffers start non-zero and the check is
//! `grad_after == grad_before + reference_grad`.

mod common;

use common::reference as r;
use common::*;
use kiln_abi::{BackendExt, IntoBResult, RResult, Reduce, Unary};

#[test]
fn layernorm_forward_and_gradients() {
    let (rows, cols, eps) = (5, 19, 1e-5f32);
    let mut rng = Rng::new(1);
    let x = rng.vec(rows * cols, 2.0);
    let w: Vec<f32> = rng.vec(cols, 1.0).iter().map(|v| v + 1.0).collect();
    let b = rng.vec(cols, 0.5);
    let dout = rng.vec(rows * cols, 1.0);
    let (dx0, dw0, db0) = (
        rng.vec(rows * cols, 1.0),
        rng.vec(cols, 1.0),
        rng.vec(cols, 1.0),
    );

    let mut be = backend(2);
    let (xi, wi, bi) = (
        upload(&mut be, &x),
        upload(&mut be, &w),
        upload(&mut be, &b),
    );
    let (out, mean, rstd) = (
        zeros(&mut be, rows * cols),
        zeros(&mut be, rows),
        zeros(&mut be, rows),
    );
    layernorm_fwd(&mut be, out, mean, rstd, xi, wi, bi, rows, cols, eps)
        .ok_or_err()
        .unwrap();
    let (want, want_mean, want_rstd) = r::layernorm(
        &to_f64(&x),
        &to_f64(&w),
        &to_f64(&b),
        rows,
        cols,
        eps as f64,
    );
    assert_close("out", &download(&mut be, out), &want, 1e-5, 1e-5);
    assert_close("mean", &download(&mut be, mean), &want_mean, 1e-5, 1e-6);
    assert_close("rstd", &download(&mut be, rstd), &want_rstd, 1e-5, 1e-6);

    let (dxi, dwi, dbi, douti) = (
        upload(&mut be, &dx0),
        upload(&mut be, &dw0),
        upload(&mut be, &db0),
        upload(&mut be, &dout),
    );
    layernorm_bwd(
        &mut be, dxi, dwi, dbi, douti, xi, wi, mean, rstd, rows, cols,
    )
    .ok_or_err()
    .unwrap();

    let (x64, w64, b64, g) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dout));
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        weighted_sum(&g, &r::layernorm(x, w, b, rows, cols, eps as f64).0)
    };
    let gx = numeric_grad(&x64, |x| loss(x, &w64, &b64));
    let gw = numeric_grad(&w64, |w| loss(&x64, w, &b64));
    let gb = numeric_grad(&b64, |b| loss(&x64, &w64, b));
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
    assert_close(
        "dbias",
        &download(&mut be, dbi),
        &plus(&db0, &gb),
        1e-4,
        1e-4,
    );
}

#[test]
fn gelu_forward_and_gradient() {
    let n = 1000;
    let mut rng = Rng::new(2);
    let x = rng.vec(n, 6.0);
    let dout = rng.vec(n, 1.0);
    let d0 = rng.vec(n, 1.0);
    let mut be = backend(2);
    let (xi, out, gi, di) = (
        upload(&mut be, &x),
        zeros(&mut be, n),
        upload(&mut be, &dout),
        upload(&mut be, &d0),
    );
    be.unary_forward(Unary::Gelu, out, xi, n)
        .ok_or_err()
        .unwrap();
    let want: Vec<f64> = x.iter().map(|&v| r::gelu(v as f64)).collect();
    assert_close("gelu", &download(&mut be, out), &want, 1e-5, 1e-6);
    be.unary_backward(Unary::Gelu, di, xi, gi, n)
        .ok_or_err()
        .unwrap();
    let h = 1e-6;
    let grad: Vec<f64> = x
        .iter()
        .zip(&dout)
        .map(|(&v, &g)| (r::gelu(v as f64 + h) - r::gelu(v as f64 - h)) / (2.0 * h) * g as f64)
        .collect();
    assert_close(
        "dinp",
        &download(&mut be, di),
        &plus(&d0, &grad),
        1e-4,
        1e-5,
    );
}

/// Runs one backend matmul on f32 data and returns `out`.
#[allow(clippy::too_many_arguments)]
fn run_matmul(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    out0: &[f32],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
) -> Vec<f32> {
    let mut be = backend(2);
    let (ai, bi, oi) = (
        upload(&mut be, a),
        upload(&mut be, b),
        upload(&mut be, out0),
    );
    let bias = bias.map(|v| upload(&mut be, v));
    let args = mm_args(oi, ai, bi, bias, (m, n, k), ta, tb, alpha, beta);
    be.matmul(args).ok_or_err().unwrap();
    download(&mut be, oi)
}

#[test]
fn matmul_forward_all_transposes_bias_alpha_beta() {
    let mut rng = Rng::new(3);
    // Small shapes and one large enough to be split into parallel chunks.
    for &(m, n, k) in &[(3, 5, 4), (17, 9, 33), (600, 130, 40), (90, 700, 50)] {
        for ta in [false, true] {
            for tb in [false, true] {
                for (alpha, beta, with_bias) in
                    [(1.0, 0.0, false), (0.5, 1.0, true), (-2.0, 0.25, true)]
                {
                    let a = rng.vec(m * k, 1.0);
                    let b = rng.vec(k * n, 1.0);
                    let bias = rng.vec(n, 1.0);
                    let mut out0 = rng.vec(m * n, 1.0);
                    if beta == 0.0 {
                        out0[0] = f32::NAN; // beta = 0 must ignore old contents
                    }
                    let bias_opt = with_bias.then_some(bias.as_slice());
                    let got = run_matmul(&a, &b, bias_opt, &out0, m, n, k, ta, tb, alpha, beta);
                    let bias64 = to_f64(&bias);
                    let want = r::matmul(
                        &to_f64(&a),
                        &to_f64(&b),
                        with_bias.then_some(bias64.as_slice()),
                        &to_f64(&out0),
                        m,
                        n,
                        k,
                        ta,
                        tb,
                        alpha as f64,
                        beta as f64,
                    );
                    assert_close(
                        &format!("matmul {m}x{n}x{k} ta={ta} tb={tb} a={alpha} b={beta}"),
                        &got,
                        &want,
                        1e-5,
                        1e-5,
                    );
                }
            }
        }
    }
}

/// The model computes linear-layer gradients with the matmul op itself
/// (dinp = dout @ W, dW += dout^T @ inp, dbias += sum dout); check those
/// compositions against finite differences of `out = inp @ W^T + bias`.
#[test]
fn matmul_gradients_via_transposed_products_and_bias_backward() {
    let (m, n, k) = (7, 5, 6);
    let mut rng = Rng::new(4);
    let inp = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    let bias = rng.vec(n, 1.0);
    let dout = rng.vec(m * n, 1.0);
    let (dinp0, dw0, db0) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0));
    let (i64_, w64, b64, g) = (to_f64(&inp), to_f64(&w), to_f64(&bias), to_f64(&dout));
    let fwd = |inp: &[f64], w: &[f64], b: &[f64]| {
        weighted_sum(
            &g,
            &r::matmul(inp, w, Some(b), &[], m, n, k, false, true, 1.0, 0.0),
        )
    };
    let g_inp = numeric_grad(&i64_, |x| fwd(x, &w64, &b64));
    let g_w = numeric_grad(&w64, |x| fwd(&i64_, x, &b64));
    let g_b = numeric_grad(&b64, |x| fwd(&i64_, &w64, x));

    // dinp[m,k] += dout[m,n] @ W[n,k]
    let got = run_matmul(&dout, &w, None, &dinp0, m, k, n, false, false, 1.0, 1.0);
    assert_close("dinp", &got, &plus(&dinp0, &g_inp), 1e-4, 1e-5);
    // dW[n,k] += dout^T[n,m] @ inp[m,k]
    let got = run_matmul(&dout, &inp, None, &dw0, n, k, m, true, false, 1.0, 1.0);
    assert_close("dweight", &got, &plus(&dw0, &g_w), 1e-4, 1e-5);
    // Same product written as (inp^T @ dout)^T is not available; instead check
    // dW^T[k,n] += inp^T[k,m] @ dout[m,n] through trans_a on the other operand.
    let dw0_t: Vec<f32> = (0..k * n).map(|i| dw0[(i % n) * k + i / n]).collect();
    let got = run_matmul(&inp, &dout, None, &dw0_t, k, n, m, true, false, 1.0, 1.0);
    let want_t: Vec<f64> = (0..k * n)
        .map(|i| dw0[(i % n) * k + i / n] as f64 + g_w[(i % n) * k + i / n])
        .collect();
    assert_close("dweight^T", &got, &want_t, 1e-4, 1e-5);

    let mut be = backend(2);
    let (dbi, di) = (upload(&mut be, &db0), upload(&mut be, &dout));
    be.bias_backward(dbi, di, m, n).ok_or_err().unwrap();
    assert_close(
        "dbias",
        &download(&mut be, dbi),
        &plus(&db0, &g_b),
        1e-5,
        1e-5,
    );
}

#[test]
fn matmul_accepts_bf16_and_f16_operands() {
    use half::{bf16, f16};
    let (m, n, k) = (9, 7, 11);
    let mut rng = Rng::new(5);
    let a: Vec<bf16> = rng
        .vec(m * k, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let b: Vec<f16> = rng.vec(k * n, 1.0).into_iter().map(f16::from_f32).collect();
    let mut be = backend(2);
    let ai = be.alloc_buf(kiln_abi::DType::BF16, m * k).unwrap();
    be.upload_bf16(ai, &a).unwrap();
    let bi = be.alloc_buf(kiln_abi::DType::F16, k * n).unwrap();
    be.upload_f16(bi, &b).unwrap();
    let oi = zeros(&mut be, m * n);
    let args = mm_args(oi, ai, bi, None, (m, n, k), false, false, 1.0, 0.0);
    be.matmul(args).ok_or_err().unwrap();
    let a64: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
    let b64: Vec<f64> = b.iter().map(|v| v.to_f64()).collect();
    let want = r::matmul(&a64, &b64, None, &[], m, n, k, false, false, 1.0, 0.0);
    assert_close("mixed matmul", &download(&mut be, oi), &want, 1e-5, 1e-5);
}

fn attention_case(bsz: usize, t: usize, c: usize, nh: usize, seed: u64, check_grad: bool) {
    let mut rng = Rng::new(seed);
    let qkv = rng.vec(bsz * t * 3 * c, 1.5);
    let dout = rng.vec(bsz * t * c, 1.0);
    let dqkv0 = rng.vec(bsz * t * 3 * c, 1.0);
    let mut be = backend(2);
    let qi = upload(&mut be, &qkv);
    let (out, att) = (
        zeros(&mut be, bsz * t * c),
        workspace(&mut be, mha(bsz, t, c, nh)),
    );
    attn_fwd(&mut be, out, att, qi, None, mha(bsz, t, c, nh))
        .ok_or_err()
        .unwrap();
    // The workspace is the backend's own (per-row statistics on the CPU).
    let (want_out, _) = r::attention(&to_f64(&qkv), bsz, t, c, nh);
    assert_close("out", &download(&mut be, out), &want_out, 1e-5, 1e-5);
    if !check_grad {
        return;
    }
    let (di, gi) = (upload(&mut be, &dqkv0), upload(&mut be, &dout));
    attn_bwd(&mut be, di, gi, qi, out, att, None, mha(bsz, t, c, nh))
        .ok_or_err()
        .unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&qkv), |x| {
        weighted_sum(&g, &r::attention(x, bsz, t, c, nh).0)
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
fn attention_forward_and_gradients_small() {
    attention_case(2, 5, 8, 2, 6, true);
    attention_case(1, 1, 4, 4, 7, true);
}

#[test]
fn attention_spanning_several_query_blocks() {
    // T > 64 exercises the blocked causal GEMMs (block = 64 query rows).
    attention_case(1, 70, 4, 1, 8, true);
    attention_case(2, 150, 12, 3, 9, false);
}

#[test]
fn kv_cache_attention_equals_full_attention() {
    let (bsz, t, c, nh, t_max) = (2, 11, 12, 3, 16);
    let mut rng = Rng::new(10);
    let qkv = rng.vec(bsz * t * 3 * c, 1.5);
    let mut be = backend(2);
    let qi = upload(&mut be, &qkv);
    let (out, att) = (
        zeros(&mut be, bsz * t * c),
        workspace(&mut be, mha(bsz, t, c, nh)),
    );
    attn_fwd(&mut be, out, att, qi, None, mha(bsz, t, c, nh))
        .ok_or_err()
        .unwrap();
    let full = download(&mut be, out);

    // Feed the same sequence in pieces: a 4-token prompt, then 1, then 6.
    let (kc, vc) = (
        zeros(&mut be, bsz * t_max * c),
        zeros(&mut be, bsz * t_max * c),
    );
    let mut t_past = 0;
    for t_new in [4, 1, 6] {
        let mut piece = Vec::new();
        for b in 0..bsz {
            piece.extend_from_slice(
                &qkv[(b * t + t_past) * 3 * c..(b * t + t_past + t_new) * 3 * c],
            );
        }
        let pi = upload(&mut be, &piece);
        let po = zeros(&mut be, bsz * t_new * c);
        kv_fwd(
            &mut be,
            po,
            pi,
            kc,
            vc,
            mha(bsz, t_new, c, nh),
            t_past,
            t_max,
        )
        .ok_or_err()
        .unwrap();
        let got = download(&mut be, po);
        for b in 0..bsz {
            let want = &full[(b * t + t_past) * c..(b * t + t_past + t_new) * c];
            let want64 = to_f64(want);
            assert_close(
                "kv out",
                &got[b * t_new * c..(b + 1) * t_new * c],
                &want64,
                1e-5,
                1e-6,
            );
        }
        t_past += t_new;
    }
    // One more token would overflow the cache? No: 11 + 5 = 16 fits, 17 does not.
    let pi = upload(&mut be, &vec![0.0; bsz * 6 * 3 * c]);
    let po = zeros(&mut be, bsz * 6 * c);
    let r = kv_fwd(&mut be, po, pi, kc, vc, mha(bsz, 6, c, nh), t_past, t_max);
    assert!(
        matches!(r, RResult::RErr(ref e) if e.contains("t_max")),
        "{r:?}"
    );
}

#[test]
fn embedding_forward_and_gradients() {
    let (bsz, t, c, vp) = (2, 4, 3, 5);
    let mut rng = Rng::new(11);
    // Repeated tokens: their gradients must add up.
    let tokens: Vec<u32> = vec![1, 3, 1, 0, 4, 1, 3, 3];
    let wte = rng.vec(vp * c, 1.0);
    let wpe = rng.vec(t * c, 1.0);
    let dout = rng.vec(bsz * t * c, 1.0);
    let (dwte0, dwpe0) = (rng.vec(vp * c, 1.0), rng.vec(t * c, 1.0));
    let mut be = backend(2);
    let ti = be.from_u32(&tokens).unwrap();
    let (wi, pi, out) = (
        upload(&mut be, &wte),
        upload(&mut be, &wpe),
        zeros(&mut be, bsz * t * c),
    );
    embed(&mut be, out, ti, wi, Some(pi), None, 0, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    let want = r::encoder(&tokens, &to_f64(&wte), &to_f64(&wpe), t, c);
    assert_close("out", &download(&mut be, out), &want, 1e-6, 1e-6);

    let (dwi, dpi, gi) = (
        upload(&mut be, &dwte0),
        upload(&mut be, &dwpe0),
        upload(&mut be, &dout),
    );
    embed_bwd(&mut be, Some(dwi), Some(dpi), gi, ti, None, 0, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    let g = to_f64(&dout);
    let (wte64, wpe64) = (to_f64(&wte), to_f64(&wpe));
    let gw = numeric_grad(&wte64, |x| {
        weighted_sum(&g, &r::encoder(&tokens, x, &wpe64, t, c))
    });
    let gp = numeric_grad(&wpe64, |x| {
        weighted_sum(&g, &r::encoder(&tokens, &wte64, x, t, c))
    });
    assert_close(
        "dwte",
        &download(&mut be, dwi),
        &plus(&dwte0, &gw),
        1e-5,
        1e-5,
    );
    assert_close(
        "dwpe",
        &download(&mut be, dpi),
        &plus(&dwpe0, &gp),
        1e-5,
        1e-5,
    );
}

#[test]
fn embedding_reads_positions_from_pos0() {
    let (bsz, t, c, vp, pos0, t_max) = (2, 3, 4, 6, 5, 9);
    let mut rng = Rng::new(21);
    let tokens: Vec<u32> = vec![5, 0, 2, 2, 4, 1];
    let wte = rng.vec(vp * c, 1.0);
    let wpe = rng.vec(t_max * c, 1.0);
    let mut be = backend(2);
    let ti = be.from_u32(&tokens).unwrap();
    let (wi, pi, out) = (
        upload(&mut be, &wte),
        upload(&mut be, &wpe),
        zeros(&mut be, bsz * t * c),
    );
    embed(&mut be, out, ti, wi, Some(pi), None, pos0, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    let (wte64, wpe64) = (to_f64(&wte), to_f64(&wpe));
    let reference =
        |wte: &[f64], wpe: &[f64]| r::encoder(&tokens, wte, &wpe[pos0 * c..(pos0 + t) * c], t, c);
    let got = download(&mut be, out);
    assert_close("out", &got, &reference(&wte64, &wpe64), 1e-6, 1e-6);

    // Finite differences of the backend op itself: only the rows it should
    // read (the tokens' wte rows, wpe rows pos0..pos0+T) move its output,
    // by the amounts the f64 reference's gradient says.
    let g = rng.vec(bsz * t * c, 1.0);
    let g64 = to_f64(&g);
    let mut op_sum = |wte: &[f64], wpe: &[f64]| -> f64 {
        let (w32, p32): (Vec<f32>, Vec<f32>) = (
            wte.iter().map(|&x| x as f32).collect(),
            wpe.iter().map(|&x| x as f32).collect(),
        );
        be.upload_f32(wi, &w32).unwrap();
        be.upload_f32(pi, &p32).unwrap();
        embed(&mut be, out, ti, wi, Some(pi), None, pos0, (bsz, t, c))
            .ok_or_err()
            .unwrap();
        weighted_sum(&g64, &to_f64(&download(&mut be, out)))
    };
    // h large enough for f32 inputs; the op is linear, so no truncation error.
    let h = 1e-2;
    let mut op_grad = |which_wpe: bool| -> Vec<f64> {
        let mut x = if which_wpe {
            wpe64.clone()
        } else {
            wte64.clone()
        };
        (0..x.len())
            .map(|i| {
                let orig = x[i];
                let mut at = |v: f64, x: &mut Vec<f64>| {
                    x[i] = v;
                    if which_wpe {
                        op_sum(&wte64, x)
                    } else {
                        op_sum(x, &wpe64)
                    }
                };
                let d = (at(orig + h, &mut x) - at(orig - h, &mut x)) / (2.0 * h);
                x[i] = orig;
                d
            })
            .collect()
    };
    let op_dwpe = op_grad(true);
    let op_dwte = op_grad(false);
    let ref_dwpe = numeric_grad(&wpe64, |x| weighted_sum(&g64, &reference(&wte64, x)));
    let ref_dwte = numeric_grad(&wte64, |x| weighted_sum(&g64, &reference(x, &wpe64)));
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_close("d/dwpe", &as_f32(&op_dwpe), &ref_dwpe, 1e-3, 1e-3);
    assert_close("d/dwte", &as_f32(&op_dwte), &ref_dwte, 1e-3, 1e-3);
    assert!(op_dwpe[..pos0 * c].iter().all(|&d| d.abs() < 1e-3));
    assert!(op_dwpe[(pos0 + t) * c..].iter().all(|&d| d.abs() < 1e-3));

    // pos0 = 0 is encoder_forward bit for bit; the last rows of wpe fit
    // exactly; one more position is an error naming the op and wpe.
    let full = zeros(&mut be, bsz * t * c);
    be.upload_f32(wi, &wte).unwrap();
    be.upload_f32(pi, &wpe).unwrap();
    embed(&mut be, full, ti, wi, Some(pi), None, 0, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    embed(&mut be, out, ti, wi, Some(pi), None, 0, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    assert_eq!(download(&mut be, full), download(&mut be, out));
    let last = t_max - t;
    assert!(
        embed(&mut be, out, ti, wi, Some(pi), None, last, (bsz, t, c))
            .ok_or_err()
            .is_ok()
    );
    let r = embed(&mut be, out, ti, wi, Some(pi), None, last + 1, (bsz, t, c));
    assert!(
        matches!(r, RResult::RErr(ref e) if e.contains("embedding_forward") && e.contains("wpe")),
        "{r:?}"
    );
}

#[test]
fn crossentropy_forward_and_gradient_with_ignored_targets_and_padding() {
    let (rows, v, vp) = (6, 7, 10);
    let mut rng = Rng::new(12);
    let logits = rng.vec(rows * vp, 4.0);
    // Rows 2 and 5 are ignored (target >= v); row 4 hits the last real column.
    let targets: Vec<u32> = vec![0, 3, 7, 2, 6, u32::MAX];
    let dlosses = rng.vec(rows, 1.0);
    let mut be = backend(2);
    let (li, ti) = (upload(&mut be, &logits), be.from_u32(&targets).unwrap());
    let (losses, lse) = (zeros(&mut be, rows), upload(&mut be, &vec![9.0; rows]));
    be.crossentropy_forward(losses, lse, li, ti, rows, v, vp)
        .ok_or_err()
        .unwrap();
    let (want_l, _) = r::crossentropy(&to_f64(&logits), &targets, rows, v, vp);
    let want_lse = r::logsumexp_rows(&to_f64(&logits), rows, v, vp);
    assert_close("losses", &download(&mut be, losses), &want_l, 1e-5, 1e-6);
    assert_close("lse", &download(&mut be, lse), &want_lse, 1e-6, 1e-6);

    // The backward overwrites (old contents, even NaN, do not matter).
    let gi = upload(&mut be, &dlosses);
    let di = upload(&mut be, &vec![f32::NAN; rows * vp]);
    be.crossentropy_backward(di, li, lse, ti, gi, rows, v, vp)
        .ok_or_err()
        .unwrap();
    let g = to_f64(&dlosses);
    let grad = numeric_grad(&to_f64(&logits), |x| {
        weighted_sum(&g, &r::crossentropy(x, &targets, rows, v, vp).0)
    });
    // Padding columns and ignored rows are exactly 0.
    let got = download(&mut be, di);
    assert_close("dlogits", &got, &grad, 1e-4, 1e-5);
    assert!(got[2 * vp..3 * vp].iter().all(|&x| x == 0.0));
    assert!((0..rows).all(|r| got[r * vp + v..(r + 1) * vp].iter().all(|&x| x == 0.0)));

    // In place on the logits (llm.c's trick): the same bits.
    be.crossentropy_backward(li, li, lse, ti, gi, rows, v, vp)
        .ok_or_err()
        .unwrap();
    assert_eq!(bits(&download(&mut be, li)), bits(&got));
}

#[test]
fn residual_forward_and_gradient() {
    let n = 40_000; // several parallel chunks
    let mut rng = Rng::new(13);
    let (a, b, d0) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
    let mut be = backend(2);
    let (ai, bi, out) = (upload(&mut be, &a), upload(&mut be, &b), zeros(&mut be, n));
    be.add(out, ai, bi, n).ok_or_err().unwrap();
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| *x as f64 + *y as f64)
        .collect();
    assert_close("add", &download(&mut be, out), &want, 1e-7, 0.0);
    // d(a+b)/da = identity: the backward of a residual is `axpy` with 1.
    let di = upload(&mut be, &d0);
    be.axpy(di, bi, n, 1.0).ok_or_err().unwrap();
    assert_close(
        "axpy",
        &download(&mut be, di),
        &plus(&d0, &to_f64(&b)),
        1e-7,
        0.0,
    );
}

#[test]
fn scale_and_sum_squares() {
    let n = 50_001;
    let mut rng = Rng::new(14);
    let x = rng.vec(n, 3.0);
    let mut be = backend(2);
    let xi = upload(&mut be, &x);
    let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    // reduce adds the f64 result, rounded to f32, into its slot.
    let dst = upload(&mut be, &[0.0, 2.0]);
    be.reduce(Reduce::SumSquares, dst, 1, xi, n)
        .ok_or_err()
        .unwrap();
    let got = download(&mut be, dst);
    assert_eq!(got[0], 0.0);
    assert_eq!(got[1], 2.0f32 + want as f32);
    be.scale(xi, n - 1, 0.5).ok_or_err().unwrap();
    let got = download(&mut be, xi);
    assert_eq!(got[n - 1], x[n - 1], "elements past n stay");
    assert_eq!(got[7], x[7] * 0.5);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
