//! The CPU attention saves per-row softmax statistics only (no `[B,nh,T,T]`
//! probabilities): the workspace size, and forward + backward over shapes
//! spanning several query blocks against the f64 reference (the analytic
//! softmax backward, since central differences are too slow at these sizes).

mod common;

use common::reference as r;
use common::*;
use kiln_abi::{AttentionShape, BackendExt, IntoBResult};

/// f32 statistics the CPU backend keeps per (batch, query head, query row):
/// the row's max score and the reciprocal of its exponential sum.
const ROW_STATS: usize = 2;

#[test]
fn workspace_is_per_row_statistics_not_probabilities() {
    let mut be = backend(1);
    // gpt2-124m at T = 1024.
    let s = AttentionShape {
        b: 1,
        t: 1024,
        nh: 12,
        nkv: 12,
        hd: 64,
        window: 0,
    };
    let len = be.attention_workspace_len(s).ok_or_err().unwrap();
    assert_eq!(len, s.b * s.nh * s.t * ROW_STATS);
    assert!(len * 100 < s.b * s.nh * s.t * s.t, "{len} is not O(B*nh*T)");
    // Linear in T, B and nh; independent of nkv, hd and window.
    for (b, t, nh, nkv, hd, window) in [(3, 100, 4, 2, 8, 0), (2, 4096, 8, 1, 128, 512)] {
        let s = AttentionShape {
            b,
            t,
            nh,
            nkv,
            hd,
            window,
        };
        let len = be.attention_workspace_len(s).ok_or_err().unwrap();
        assert_eq!(len, b * nh * t * ROW_STATS, "{s:?}");
    }
}

/// Forward and backward (which recomputes the probabilities block by block)
/// against the f64 reference; backward accumulates into a non-zero `dqkv`.
fn case(s: AttentionShape, segments: Option<&[u32]>, seed: u64) {
    let row = (s.nh + 2 * s.nkv) * s.hd;
    let n_out = s.b * s.t * s.nh * s.hd;
    let mut rng = Rng::new(seed);
    let qkv = rng.vec(s.b * s.t * row, 1.5);
    let dout = rng.vec(n_out, 1.0);
    let dqkv0 = rng.vec(s.b * s.t * row, 1.0);
    let mut be = backend(3);
    let qi = upload(&mut be, &qkv);
    let ws_len = be.attention_workspace_len(s).ok_or_err().unwrap();
    let (out, ws) = (zeros(&mut be, n_out), zeros(&mut be, ws_len));
    let seg = segments.map(|v| be.from_u32(v).unwrap());
    attn_fwd(&mut be, out, ws, qi, seg, s).ok_or_err().unwrap();
    let q64 = to_f64(&qkv);
    let (want_out, _) = r::attention_gqa(&q64, s.b, s.t, s.nh, s.nkv, s.hd, s.window, segments);
    assert_close("out", &download(&mut be, out), &want_out, 1e-5, 1e-5);

    let (di, gi) = (upload(&mut be, &dqkv0), upload(&mut be, &dout));
    attn_bwd(&mut be, di, gi, qi, out, ws, seg, s)
        .ok_or_err()
        .unwrap();
    let grad = r::attention_gqa_backward(
        &q64,
        &to_f64(&dout),
        s.b,
        s.t,
        s.nh,
        s.nkv,
        s.hd,
        s.window,
        segments,
    );
    let got = download(&mut be, di);
    let want = plus(&dqkv0, &grad);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{s:?}: dqkv max |err| vs f64 = {worst:e}");
    assert_close("dqkv", &got, &want, 1e-4, 1e-4);
}

#[test]
fn recomputed_backward_matches_the_f64_reference_over_several_blocks() {
    let s = AttentionShape {
        b: 2,
        t: 150,
        nh: 3,
        nkv: 3,
        hd: 8,
        window: 0,
    };
    case(s, None, 61);
    // Grouped-query with a window narrower than a block, and one wider.
    case(
        AttentionShape {
            nh: 4,
            nkv: 2,
            window: 20,
            ..s
        },
        None,
        62,
    );
    case(
        AttentionShape {
            nh: 4,
            nkv: 1,
            window: 100,
            ..s
        },
        None,
        63,
    );
    // Packed rows: contiguous documents across block boundaries in row 0,
    // a reused id (masked key by key) in row 1.
    let mut seg: Vec<u32> = (0..150).map(|i| (i / 70) as u32).collect();
    seg.extend((0..150).map(|i| [0u32, 1, 1, 2][i % 4]));
    case(AttentionShape { nh: 4, nkv: 2, ..s }, Some(&seg), 64);
    case(
        AttentionShape {
            nh: 4,
            nkv: 2,
            window: 30,
            ..s
        },
        Some(&seg),
        65,
    );
}

/// CPU time of this process so far in ms (user + system, from
/// `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime, stime are 14, 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) * 10.0
}

/// `cargo test -p kiln-tensor --test attention_workspace -- --ignored
/// --nocapture`: CPU time per forward and backward (one thread, so other
/// load on the machine distorts it less than wall time), at the shape of
/// `benches/benches/ops.rs` (B=8, T=256, C=384, 6 heads) and at gpt2-124m's
/// (B=1, T=1024, C=768, 12 heads). The test profile's overflow checks keep
/// `fastmath::exp` scalar; for figures close to a release build run it with
/// `CARGO_PROFILE_TEST_OPT_LEVEL=3 CARGO_PROFILE_TEST_OVERFLOW_CHECKS=false
/// CARGO_PROFILE_TEST_DEBUG_ASSERTIONS=false`.
#[test]
#[ignore]
fn timing() {
    for (bsz, t, c, nh) in [(8, 256, 384, 6), (1, 1024, 768, 12)] {
        let s = mha(bsz, t, c, nh);
        let n_out = bsz * t * c;
        let mut rng = Rng::new(1);
        let mut be = backend(1);
        let qi = upload(&mut be, &rng.vec(3 * n_out, 1.0));
        let gi = upload(&mut be, &rng.vec(n_out, 1.0));
        let di = zeros(&mut be, 3 * n_out);
        let ws_len = be.attention_workspace_len(s).ok_or_err().unwrap();
        let (out, ws) = (zeros(&mut be, n_out), zeros(&mut be, ws_len));
        let per_call = |f: &mut dyn FnMut()| {
            f();
            let (n, t0) = (10, cpu_ms());
            (0..n).for_each(|_| f());
            (cpu_ms() - t0) / n as f64
        };
        let fwd = per_call(&mut || attn_fwd(&mut be, out, ws, qi, None, s).ok_or_err().unwrap());
        let bwd = per_call(&mut || {
            attn_bwd(&mut be, di, gi, qi, out, ws, None, s)
                .ok_or_err()
                .unwrap()
        });
        eprintln!(
            "attention B={bsz} T={t} C={c} nh={nh}: forward {fwd:.1} ms, backward {bwd:.1} ms CPU \
             (workspace {ws_len} floats)"
        );
    }
}
