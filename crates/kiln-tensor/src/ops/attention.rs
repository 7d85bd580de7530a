//! Causal (grouped-query, optionally windowed, optionally packed) self-attention
//! over `qkv [B,T,(nh+2nkv)*hd]`, with the softmax probabilities
//! `att [B,nh,T,T]` saved for backward (masked entries are exactly 0).
//!
//! Forward: each (batch, query head) is one parallel task. Inside it, queries
//! go in blocks of [`BLOCK`] rows and every block is a few GEMM calls over
//! only the keys it can see (`0..block_end`), so the causal half is mostly
//! skipped. Backward: each (batch, key/value head) is one task that runs its
//! query heads in order, so the shared dk/dv sums have a fixed order (with
//! `nh == nkv` this is exactly the multi-head computation).

use rayon::prelude::*;

use super::fastmath::exp;
use super::{dot, max, sum, SendPtr};
use crate::gemm::{sgemm_serial, GemmEngine, Mat, MatMut};

/// Query rows per block.
const BLOCK: usize = 64;

/// Shapes of one attention call (`kiln_abi::AttentionShape`, validated).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Keys `s > t - window` only; 0: no window.
    pub window: usize,
}

impl Shape {
    /// Elements per token row of `qkv`.
    pub fn qkv_row(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
    /// Elements per token row of `out`.
    pub fn out_row(&self) -> usize {
        self.nh * self.hd
    }
    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.nh / self.nkv
    }
    /// First key query `i` may see because of the window.
    fn window_lo(&self, i: usize) -> usize {
        if self.window > 0 && i + 1 > self.window {
            i + 1 - self.window
        } else {
            0
        }
    }
}

