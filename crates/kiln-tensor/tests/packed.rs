//! The ops for packed batches (several documents in one row):
//! `embedding_forward`/`embedding_backward` with `positions` and
//! `attention_forward` with `segments`. Each is checked three ways: with trivial
//! positions/segments it is the unpacked op bit for bit; a packed row equals
//! its documents run alone; and against f64 references and finite
//! differences (the backward of the segmented attention is
//! `attention_backward` given the same segments, recomputing the
//! probabilities from the saved per-row statistics).

mod common;

/// f32 statistics the CPU attention saves per (batch, head, query row).
const ROW_STATS: usize = 2;

use common::reference as r;
use common::*;
use kiln_abi::{BackendBox, BackendExt, BufId, IntoBResult, RResult};

/// Positions given per token.
fn embed_pos(
    be: &mut BackendBox,
    out: BufId,
    tokens: BufId,
    pos: BufId,
    wte: BufId,
    wpe: BufId,
    d: (usize, usize, usize),
) -> R {
    embed(be, out, tokens, wte, Some(wpe), Some(pos), 0, d)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Causal attention where query `i` sees keys `j <= i` of its own segment
/// only; returns (out [B,T,C], att [B,NH,T,T]) in f64.
fn attention_segments_ref(
    qkv: &[f64],
    segments: &[u32],
    bsz: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> (Vec<f64>, Vec<f64>) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut out = vec![0.0; bsz * t * c];
    let mut att = vec![0.0; bsz * nh * t * t];
    for b in 0..bsz {
        let seg = &segments[b * t..][..t];
        for h in 0..nh {
            for i in 0..t {
                let keys: Vec<usize> = (0..=i).filter(|&j| seg[j] == seg[i]).collect();
                let q = &qkv[(b * t + i) * 3 * c + h * hs..][..hs];
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let k = &qkv[(b * t + j) * 3 * c + c + h * hs..][..hs];
                        q.iter().zip(k).map(|(x, y)| x * y).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for (&j, ej) in keys.iter().zip(&e) {
                    let p = ej / total;
                    att[((b * nh + h) * t + i) * t + j] = p;
                    let v = &qkv[(b * t + j) * 3 * c + 2 * c + h * hs..][..hs];
                    for d in 0..hs {
                        out[(b * t + i) * c + h * hs + d] += p * v[d];
                    }
                }
            }
        }
    }
    (out, att)
}

fn run_segments(
    be: &mut BackendBox,
    qkv: &[f32],
    segments: &[u32],
    bsz: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> (Vec<f32>, Vec<f32>, BufId, BufId, BufId) {
    let qi = upload(be, qkv);
    let si = be.from_u32(segments).unwrap();
    let (out, att) = (zeros(be, bsz * t * c), workspace(be, mha(bsz, t, c, nh)));
    attn_fwd(be, out, att, qi, Some(si), mha(bsz, t, c, nh))
        .ok_or_err()
        .unwrap();
    (download(be, out), download(be, att), qi, att, out)
}

fn run_attention(
    be: &mut BackendBox,
    qkv: &[f32],
    bsz: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> (Vec<f32>, Vec<f32>) {
    let qi = upload(be, qkv);
    let (out, att) = (zeros(be, bsz * t * c), workspace(be, mha(bsz, t, c, nh)));
    attn_fwd(be, out, att, qi, None, mha(bsz, t, c, nh))
        .ok_or_err()
        .unwrap();
    (download(be, out), download(be, att))
}

#[test]
fn attention_segments_all_equal_is_attention_forward_bit_for_bit() {
    // T = 150 spans three query blocks of the kernel.
    let (bsz, t, c, nh) = (2, 150, 12, 3);
    let mut rng = Rng::new(31);
    let qkv = rng.vec(bsz * t * 3 * c, 1.5);
    let mut be = backend(2);
    let (want_out, want_att) = run_attention(&mut be, &qkv, bsz, t, c, nh);
    for id in [0u32, 7] {
        let (out, att, ..) = run_segments(&mut be, &qkv, &vec![id; bsz * t], bsz, t, c, nh);
        assert_eq!(bits(&out), bits(&want_out), "out, segment id {id}");
        assert_eq!(bits(&att), bits(&want_att), "workspace, segment id {id}");
    }
}

#[test]
fn attention_segments_packed_rows_equal_documents_alone() {
    // Row 0 packs documents of 4 and 7 tokens; row 1 packs 5, 3 and 3 (ids
    // need only differ from their neighbours').
    let (t, c, nh) = (11, 8, 2);
    let docs: [&[usize]; 2] = [&[4, 7], &[5, 3, 3]];
    let segments: Vec<u32> = docs
        .iter()
        .flat_map(|lens| {
            lens.iter()
                .enumerate()
                .flat_map(|(d, &n)| std::iter::repeat_n(d as u32 * 3 + 1, n))
        })
        .collect();
    let bsz = docs.len();
    let mut rng = Rng::new(32);
    let qkv = rng.vec(bsz * t * 3 * c, 1.5);
    let mut be = backend(2);
    let (out, att, ..) = run_segments(&mut be, &qkv, &segments, bsz, t, c, nh);
    let mut worst = 0f32;
    for (b, lens) in docs.iter().enumerate() {
        let mut start = 0;
        for &n in lens.iter() {
            let rows = (b * t + start)..(b * t + start + n);
            let alone_qkv = &qkv[rows.start * 3 * c..rows.end * 3 * c];
            let (alone_out, alone_att) = run_attention(&mut be, alone_qkv, 1, n, c, nh);
            let packed_out = &out[rows.start * c..rows.end * c];
            worst = worst.max(max_abs_diff(packed_out, &alone_out));
            // The saved per-row softmax statistics (max score, 1/sum).
            let stats = |i: usize| (ROW_STATS * i)..(ROW_STATS * (i + 1));
            for h in 0..nh {
                for i in 0..n {
                    let packed = &att[stats((b * nh + h) * t + start + i)];
                    let alone = &alone_att[stats(h * n + i)];
                    worst = worst.max(max_abs_diff(packed, alone));
                }
            }
            start += n;
        }
    }
    eprintln!("packed vs alone: max |diff| = {worst:e}");
    assert!(
        worst <= 1e-6,
        "packed rows differ from documents alone by {worst:e}"
    );
}

/// Forward against the f64 reference, then `attention_backward` from the
/// saved workspace against central differences of that reference.
fn segments_gradient_case(segments: &[u32], bsz: usize, t: usize, c: usize, nh: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let qkv = rng.vec(bsz * t * 3 * c, 1.5);
    let dout = rng.vec(bsz * t * c, 1.0);
    let dqkv0 = rng.vec(bsz * t * 3 * c, 1.0);
    let mut be = backend(2);
    let (out, _, qi, atti, outi) = run_segments(&mut be, &qkv, segments, bsz, t, c, nh);
    let (want_out, _) = attention_segments_ref(&to_f64(&qkv), segments, bsz, t, c, nh);
    assert_close("out", &out, &want_out, 1e-5, 1e-5);
    let (di, gi) = (upload(&mut be, &dqkv0), upload(&mut be, &dout));
    // The backward recomputes the probabilities: it needs the same segments.
    let si = be.from_u32(segments).unwrap();
    attn_bwd(
        &mut be,
        di,
        gi,
        qi,
        outi,
        atti,
        Some(si),
        mha(bsz, t, c, nh),
    )
    .ok_or_err()
    .unwrap();
    let g = to_f64(&dout);
    let grad = numeric_grad(&to_f64(&qkv), |x| {
        weighted_sum(&g, &attention_segments_ref(x, segments, bsz, t, c, nh).0)
    });
    let got = download(&mut be, di);
    let want = plus(&dqkv0, &grad);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("segments {segments:?}: dqkv max |err| vs finite differences = {worst:e}");
    assert_close("dqkv", &got, &want, 1e-4, 1e-4);
}

#[test]
fn attention_segments_gradients_are_attention_backward() {
    // Contiguous documents (the packed case), one per row and several.
    segments_gradient_case(&[0, 0, 0, 1, 1, 2, 2, 2, 5, 5, 5, 5], 2, 6, 8, 2, 33);
    // A reused id (the masked key-by-key path): 0 sees 0s across the 1s.
    segments_gradient_case(&[0, 1, 1, 0, 2, 0, 2], 1, 7, 6, 3, 34);
}

#[test]
fn encoder_positions_from_zero_is_encoder_bit_for_bit() {
    let (bsz, t, c, vp) = (3, 5, 4, 7);
    let mut rng = Rng::new(35);
    let tokens: Vec<u32> = (0..bsz * t).map(|_| rng.below(vp as u32)).collect();
    let positions: Vec<u32> = (0..bsz * t).map(|i| (i % t) as u32).collect();
    let (wte, wpe, dout) = (
        rng.vec(vp * c, 1.0),
        rng.vec(t * c, 1.0),
        rng.vec(bsz * t * c, 1.0),
    );
    let (dwte0, dwpe0) = (rng.vec(vp * c, 1.0), rng.vec(t * c, 1.0));
    let mut be = backend(2);
    let (ti, pi) = (
        be.from_u32(&tokens).unwrap(),
        be.from_u32(&positions).unwrap(),
    );
    let (wi, wpi, gi) = (
        upload(&mut be, &wte),
        upload(&mut be, &wpe),
        upload(&mut be, &dout),
    );
    let (a, b) = (zeros(&mut be, bsz * t * c), zeros(&mut be, bsz * t * c));
    embed(&mut be, a, ti, wi, Some(wpi), None, 0, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    embed_pos(&mut be, b, ti, pi, wi, wpi, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    assert_eq!(bits(&download(&mut be, a)), bits(&download(&mut be, b)));

    let (dw_a, dp_a) = (upload(&mut be, &dwte0), upload(&mut be, &dwpe0));
    let (dw_b, dp_b) = (upload(&mut be, &dwte0), upload(&mut be, &dwpe0));
    embed_bwd(
        &mut be,
        Some(dw_a),
        Some(dp_a),
        gi,
        ti,
        None,
        0,
        (bsz, t, c),
    )
    .ok_or_err()
    .unwrap();
    embed_bwd(
        &mut be,
        Some(dw_b),
        Some(dp_b),
        gi,
        ti,
        Some(pi),
        0,
        (bsz, t, c),
    )
    .ok_or_err()
    .unwrap();
    assert_eq!(
        bits(&download(&mut be, dw_a)),
        bits(&download(&mut be, dw_b))
    );
    assert_eq!(
        bits(&download(&mut be, dp_a)),
        bits(&download(&mut be, dp_b))
    );
}

#[test]
fn encoder_positions_forward_and_gradients() {
    // Two rows, each packing documents whose positions restart at 0; wpe has
    // more rows than any position used (its last rows get no gradient).
    let (bsz, t, c, vp, wpe_rows) = (2, 5, 3, 6, 7);
    let tokens: Vec<u32> = vec![1, 3, 1, 0, 5, 2, 2, 4, 1, 3];
    let positions: Vec<u32> = vec![0, 1, 2, 0, 1, 0, 1, 2, 3, 0];
    let mut rng = Rng::new(36);
    let (wte, wpe, dout) = (
        rng.vec(vp * c, 1.0),
        rng.vec(wpe_rows * c, 1.0),
        rng.vec(bsz * t * c, 1.0),
    );
    let (dwte0, dwpe0) = (rng.vec(vp * c, 1.0), rng.vec(wpe_rows * c, 1.0));
    // out[i] = wte[tokens[i]] + wpe[positions[i]], in f64.
    let reference = |wte: &[f64], wpe: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; bsz * t * c];
        for (i, (&tok, &pos)) in tokens.iter().zip(&positions).enumerate() {
            for j in 0..c {
                out[i * c + j] = wte[tok as usize * c + j] + wpe[pos as usize * c + j];
            }
        }
        out
    };
    let mut be = backend(2);
    let (ti, pi) = (
        be.from_u32(&tokens).unwrap(),
        be.from_u32(&positions).unwrap(),
    );
    let (wi, wpi, out) = (
        upload(&mut be, &wte),
        upload(&mut be, &wpe),
        zeros(&mut be, bsz * t * c),
    );
    embed_pos(&mut be, out, ti, pi, wi, wpi, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    let (wte64, wpe64) = (to_f64(&wte), to_f64(&wpe));
    assert_close(
        "out",
        &download(&mut be, out),
        &reference(&wte64, &wpe64),
        1e-6,
        1e-6,
    );
    // Restarting positions agree with `r::encoder` on each document alone.
    let doc = r::encoder(&tokens[5..9], &wte64, &wpe64, 4, c);
    assert_close(
        "doc",
        &download(&mut be, out)[5 * c..9 * c],
        &doc,
        1e-6,
        1e-6,
    );

    let (dwi, dpi, gi) = (
        upload(&mut be, &dwte0),
        upload(&mut be, &dwpe0),
        upload(&mut be, &dout),
    );
    embed_bwd(
        &mut be,
        Some(dwi),
        Some(dpi),
        gi,
        ti,
        Some(pi),
        0,
        (bsz, t, c),
    )
    .ok_or_err()
    .unwrap();
    let g = to_f64(&dout);
    let gw = numeric_grad(&wte64, |x| weighted_sum(&g, &reference(x, &wpe64)));
    let gp = numeric_grad(&wpe64, |x| weighted_sum(&g, &reference(&wte64, x)));
    assert_close(
        "dwte",
        &download(&mut be, dwi),
        &plus(&dwte0, &gw),
        1e-5,
        1e-5,
    );
    let dwpe = download(&mut be, dpi);
    assert_close("dwpe", &dwpe, &plus(&dwpe0, &gp), 1e-5, 1e-5);
    // Rows 4..7 of wpe are not used: untouched.
    assert_eq!(bits(&dwpe[4 * c..]), bits(&dwpe0[4 * c..]));
}

#[test]
fn positions_outside_wpe_are_errors_naming_the_op() {
    let (bsz, t, c, vp) = (1, 3, 2, 4);
    let mut be = backend(1);
    let tokens = be.from_u32(&[0, 1, 2]).unwrap();
    let ok = be.from_u32(&[0, 1, 2]).unwrap();
    let bad = be.from_u32(&[0, 3, 1]).unwrap();
    let (wte, wpe) = (zeros(&mut be, vp * c), zeros(&mut be, t * c));
    let out = zeros(&mut be, bsz * t * c);
    embed_pos(&mut be, out, tokens, ok, wte, wpe, (bsz, t, c))
        .ok_or_err()
        .unwrap();
    let r = embed_pos(&mut be, out, tokens, bad, wte, wpe, (bsz, t, c));
    assert!(
        matches!(r, RResult::RErr(ref e) if e.contains("embedding_forward")
            && e.contains("position 3") && e.contains("wpe")),
        "{r:?}"
    );
    let r = embed_bwd(
        &mut be,
        Some(wte),
        Some(wpe),
        out,
        tokens,
        Some(bad),
        0,
        (bsz, t, c),
    );
    assert!(
        matches!(r, RResult::RErr(ref e) if e.contains("embedding_backward")
            && e.contains("position 3") && e.contains("dwpe")),
        "{r:?}"
    );
    // Segments of the wrong length are refused too.
    let (qkv, att) = (
        zeros(&mut be, 3 * bsz * t * c),
        workspace(&mut be, mha(bsz, t, c, 1)),
    );
    let short = be.from_u32(&[0, 0]).unwrap();
    let r = attn_fwd(&mut be, out, att, qkv, Some(short), mha(bsz, t, c, 1));
    assert!(
        matches!(r, RResult::RErr(ref e) if e.contains("attention_forward")
            && e.contains("segments")),
        "{r:?}"
    );
}
