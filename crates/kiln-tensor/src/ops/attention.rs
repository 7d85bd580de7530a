//! Causal (grouped-query, optionally windowed, optionally packed) self-attention
//! over `qkv [B,T,(nh+2nkv)*hd]`, flash style: the forward saves only
//! [`ROW_STATS`] floats per (batch, query head, query row), the softmax's max
//! and the reciprocal of its sum, and the backward recomputes the
//! probabilities block by block from them (the same score GEMM, exponential
//! and rounding as the forward's). Nothing of size `T*T` is kept; each task's temporaries are one
//! block of query rows by the keys it can see.
//!
//! Forward: each (batch, query head) is one parallel task. Inside it, queries
//! go in blocks of [`BLOCK`] rows and every block is a few GEMM calls over
//! only the keys it can see (from the leftmost key any of its rows sees, by
//! the window or its segment, to the block's end), so the causal half is
//! mostly skipped. Backward: each (batch, key/value head) is one task that
//! runs its query heads in order, so the shared dk/dv sums have a fixed order
//! (with `nh == nkv` this is exactly the multi-head computation) and results
//! are the same for any thread count.

use rayon::prelude::*;

use super::fastmath::exp;
use super::{dot, max, sum, SendPtr};
use crate::gemm::{sgemm_serial, GemmEngine, Mat, MatMut};

/// Query rows per block.
const BLOCK: usize = 64;

/// f32 statistics the workspace holds per (batch, query head, query row),
/// laid out `[B, nh, T, ROW_STATS]`: the row's max scaled score `m` and the
/// reciprocal `1/l` of its sum of exponentials `l = sum_j exp(s_j - m)`
/// (together, the log-sum-exp `m + ln l`, kept in this form so the backward
/// recomputes exactly the forward's probabilities `exp(s_j - m) / l`).
pub const ROW_STATS: usize = 2;

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
    /// In-place softmax of `row`; deterministic order. Returns the max and
    /// the reciprocal of the sum of exponentials (see [`ROW_STATS`]).
    fn softmax_stats(row: &mut [f32]) -> (f32, f32) {
        let m = max(row);
        // Two passes so both vectorise: exponentials, then a lane-wise sum.
        for v in row.iter_mut() {
            *v = exp(*v - m);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
        (m, inv)
    }
}

/// In-place softmax of `row`; deterministic order.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    softmax_stats(row);
}

