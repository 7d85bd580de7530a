//! Bit-identical results run after run, and across thread counts.

mod common;

use common::*;
use kiln_abi::{BackendBox, BufId, IntoBResult, MatmulArgs, Reduce, Unary};

/// Runs a small forward/backward chain of every op with parallel work on
/// `threads` threads and returns every output, bit for bit.
fn chain(threads: usize) -> Vec<Vec<u32>> {
    let (b, t, c, nh, v, vp) = (2, 80, 64, 4, 300, 320);
    let bt = b * t;
    let mut rng = Rng::new(99);
    let mut be = backend(threads);
    let mut outputs = Vec::new();
    let mut keep = |be: &mut BackendBox, id: BufId| {
        outputs.push(download(be, id).iter().map(|x| x.to_bits()).collect())
    };

    let tokens: Vec<u32> = (0..bt).map(|_| rng.below(v as u32)).collect();
    let ti = kiln_abi::BackendExt::from_u32(&mut be, &tokens).unwrap();
    let wte = upload(&mut be, &rng.vec(vp * c, 0.5));
    let wpe = upload(&mut be, &rng.vec(t * c, 0.5));
    let x = zeros(&mut be, bt * c);
    embed(&mut be, x, ti, wte, Some(wpe), None, 0, (b, t, c))
        .ok_or_err()
        .unwrap();

    let lnw = upload(&mut be, &rng.vec(c, 1.0));
    let lnb = upload(&mut be, &rng.vec(c, 1.0));
    let (ln, mean, rstd) = (
        zeros(&mut be, bt * c),
        zeros(&mut be, bt),
        zeros(&mut be, bt),
    );
    layernorm_fwd(&mut be, ln, mean, rstd, x, lnw, lnb, bt, c, 1e-5)
        .ok_or_err()
        .unwrap();
    keep(&mut be, ln);

    let wqkv = upload(&mut be, &rng.vec(3 * c * c, 0.2));
    let qkv = zeros(&mut be, bt * 3 * c);
    let mm = |out, a, w, m, n, k| MatmulArgs {
        trans_b: true,
        ..MatmulArgs::new(out, a, w, m, n, k)
    };
    be.matmul(mm(qkv, ln, wqkv, bt, 3 * c, c))
        .ok_or_err()
        .unwrap();
    keep(&mut be, qkv);

    let (att_out, att) = (zeros(&mut be, bt * c), workspace(&mut be, mha(b, t, c, nh)));
    attn_fwd(&mut be, att_out, att, qkv, None, mha(b, t, c, nh))
        .ok_or_err()
        .unwrap();
    keep(&mut be, att_out);

    let g = zeros(&mut be, bt * c);
    be.unary_forward(Unary::Gelu, g, att_out, bt * c)
        .ok_or_err()
        .unwrap();
    let logits = zeros(&mut be, bt * vp);
    be.matmul(mm(logits, g, wte, bt, vp, c))
        .ok_or_err()
        .unwrap();
    let (losses, lse) = (zeros(&mut be, bt), zeros(&mut be, bt));
    be.crossentropy_forward(losses, lse, logits, ti, bt, v, vp)
        .ok_or_err()
        .unwrap();
    keep(&mut be, losses);

    let dl = upload(&mut be, &vec![1.0 / bt as f32; bt]);
    let dlogits = zeros(&mut be, bt * vp);
    be.crossentropy_backward(dlogits, logits, lse, ti, dl, bt, v, vp)
        .ok_or_err()
        .unwrap();
    let dg = zeros(&mut be, bt * c);
    let args = MatmulArgs {
        trans_b: false,
        ..mm(dg, dlogits, wte, bt, c, vp)
    };
    be.matmul(args).ok_or_err().unwrap();
    let dwte = zeros(&mut be, vp * c);
    let args = MatmulArgs {
        trans_a: true,
        trans_b: false,
        beta: 1.0,
        ..mm(dwte, dlogits, g, vp, c, bt)
    };
    be.matmul(args).ok_or_err().unwrap();
    let datt_out = zeros(&mut be, bt * c);
    be.unary_backward(Unary::Gelu, datt_out, att_out, dg, bt * c)
        .ok_or_err()
        .unwrap();
    let dqkv = zeros(&mut be, bt * 3 * c);
    attn_bwd(
        &mut be,
        dqkv,
        datt_out,
        qkv,
        att_out,
        att,
        None,
        mha(b, t, c, nh),
    )
    .ok_or_err()
    .unwrap();
    keep(&mut be, dqkv);
    let dln = zeros(&mut be, bt * c);
    let args = MatmulArgs {
        trans_b: false,
        ..mm(dln, dqkv, wqkv, bt, c, 3 * c)
    };
    be.matmul(args).ok_or_err().unwrap();
    let (dx, dlnw, dlnb) = (zeros(&mut be, bt * c), zeros(&mut be, c), zeros(&mut be, c));
    layernorm_bwd(&mut be, dx, dlnw, dlnb, dln, x, lnw, mean, rstd, bt, c)
        .ok_or_err()
        .unwrap();
    keep(&mut be, dx);
    keep(&mut be, dlnw);
    let dwpe = zeros(&mut be, t * c);
    embed_bwd(&mut be, Some(dwte), Some(dwpe), dx, ti, None, 0, (b, t, c))
        .ok_or_err()
        .unwrap();
    keep(&mut be, dwte);
    keep(&mut be, dwpe);
    let dbias = zeros(&mut be, c);
    be.bias_backward(dbias, dx, bt, c).ok_or_err().unwrap();
    keep(&mut be, dbias);
    let ss = zeros(&mut be, 2);
    be.reduce(Reduce::SumSquares, ss, 0, dwte, vp * c)
        .ok_or_err()
        .unwrap();
    be.reduce(Reduce::Sum, ss, 1, dx, bt * c)
        .ok_or_err()
        .unwrap();
    keep(&mut be, ss);
    outputs
}