simd_fn! {
    /// In-place softmax of `row`; deterministic order.
    pub(crate) fn softmax_in_place(row: &mut [f32]) {
        let m = max(row);
        // Two passes so both vectorise: exponentials, then a lane-wise sum.
        for v in row.iter_mut() {
            *v = exp(*v - m);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Views of q (query head `h`), k and v (its key/value head), each `[T, hd]`
/// with row stride `qkv_row`, of batch `bi`.
fn qkv_views(qkv: &[f32], sh: Shape, bi: usize, h: usize) -> (Mat, Mat, Mat) {
    let base = bi * sh.t * sh.qkv_row();
    let kvh = h / sh.group();
    let rs = sh.qkv_row() as isize;
    let at = |off: usize| Mat {
        ptr: qkv[base + off..].as_ptr(),
        rs,
        cs: 1,
    };
    (
        at(h * sh.hd),
        at((sh.nh + kvh) * sh.hd),
        at((sh.nh + sh.nkv + kvh) * sh.hd),
    )
}

/// Transposed view of a `[T, hd]` matrix with row stride `rs`.
fn transposed(m: Mat) -> Mat {
    Mat {
        ptr: m.ptr,
        rs: m.cs,
        cs: m.rs,
    }
}

/// Where query `i` may look: keys `lo..=i` when its segment is one
/// contiguous run ending at `i` (always, without segments), else
/// (a segment id reused earlier in the row) `Scattered`, masked key by key.
#[derive(Clone, Copy)]
enum Visible {
    Run { lo: usize },
    Scattered,
}

/// [`Visible`] for every query of one row's `segments [T]`, in O(T): a
/// query's keys are one run exactly when its id first occurs where that run
/// starts. The window narrows a run from the left.
fn visible_keys(segments: Option<&[u32]>, sh: Shape) -> Vec<Visible> {
    let Some(segments) = segments else {
        return (0..sh.t)
            .map(|i| Visible::Run {
                lo: sh.window_lo(i),
            })
            .collect();
    };
    let mut first = std::collections::HashMap::new();
    let mut lo = 0;
    let mut out = Vec::with_capacity(segments.len());
    for (i, &s) in segments.iter().enumerate() {
        if i > 0 && segments[i - 1] != s {
            lo = i;
        }
        out.push(if *first.entry(s).or_insert(i) == lo {
            Visible::Run {
                lo: lo.max(sh.window_lo(i)),
            }
        } else {
            Visible::Scattered
        });
    }
    out
}

/// Softmax of `row[..=i]` over the keys `j >= lo` with `segments[j] ==
/// segments[i]`; every other entry of `row` becomes exactly 0.
fn softmax_same_segment(row: &mut [f32], segments: &[u32], i: usize, lo: usize) {
    let s = segments[i];
    let keep = |j: usize| j >= lo && segments[j] == s;
    let m = (0..=i)
        .filter(|&j| keep(j))
        .map(|j| row[j])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for (j, v) in row[..=i].iter_mut().enumerate() {
        *v = if keep(j) { exp(*v - m) } else { 0.0 };
        total += *v;
    }
    let inv = 1.0 / total;
    row[..=i].iter_mut().for_each(|v| *v *= inv);
    row[i + 1..].fill(0.0);
}

/// Writes `out [B,T,nh*hd]` and the probabilities `att [B,nh,T,T]`. Query
/// `i` of batch row `b` sees keys `j <= i` (within the window, and with
/// `segments` only those of its own segment); masked probabilities are
/// stored as 0, so [`backward`] needs no mask (a zero probability
/// contributes nothing to dv, and its softmax gradient `a_j (d_j - s)` is 0).
pub fn forward(
    engine: GemmEngine,
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    segments: Option<&[u32]>,
    sh: Shape,
    scale: f32,
) {
    let Shape { b, t, nh, hd, .. } = sh;
    let orow = sh.out_row();
    let visible: Vec<Vec<Visible>> = (0..b)
        .map(|bi| visible_keys(segments.map(|s| &s[bi * t..][..t]), sh))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    att[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, att_h)| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = qkv_views(qkv, sh, bi, h);
            let att_m = MatMut::row_major(att_h, t);
            let out_h = MatMut {
                // SAFETY: in bounds: the backend checked out holds B*T*nh*hd.
                ptr: unsafe { out_ptr.get().add(bi * t * orow + h * hd) },
                rs: orow as isize,
                cs: 1,
            };
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let rb = r1 - r0;
                // SAFETY: all views address memory inside their buffers (checked
                // by the backend); this task alone writes att_h and the columns
                // h*hd..(h+1)*hd of batch bi's rows of `out`.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        r1,
                        hd,
                        scale,
                        q.offset(r0, 0),
                        transposed(k),
                        0.0,
                        att_m.offset(r0, 0),
                    );
                }
                for i in r0..r1 {
                    let row = &mut att_h[i * t..(i + 1) * t];
                    match visible[bi][i] {
                        Visible::Run { lo } => {
                            row[..lo].fill(0.0);
                            softmax_in_place(&mut row[lo..=i]);
                            row[i + 1..].fill(0.0);
                        }
                        Visible::Scattered => {
                            let seg =
                                &segments.expect("scattered only with segments")[bi * t..][..t];
                            softmax_same_segment(row, seg, i, sh.window_lo(i))
                        }
                    }
                }
                let att_blk = Mat::row_major(&att_h[r0 * t..], t, false);
                // SAFETY: as above.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        hd,
                        r1,
                        1.0,
                        att_blk,
                        v,
                        0.0,
                        out_h.offset(r0, 0),
                    );
                }
            }
        });
}