simd_fn! {
    /// `row[j] = exp(row[j] - m) * inv`: the probabilities [`softmax_stats`]
    /// wrote, recomputed from the scores and its statistics (bit for bit: the
    /// same exponential and one rounding of the same product).
    fn probabilities_from_stats(row: &mut [f32], m: f32, inv: f32) {
        for v in row.iter_mut() {
            *v = exp(*v - m) * inv;
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

/// Softmax over the keys `j` in `lo..=i` with `segments[j] == segments[i]` of
/// `row`, which holds the scores of keys `klo..klo + row.len()`; every other
/// entry becomes exactly 0. Returns the statistics (see [`ROW_STATS`]).
fn softmax_same_segment(
    row: &mut [f32],
    segments: &[u32],
    i: usize,
    lo: usize,
    klo: usize,
) -> (f32, f32) {
    let s = segments[i];
    let keep = |j: usize| j >= lo && segments[j] == s;
    let row = &mut row[..=i - klo];
    let m = (klo..=i)
        .filter(|&j| keep(j))
        .map(|j| row[j - klo])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for (j, v) in (klo..).zip(row.iter_mut()) {
        *v = if keep(j) { exp(*v - m) } else { 0.0 };
        total += *v;
    }
    let inv = 1.0 / total;
    row.iter_mut().for_each(|v| *v *= inv);
    (m, inv)
}

/// The keys of query rows `r0..r1` of one batch row: one block of scores
/// covers keys `lo..r1`, `lo` the leftmost key any of the rows may see.
fn block_keys(visible: &[Visible], sh: Shape, r0: usize, r1: usize) -> usize {
    (r0..r1)
        .map(|i| match visible[i] {
            Visible::Run { lo } => lo,
            Visible::Scattered => sh.window_lo(i),
        })
        .min()
        .unwrap_or(r0)
}

/// Where the saved statistics of one row or recomputed probabilities come
/// from: the mask of query `i`, over a block row of keys `klo..`.
struct RowMask<'a> {
    visible: Visible,
    segments: Option<&'a [u32]>,
    i: usize,
    klo: usize,
}

impl RowMask<'_> {
    /// The local range of `row` the softmax covers; outside it every entry
    /// is exactly 0 (for `Scattered`, entries inside may be 0 too).
    fn range(&self, sh: Shape) -> std::ops::RangeInclusive<usize> {
        let lo = match self.visible {
            Visible::Run { lo } => lo,
            Visible::Scattered => sh.window_lo(self.i),
        };
        lo - self.klo..=self.i - self.klo
    }

    fn segments(&self) -> &[u32] {
        self.segments.expect("scattered only with segments")
    }

    /// Scores to probabilities in place; returns the statistics.
    fn softmax(&self, row: &mut [f32], sh: Shape) -> (f32, f32) {
        let r = self.range(sh);
        let stats = match self.visible {
            Visible::Run { .. } => softmax_stats(&mut row[r.clone()]),
            Visible::Scattered => {
                softmax_same_segment(row, self.segments(), self.i, sh.window_lo(self.i), self.klo)
            }
        };
        row[..*r.start()].fill(0.0);
        row[r.end() + 1..].fill(0.0);
        stats
    }

    /// Scores to the probabilities [`RowMask::softmax`] wrote, from its
    /// statistics.
    fn recompute(&self, row: &mut [f32], sh: Shape, (m, inv): (f32, f32)) {
        let r = self.range(sh);
        probabilities_from_stats(&mut row[r.clone()], m, inv);
        if let Visible::Scattered = self.visible {
            let (seg, s) = (self.segments(), self.segments()[self.i]);
            for (j, v) in (self.klo + r.start()..).zip(&mut row[r.clone()]) {
                if seg[j] != s {
                    *v = 0.0;
                }
            }
        }
        row[..*r.start()].fill(0.0);
        row[r.end() + 1..].fill(0.0);
    }
}

/// Writes `out [B,T,nh*hd]` and the per-row statistics `stats [B,nh,T,
/// ROW_STATS]`. Query `i` of batch row `b` sees keys `j <= i` (within the
/// window, and with `segments` only those of its own segment).
pub fn forward(
    engine: GemmEngine,
    out: &mut [f32],
    stats: &mut [f32],
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
    stats[..b * nh * t * ROW_STATS]
        .par_chunks_mut(t * ROW_STATS)
        .enumerate()
        .for_each(|(bh, stats_h)| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = qkv_views(qkv, sh, bi, h);
            let seg = segments.map(|s| &s[bi * t..][..t]);
            let out_h = MatMut {
                // SAFETY: in bounds: the backend checked out holds B*T*nh*hd.
                ptr: unsafe { out_ptr.get().add(bi * t * orow + h * hd) },
                rs: orow as isize,
                cs: 1,
            };
            // Scores, then probabilities, of one block: rb x (visible keys).
            let mut p = vec![0f32; BLOCK.min(t) * t];
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let (rb, klo) = (r1 - r0, block_keys(&visible[bi], sh, r0, r1));
                let w = r1 - klo;
                // SAFETY: all views address memory inside their buffers (checked
                // by the backend); this task alone writes its scratch `p` and
                // the columns h*hd..(h+1)*hd of batch bi's rows of `out`.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        w,
                        hd,
                        scale,
                        q.offset(r0, 0),
                        transposed(k.offset(klo, 0)),
                        0.0,
                        MatMut::row_major(&mut p, w),
                    );
                }
                for (i, row) in (r0..r1).zip(p.chunks_exact_mut(w)) {
                    let mask = RowMask {
                        visible: visible[bi][i],
                        segments: seg,
                        i,
                        klo,
                    };
                    let (m, inv) = mask.softmax(row, sh);
                    stats_h[i * ROW_STATS] = m;
                    stats_h[i * ROW_STATS + 1] = inv;
                }
                // SAFETY: as above.
                unsafe {
                    sgemm_serial(
                        engine,
                        rb,
                        hd,
                        w,
                        1.0,
                        Mat::row_major(&p, w, false),
                        v.offset(klo, 0),
                        0.0,
                        out_h.offset(r0, 0),
                    );
                }
            }
        });
}

