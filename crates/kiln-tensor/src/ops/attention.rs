//! Causal multi-head self-attention over `qkv [B,T,3C]`, with the softmax
//! probabilities `att [B,NH,T,T]` saved for backward.
//!
//! Each (batch, head) pair is one parallel task. Inside it, queries go in
//! blocks of [`BLOCK`] rows and every block is a few GEMM calls over only the
//! keys it can see (`0..block_end`), so the causal half is mostly skipped.

use rayon::prelude::*;

use super::fastmath::exp;
use super::{dot, max, sum, SendPtr};
use crate::gemm::{sgemm_serial, GemmEngine, Mat, MatMut};

/// Query rows per block.
const BLOCK: usize = 64;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
}

impl Shape {
    fn hs(&self) -> usize {
        self.c / self.nh
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hs() as f32).sqrt()
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

/// Views of q, k, v (each `[T, hs]`, row stride `3C`) of one (batch, head).
fn qkv_views(qkv: &[f32], sh: Shape, bi: usize, h: usize) -> (Mat, Mat, Mat) {
    let base = bi * sh.t * 3 * sh.c + h * sh.hs();
    let rs = 3 * sh.c as isize;
    let at = |off: usize| Mat {
        ptr: qkv[base + off..].as_ptr(),
        rs,
        cs: 1,
    };
    (at(0), at(sh.c), at(2 * sh.c))
}

/// Transposed view of a `[T, hs]` matrix with row stride `rs`.
fn transposed(m: Mat) -> Mat {
    Mat {
        ptr: m.ptr,
        rs: m.cs,
        cs: m.rs,
    }
}

pub fn forward(engine: GemmEngine, out: &mut [f32], att: &mut [f32], qkv: &[f32], sh: Shape) {
    let Shape { b, t, c, nh } = sh;
    let hs = sh.hs();
    let scale = sh.scale();
    let out_ptr = SendPtr(out.as_mut_ptr());
    att[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, att_h)| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = qkv_views(qkv, sh, bi, h);
            let att_m = MatMut::row_major(att_h, t);
            let out_h = MatMut {
                // SAFETY: in bounds: the backend checked out holds B*T*C.
                ptr: unsafe { out_ptr.get().add(bi * t * c + h * hs) },
                rs: c as isize,
                cs: 1,
            };
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let rb = r1 - r0;
                // SAFETY: all views address memory inside their buffers (checked
                // by the backend); this task alone writes att_h and the columns
                // h*hs..(h+1)*hs of batch bi's rows of `out`.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        r1,
                        hs,
                        scale,
                        q.offset(r0, 0),
                        transposed(k),
                        0.0,
                        att_m.offset(r0, 0),
                    );
                }
                for i in r0..r1 {
                    let row = &mut att_h[i * t..(i + 1) * t];
                    softmax_in_place(&mut row[..=i]);
                    row[i + 1..].fill(0.0);
                }
                let att_blk = Mat::row_major(&att_h[r0 * t..], t, false);
                // SAFETY: as above.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        hs,
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

/// Where query `i` of a packed row may look: keys `lo..=i` when its segment
/// is one contiguous run ending at `i` (the packed case), else (a segment id
/// reused earlier in the row) `Scattered`, masked key by key.
#[derive(Clone, Copy)]
enum Visible {
    Run { lo: usize },
    Scattered,
}

/// [`Visible`] for every query of one row's `segments [T]`, in O(T): a
/// query's keys are one run exactly when its id first occurs where that run
/// starts.
fn visible_keys(segments: &[u32]) -> Vec<Visible> {
    let mut first = std::collections::HashMap::new();
    let mut lo = 0;
    let mut out = Vec::with_capacity(segments.len());
    for (i, &s) in segments.iter().enumerate() {
        if i > 0 && segments[i - 1] != s {
            lo = i;
        }
        out.push(if *first.entry(s).or_insert(i) == lo {
            Visible::Run { lo }
        } else {
            Visible::Scattered
        });
    }
    out
}