#[test]
fn same_inputs_same_bits_run_after_run() {
    assert_eq!(chain(2), chain(2));
}

#[test]
fn same_bits_for_one_and_several_threads() {
    let one = chain(1);
    assert_eq!(one, chain(3));
    assert_eq!(one, chain(2));
}

/// The ops ABI 2 added, with parallel work, on `threads` threads.
fn chain_new_ops(threads: usize) -> Vec<Vec<u32>> {
    use kiln_abi::{AttentionShape, BackendExt, NormArgs, NormBackwardArgs, NormKind, Rounding};
    let mut rng = Rng::new(7);
    let mut be = backend(threads);
    let mut out = Vec::new();
    let s = AttentionShape {
        b: 2,
        t: 130,
        nh: 4,
        nkv: 2,
        hd: 8,
        window: 50,
    };
    let (rows, row) = (s.b * s.t, (s.nh + 2 * s.nkv) * s.hd);
    let qkv = upload(&mut be, &rng.vec(rows * row, 1.0));
    let ws_len = be.attention_workspace_len(s).unwrap();
    let ws = zeros(&mut be, ws_len);
    let (o, dout, dqkv) = (
        zeros(&mut be, rows * 32),
        upload(&mut be, &rng.vec(rows * 32, 1.0)),
        zeros(&mut be, rows * row),
    );
    attn_fwd(&mut be, o, ws, qkv, None, s).ok_or_err().unwrap();
    attn_bwd(&mut be, dqkv, dout, qkv, o, ws, None, s)
        .ok_or_err()
        .unwrap();
    let (w, rstd, y, dx, dw) = (
        upload(&mut be, &rng.vec(32, 1.0)),
        zeros(&mut be, rows),
        zeros(&mut be, rows * 32),
        zeros(&mut be, rows * 32),
        zeros(&mut be, 32),
    );
    let n = NormArgs {
        kind: NormKind::RmsNorm,
        out: y,
        mean: None.into(),
        rstd,
        inp: o,
        weight: w,
        bias: None.into(),
        residual: None.into(),
        residual_out: None.into(),
        rows,
        cols: 32,
        eps: 1e-5,
    };
    be.norm_forward(n).ok_or_err().unwrap();
    let nb = NormBackwardArgs {
        kind: NormKind::RmsNorm,
        dinp: dx,
        dweight: Some(dw).into(),
        dbias: None.into(),
        dout,
        inp: o,
        weight: w,
        mean: None.into(),
        rstd,
        rows,
        cols: 32,
    };
    be.norm_backward(nb).ok_or_err().unwrap();
    let sw = zeros(&mut be, rows * 16);
    be.swiglu_forward(sw, y, rows, 16).ok_or_err().unwrap();
    let idx: Vec<u32> = (0..rows).map(|_| rng.below(9)).collect();
    let ii = be.from_u32(&idx).unwrap();
    let dst = zeros(&mut be, 9 * 32);
    be.scatter_add_rows(dst, dx, ii, None.into(), rows, 32)
        .ok_or_err()
        .unwrap();
    let b16 = be.alloc_buf(kiln_abi::DType::BF16, rows * row).unwrap();
    be.cast(b16, dqkv, rows * row, Rounding::Stochastic, 3)
        .ok_or_err()
        .unwrap();
    let stats = zeros(&mut be, 2);
    be.reduce(Reduce::SumSquares, stats, 0, b16, rows * row)
        .ok_or_err()
        .unwrap();
    for id in [o, dqkv, y, dx, dw, sw, dst, stats] {
        out.push(download(&mut be, id).iter().map(|x| x.to_bits()).collect());
    }
    out.push(
        be.download_bf16(b16)
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
    );
    out
}

#[test]
fn new_ops_same_bits_for_one_and_several_threads() {
    let one = chain_new_ops(1);
    assert_eq!(one, chain_new_ops(3));
}