/// Accumulates `dqkv` from `dout`, recomputing the probabilities from `qkv`
/// and the forward's `stats` (`segments` as in that forward).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    engine: GemmEngine,
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    stats: &[f32],
    segments: Option<&[u32]>,
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
        let seg = segments.map(|s| &s[bi * t..][..t]);
        let visible = visible_keys(seg, sh);
        // One block's probabilities and their gradient: rb x (visible keys).
        let mut p = vec![0f32; BLOCK.min(t) * t];
        let mut dp = vec![0f32; BLOCK.min(t) * t];
        for h in kvh * sh.group()..(kvh + 1) * sh.group() {
            let (q, k, v) = qkv_views(qkv, sh, bi, h);
            let stats_h = &stats[(bi * nh + h) * t * ROW_STATS..][..t * ROW_STATS];
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
                let (rb, klo) = (r1 - r0, block_keys(&visible, sh, r0, r1));
                let w = r1 - klo;
                // SAFETY: views are in bounds; this task alone writes the
                // columns of query heads of group kvh and of key/value head
                // kvh of batch bi in dqkv, and its own scratch `p`, `dp`.
                unsafe {
                    // p = scale * q_blk @ k[klo..r1]^T, the forward's scores
                    sgemm_serial(
                        engine,
                        rb,
                        w,
                        hd,
                        scale,
                        q.offset(r0, 0),
                        transposed(k.offset(klo, 0)),
                        0.0,
                        MatMut::row_major(&mut p, w),
                    );
                    // dp = dout_blk @ v[klo..r1]^T
                    sgemm_serial(
                        engine,
                        rb,
                        w,
                        hd,
                        1.0,
                        dout_h.offset(r0, 0),
                        transposed(v.offset(klo, 0)),
                        0.0,
                        MatMut::row_major(&mut dp, w),
                    );
                }
                // Probabilities (masked entries exactly 0), then the softmax
                // backward with the scale folded in: ds = p (dp - p.dp) scale.
                for ((i, row), d) in (r0..r1)
                    .zip(p.chunks_exact_mut(w))
                    .zip(dp.chunks_exact_mut(w))
                {
                    let mask = RowMask {
                        visible: visible[i],
                        segments: seg,
                        i,
                        klo,
                    };
                    let st = (stats_h[i * ROW_STATS], stats_h[i * ROW_STATS + 1]);
                    mask.recompute(row, sh, st);
                    let r = mask.range(sh);
                    let s = dot(&row[r.clone()], &d[r.clone()]);
                    for (dj, &pj) in d[r.clone()].iter_mut().zip(&row[r.clone()]) {
                        *dj = pj * (*dj - s) * scale;
                    }
                    d[..*r.start()].fill(0.0);
                    d[r.end() + 1..].fill(0.0);
                }
                let (pm, dsm) = (Mat::row_major(&p, w, false), Mat::row_major(&dp, w, false));
                // SAFETY: as above.
                unsafe {
                    // dv[klo..r1] += p^T @ dout_blk
                    sgemm_serial(
                        engine,
                        w,
                        hd,
                        rb,
                        1.0,
                        transposed(pm),
                        dout_h.offset(r0, 0),
                        1.0,
                        dv.offset(klo, 0),
                    );
                    // dq_blk += ds @ k[klo..r1]
                    sgemm_serial(
                        engine,
                        rb,
                        hd,
                        w,
                        1.0,
                        dsm,
                        k.offset(klo, 0),
                        1.0,
                        dq.offset(r0, 0),
                    );
                    // dk[klo..r1] += ds^T @ q_blk
                    sgemm_serial(
                        engine,
                        w,
                        hd,
                        rb,
                        1.0,
                        transposed(dsm),
                        q.offset(r0, 0),
                        1.0,
                        dk.offset(klo, 0),
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