/// Softmax of `row[..=i]` over the keys with `segments[j] == segments[i]`;
/// every other entry of `row` becomes exactly 0.
fn softmax_same_segment(row: &mut [f32], segments: &[u32], i: usize) {
    let s = segments[i];
    let keep = |j: usize| segments[j] == s;
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

/// [`forward`] for packed rows: query `i` of batch row `b` sees keys
/// `j <= i` with `segments[b,j] == segments[b,i]` only, and the masked
/// probabilities are stored as 0, so [`backward`] needs no change (a zero
/// probability contributes nothing to dv, and its softmax gradient
/// `a_j (d_j - s)` is 0). The scores are the same GEMMs as [`forward`]'s;
/// a query whose segment is one run `lo..=i` gets [`softmax_in_place`] on
/// exactly that run, so all-equal segments reproduce [`forward`] bit for bit.
pub fn forward_segments(
    engine: GemmEngine,
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    segments: &[u32],
    sh: Shape,
) {
    let Shape { b, t, c, nh } = sh;
    let hs = sh.hs();
    let scale = sh.scale();
    let visible: Vec<Vec<Visible>> = segments[..b * t].chunks(t).map(visible_keys).collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    att[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, att_h)| {
            let (bi, h) = (bh / nh, bh % nh);
            let seg = &segments[bi * t..][..t];
            let (q, k, v) = qkv_views(qkv, sh, bi, h);
            let att_m = MatMut::row_major(att_h, t);
            let out_h = MatMut {
                // SAFETY: in bounds: the backend checked out holds B*T*C.
                ptr: unsafe { out_ptr.get().add(bi * t * c + h * hs) },
                rs: c as isize,
                cs: 1,
            };
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let rb = r1 - r0;
                // SAFETY: as in `forward`: views inside their buffers; this
                // task alone writes att_h and head h's columns of row bi.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        r1,
                        hs,
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
                        Visible::Scattered => softmax_same_segment(row, seg, i),
                    }
                }
                let att_blk = Mat::row_major(&att_h[r0 * t..], t, false);
                // SAFETY: as above.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        hs,
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
) {
    let Shape { b, t, c, nh } = sh;
    let hs = sh.hs();
    let scale = sh.scale();
    let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / nh, bh % nh);
        let (q, k, v) = qkv_views(qkv, sh, bi, h);
        let att_h = &att[bh * t * t..][..t * t];
        let base = bi * t * 3 * c + h * hs;
        let grad = |off: usize| MatMut {
            // SAFETY: in bounds (backend checked dqkv holds B*T*3C).
            ptr: unsafe { dqkv_ptr.get().add(base + off) },
            rs: 3 * c as isize,
            cs: 1,
        };
        let (dq, dk, dv) = (grad(0), grad(c), grad(2 * c));
        let dout_h = Mat {
            ptr: dout[bi * t * c + h * hs..].as_ptr(),
            rs: c as isize,
            cs: 1,
        };
        let mut datt = vec![0f32; BLOCK.min(t) * t];
        for r0 in (0..t).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(t);
            let rb = r1 - r0;
            let att_blk = Mat::row_major(&att_h[r0 * t..], t, false);
            let datt_m = MatMut::row_major(&mut datt, t);
            // SAFETY: views are in bounds; this task alone writes the head-h
            // columns of batch bi in dqkv, and its own scratch `datt`.
            unsafe {
                // datt = dout_blk @ v[0..r1]^T
                sgemm_serial(
                    engine,
                    rb,
                    r1,
                    hs,
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
                    hs,
                    rb,
                    1.0,
                    transposed(att_blk),
                    dout_h.offset(r0, 0),
                    1.0,
                    dv,
                );
            }
            // Softmax backward, with the 1/sqrt(hs) scale folded in.
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
                sgemm_serial(engine, rb, hs, r1, 1.0, dpre, k, 1.0, dq.offset(r0, 0));
                // dk[0..r1] += dpre^T @ q_blk
                sgemm_serial(
                    engine,
                    r1,
                    hs,
                    rb,
                    1.0,
                    transposed(dpre),
                    q.offset(r0, 0),
                    1.0,
                    dk,
                );
            }
        }
    });
}

/// Cache layout `[B, NH, Tmax, hs]`.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
    pub b: usize,
    pub t_new: usize,
    pub t_past: usize,
    pub t_max: usize,
    pub c: usize,
    pub nh: usize,
}

/// Stores the new keys/values into the caches, then attends each new query
/// to cache positions `0..=its own`.
pub fn kv_forward(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    s: KvShape,
) {
    let KvShape {
        b,
        t_new,
        t_past,
        t_max,
        c,
        nh,
    } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    k_cache[..b * nh * t_max * hs]
        .par_chunks_mut(t_max * hs)
        .zip(v_cache[..b * nh * t_max * hs].par_chunks_mut(t_max * hs))
        .enumerate()
        .for_each(|(bh, (kc, vc))| {
            let (bi, h) = (bh / nh, bh % nh);
            for i in 0..t_new {
                let src = (bi * t_new + i) * 3 * c + h * hs;
                let dst = (t_past + i) * hs;
                kc[dst..dst + hs].copy_from_slice(&qkv[src + c..][..hs]);
                vc[dst..dst + hs].copy_from_slice(&qkv[src + 2 * c..][..hs]);
            }
        });
    let (k_cache, v_cache) = (&*k_cache, &*v_cache);
    out[..b * t_new * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(row, o)| {
            let (bi, i) = (row / t_new, row % t_new);
            let len = t_past + i + 1;
            let mut p = vec![0f32; len];
            for h in 0..nh {
                let q = &qkv[row * 3 * c + h * hs..][..hs];
                let kc = &k_cache[(bi * nh + h) * t_max * hs..];
                let vc = &v_cache[(bi * nh + h) * t_max * hs..];
                for (j, pj) in p.iter_mut().enumerate() {
                    *pj = dot(q, &kc[j * hs..][..hs]) * scale;
                }
                softmax_in_place(&mut p);
                let oh = &mut o[h * hs..][..hs];
                oh.fill(0.0);
                for (j, &pj) in p.iter().enumerate() {
                    for (o, &vv) in oh.iter_mut().zip(&vc[j * hs..][..hs]) {
                        *o += pj * vv;
                    }
                }
            }
        });
}