/// Accumulates `dqkv` from `dout` and the saved `att`.
pub fn backward(
    engine: GemmEngine,
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    sh: Shape,
    scale: f32,
) {
    let Shape {
        b, t, nh, nkv, hd, ..
    } = sh;
    let (qrow, orow) = (sh.qkv_row(), sh.out_row());
    let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
    (0..b * nkv).into_par_iter().for_each(|bk| {
        let (bi, kvh) = (bk / nkv, bk % nkv);
        let mut datt = vec![0f32; BLOCK.min(t) * t];
        for h in kvh * sh.group()..(kvh + 1) * sh.group() {
            let (q, k, v) = qkv_views(qkv, sh, bi, h);
            let att_h = &att[(bi * nh + h) * t * t..][..t * t];
            let base = bi * t * qrow;
            let grad = |off: usize| MatMut {
                // SAFETY: in bounds (backend checked dqkv holds B*T*qkv_row).
                ptr: unsafe { dqkv_ptr.get().add(base + off) },
                rs: qrow as isize,
                cs: 1,
            };
            let (dq, dk, dv) = (
                grad(h * hd),
                grad((nh + kvh) * hd),
                grad((nh + nkv + kvh) * hd),
            );
            let dout_h = Mat {
                ptr: dout[bi * t * orow + h * hd..].as_ptr(),
                rs: orow as isize,
                cs: 1,
            };
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let rb = r1 - r0;
                let att_blk = Mat::row_major(&att_h[r0 * t..], t, false);
                let datt_m = MatMut::row_major(&mut datt, t);
                // SAFETY: views are in bounds; this task alone writes the
                // columns of query heads of group kvh and of key/value head
                // kvh of batch bi in dqkv, and its own scratch `datt`.
                unsafe {
                    // datt = dout_blk @ v[0..r1]^T
                    sgemm_serial(
                        engine,
                        rb,
                        r1,
                        hd,
                        1.0,
                        dout_h.offset(r0, 0),
                        transposed(v),
                        0.0,
                        datt_m,
                    );
                    // dv[0..r1] += att_blk^T @ dout_blk
                    sgemm_serial(
                        engine,
                        r1,
                        hd,
                        rb,
                        1.0,
                        transposed(att_blk),
                        dout_h.offset(r0, 0),
                        1.0,
                        dv,
                    );
                }
                // Softmax backward, with the scale folded in.
                for i in r0..r1 {
                    let a = &att_h[i * t..][..=i];
                    let d = &mut datt[(i - r0) * t..][..r1];
                    let s = dot(a, &d[..=i]);
                    for (dj, &aj) in d[..=i].iter_mut().zip(a) {
                        *dj = aj * (*dj - s) * scale;
                    }
                    d[i + 1..].fill(0.0);
                }
                let dpre = Mat::row_major(&datt, t, false);
                // SAFETY: as above.
                unsafe {
                    // dq_blk += dpre @ k[0..r1]
                    sgemm_serial(engine, rb, hd, r1, 1.0, dpre, k, 1.0, dq.offset(r0, 0));
                    // dk[0..r1] += dpre^T @ q_blk
                    sgemm_serial(
                        engine,
                        r1,
                        hd,
                        rb,
                        1.0,
                        transposed(dpre),
                        q.offset(r0, 0),
                        1.0,
                        dk,
                    );
                }
            }
        }
    });
}

/// Stores the new keys/values (`shape.t` = Tn new positions from `t_past`)
/// into the caches `[B, nkv, t_max, hd]`, then attends each new query to
/// cache positions `0..=its own` (within the window).
#[allow(clippy::too_many_arguments)]
pub fn kv_forward(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    sh: Shape,
    t_past: usize,
    t_max: usize,
    scale: f32,
) {
    let Shape {
        b,
        t: t_new,
        nh,
        nkv,
        hd,
        ..
    } = sh;
    let (qrow, orow, group) = (sh.qkv_row(), sh.out_row(), sh.group());
    k_cache[..b * nkv * t_max * hd]
        .par_chunks_mut(t_max * hd)
        .zip(v_cache[..b * nkv * t_max * hd].par_chunks_mut(t_max * hd))
        .enumerate()
        .for_each(|(bk, (kc, vc))| {
            let (bi, kvh) = (bk / nkv, bk % nkv);
            for i in 0..t_new {
                let src = (bi * t_new + i) * qrow;
                let dst = (t_past + i) * hd;
                kc[dst..dst + hd].copy_from_slice(&qkv[src + (nh + kvh) * hd..][..hd]);
                vc[dst..dst + hd].copy_from_slice(&qkv[src + (nh + nkv + kvh) * hd..][..hd]);
            }
        });
    let (k_cache, v_cache) = (&*k_cache, &*v_cache);
    out[..b * t_new * orow]
        .par_chunks_mut(orow)
        .enumerate()
        .for_each(|(row, o)| {
            let (bi, i) = (row / t_new, row % t_new);
            let pos = t_past + i;
            let (lo, len) = (sh.window_lo(pos), pos + 1);
            let mut p = vec![0f32; len - lo];
            for h in 0..nh {
                let kvh = h / group;
                let q = &qkv[row * qrow + h * hd..][..hd];
                let kc = &k_cache[(bi * nkv + kvh) * t_max * hd..];
                let vc = &v_cache[(bi * nkv + kvh) * t_max * hd..];
                for (j, pj) in (lo..len).zip(p.iter_mut()) {
                    *pj = dot(q, &kc[j * hd..][..hd]) * scale;
                }
                softmax_in_place(&mut p);
                let oh = &mut o[h * hd..][..hd];
                oh.fill(0.0);
                for (j, &pj) in (lo..len).zip(p.iter()) {
                    for (o, &vv) in oh.iter_mut().zip(&vc[j * hd..][..hd]) {
                        *o += pj * vv;
                    }
                }
            }
        });
}
