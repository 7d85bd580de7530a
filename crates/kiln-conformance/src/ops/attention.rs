//! Causal self-attention: multi-head (GPT-2's `[q|k|v]`), grouped-query,
//! sliding-window and packed (segments); its backward through the
//! backend's own workspace; and the KV-cache forward of generation.

use kiln_abi::{
    AttentionArgs, AttentionBackwardArgs, AttentionShape, DType, KvAttentionArgs, ROption,
};

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

fn shape(b: usize, t: usize, nh: usize, nkv: usize, hd: usize, window: usize) -> AttentionShape {
    AttentionShape {
        b,
        t,
        nh,
        nkv,
        hd,
        window,
    }
}

fn width(s: &AttentionShape) -> usize {
    (s.nh + 2 * s.nkv) * s.hd
}

fn scale_of(s: &AttentionShape) -> f32 {
    1.0 / (s.hd as f32).sqrt()
}

/// `out [B,T,nh*hd]` of the causal attention over `qkv [B,T,(nh+2nkv)*hd]`.
fn attend(qkv: &[f64], segments: Option<&[f64]>, s: &AttentionShape, scale: f32) -> Vec<f64> {
    let (w, hd) = (width(s), s.hd);
    let group = s.nh / s.nkv;
    let mut out = vec![0.0; s.b * s.t * s.nh * hd];
    for b in 0..s.b {
        for h in 0..s.nh {
            let g = h / group;
            for t in 0..s.t {
                let q = &qkv[(b * s.t + t) * w + h * hd..][..hd];
                let keys: Vec<usize> = (0..=t)
                    .filter(|&u| s.window == 0 || u + s.window > t)
                    .filter(|&u| segments.is_none_or(|seg| seg[b * s.t + u] == seg[b * s.t + t]))
                    .collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&u| {
                        let k = &qkv[(b * s.t + u) * w + (s.nh + g) * hd..][..hd];
                        scale as f64 * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (p, &u) in e.iter().zip(&keys) {
                    let v = &qkv[(b * s.t + u) * w + (s.nh + s.nkv + g) * hd..][..hd];
                    let o = &mut out[(b * s.t + t) * s.nh * hd + h * hd..][..hd];
                    for d in 0..hd {
                        o[d] += p / z * v[d];
                    }
                }
            }
        }
    }
    out
}

fn workspace_len(env: &mut Env, s: AttentionShape) -> Result<usize, String> {
    env.be
        .attention_workspace_len(s)
        .into_result()
        .map_err(|e| format!("attention_workspace_len({s:?}) failed: {e}"))
}

const SEGMENTS: [u32; 10] = [0, 0, 1, 1, 1, 4, 4, 4, 4, 4];

fn settings() -> Vec<(&'static str, AttentionShape, bool)> {
    vec![
        ("multi-head (GPT-2 layout)", shape(2, 5, 3, 3, 4, 0), false),
        (
            "grouped-query 4 heads / 2 kv",
            shape(2, 5, 4, 2, 3, 0),
            false,
        ),
        (
            "grouped-query, sliding window 2",
            shape(2, 5, 4, 2, 3, 2),
            false,
        ),
        ("multi-head, packed segments", shape(2, 5, 2, 2, 3, 0), true),
        ("multi-query, 7 positions", shape(1, 7, 3, 1, 5, 0), false),
    ]
}

pub fn forward(env: &mut Env, dt: DType) -> Cases {
    let mut cases = Vec::new();
    for (label, s, packed) in settings() {
        let mut c = OpCase::new("attention_forward", label, dt);
        let ws = workspace_len(env, s)?;
        let out = c.data("out", vec![0.0; s.b * s.t * s.nh * s.hd]);
        let workspace = c.f32("workspace", vec![0.0; ws]);
        let qkv = c.data("qkv", env.rng.vec_in(s.b * s.t * width(&s), -1.5, 1.5));
        let segments = packed.then(|| c.index("segments", SEGMENTS.to_vec()));
        let seg_v = segments.map(|g| c.vals(g));
        let scale = scale_of(&s);
        c.expect(out, attend(&c.vals(qkv), seg_v.as_deref(), &s, scale));
        c.call(move |be, ids| {
            be.attention_forward(AttentionArgs {
                out: ids[out],
                workspace: ids[workspace],
                qkv: ids[qkv],
                segments: segments.map(|g| ids[g]).into(),
                shape: s,
                scale,
            })
        });
        cases.push(c);
    }
    // nh must be a multiple of nkv.
    let bad = shape(1, 3, 3, 2, 2, 0);
    let ws = workspace_len(env, shape(1, 3, 4, 2, 2, 0))?;
    let mut c = OpCase::new("attention_forward", "3 heads over 2 kv heads", dt);
    let out = c.data("out", vec![0.0; 3 * 3 * 2]);
    let workspace = c.f32("workspace", vec![0.0; ws.max(1)]);
    let qkv = c.data("qkv", env.rng.vec(3 * width(&bad)));
    c.must_fail("nh = 3 is not a multiple of nkv = 2");
    c.call(move |be, ids| {
        be.attention_forward(AttentionArgs {
            out: ids[out],
            workspace: ids[workspace],
            qkv: ids[qkv],
            segments: ROption::RNone,
            shape: bad,
            scale: 0.5,
        })
    });
    cases.push(c);
    Ok(cases)
}

pub fn backward(env: &mut Env, dt: DType) -> Cases {
    let mut cases = Vec::new();
    for (label, s, packed) in settings() {
        let mut c = OpCase::new("attention_backward", format!("{label} (accumulates)"), dt);
        let ws = workspace_len(env, s)?;
        let n_out = s.b * s.t * s.nh * s.hd;
        let n_qkv = s.b * s.t * width(&s);
        let dqkv = c.data("dqkv", env.rng.vec(n_qkv));
        let dout = c.data("dout", env.rng.vec(n_out));
        let qkv = c.data("qkv", env.rng.vec_in(n_qkv, -1.5, 1.5));
        let out = c.data("out", vec![0.0; n_out]);
        let workspace = c.f32("workspace", vec![0.0; ws]);
        let segments = packed.then(|| c.index("segments", SEGMENTS.to_vec()));
        let seg_v = segments.map(|g| c.vals(g));
        let scale = scale_of(&s);
        let d = c.vals(dout);
        let g = fd::grad(&c.vals(qkv), |x| {
            fd::dot(&d, &attend(x, seg_v.as_deref(), &s, scale))
        });
        c.expect(dqkv, fd::plus(&c.vals(dqkv), &g));
        c.prepare(move |be, ids| {
            be.attention_forward(AttentionArgs {
                out: ids[out],
                workspace: ids[workspace],
                qkv: ids[qkv],
                segments: segments.map(|g| ids[g]).into(),
                shape: s,
                scale,
            })
        });
        c.call(move |be, ids| {
            be.attention_backward(AttentionBackwardArgs {
                dqkv: ids[dqkv],
                dout: ids[dout],
                qkv: ids[qkv],
                out: ids[out],
                workspace: ids[workspace],
                segments: segments.map(|g| ids[g]).into(),
                shape: s,
                scale,
            })
        });
        cases.push(c);
    }
    Ok(cases)
}

/// Rows `from..to` of every batch of a `[B, T, width]` tensor.
fn rows(x: &[f64], b: usize, t: usize, width: usize, from: usize, to: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for bb in 0..b {
        out.extend(&x[(bb * t + from) * width..(bb * t + to) * width]);
    }
    out
}

/// The `[B, nkv, t_max, hd]` cache holding keys (`which` 0) or values (1)
/// of positions `0..upto` of `qkv`; `base` elsewhere.
fn cache(
    qkv: &[f64],
    s: &AttentionShape,
    t_max: usize,
    upto: usize,
    which: usize,
    base: &[f64],
) -> Vec<f64> {
    let (w, hd) = (width(s), s.hd);
    let mut c = base.to_vec();
    for b in 0..s.b {
        for g in 0..s.nkv {
            for t in 0..upto {
                for d in 0..hd {
                    c[((b * s.nkv + g) * t_max + t) * hd + d] =
                        qkv[(b * s.t + t) * w + (s.nh + which * s.nkv + g) * hd + d];
                }
            }
        }
    }
    c
}

pub fn kv_forward(env: &mut Env, dt: DType) -> Cases {
    let settings = [
        (
            "prefill 5 positions into a 7-slot cache",
            shape(2, 5, 4, 2, 3, 0),
            0,
            7,
        ),
        (
            "2 new positions after 3 cached",
            shape(2, 5, 4, 2, 3, 0),
            3,
            6,
        ),
        (
            "1 new position after 4, window 2",
            shape(2, 5, 2, 1, 4, 2),
            4,
            5,
        ),
        ("multi-head, 1 new after 5", shape(1, 6, 3, 3, 2, 0), 5, 6),
    ];
    let mut cases = Vec::new();
    for (label, full, t_past, t_max) in settings {
        let mut c = OpCase::new("attention_kv_forward", label, dt);
        let w = width(&full);
        let tn = full.t - t_past;
        let all = env.rng.vec_in(full.b * full.t * w, -1.5, 1.5);
        let all: Vec<f64> = all
            .iter()
            .map(|&x| crate::values::round_to(dt, x))
            .collect();
        let n_cache = full.b * full.nkv * t_max * full.hd;
        let round = |v: Vec<f64>| -> Vec<f64> {
            v.iter().map(|&x| crate::values::round_to(dt, x)).collect()
        };
        let (kb, vb) = (round(env.rng.vec(n_cache)), round(env.rng.vec(n_cache)));
        let scale = scale_of(&full);
        let out = c.data("out", vec![0.0; full.b * tn * full.nh * full.hd]);
        let qkv = c.data("qkv", rows(&all, full.b, full.t, w, t_past, full.t));
        let k_cache = c.data("k_cache", cache(&all, &full, t_max, t_past, 0, &kb));
        let v_cache = c.data("v_cache", cache(&all, &full, t_max, t_past, 1, &vb));
        let want = attend(&all, None, &full, scale);
        c.expect(
            out,
            rows(&want, full.b, full.t, full.nh * full.hd, t_past, full.t),
        );
        c.expect(k_cache, cache(&all, &full, t_max, full.t, 0, &kb));
        c.expect(v_cache, cache(&all, &full, t_max, full.t, 1, &vb));
        let s = AttentionShape { t: tn, ..full };
        c.call(move |be, ids| {
            be.attention_kv_forward(KvAttentionArgs {
                out: ids[out],
                qkv: ids[qkv],
                k_cache: ids[k_cache],
                v_cache: ids[v_cache],
                shape: s,
                t_past,
                t_max,
                scale,
            })
        });
        cases.push(c);
    }
    // New positions past the cache are an error.
    let s = shape(1, 2, 2, 2, 2, 0);
    let mut c = OpCase::new("attention_kv_forward", "positions past t_max", dt);
    let out = c.data("out", vec![0.0; 2 * 4]);
    let qkv = c.data("qkv", env.rng.vec(2 * width(&s)));
    let k_cache = c.data("k_cache", vec![0.0; 2 * 3 * 2]);
    let v_cache = c.data("v_cache", vec![0.0; 2 * 3 * 2]);
    c.must_fail("t_past 2 + 2 new positions with t_max 3");
    c.call(move |be, ids| {
        be.attention_kv_forward(KvAttentionArgs {
            out: ids[out],
            qkv: ids[qkv],
            k_cache: ids[k_cache],
            v_cache: ids[v_cache],
            shape: s,
            t_past: 2,
            t_max: 3,
            scale: 0.5,
        })
    });
    cases.push(c);
    Ok(cases)
}
