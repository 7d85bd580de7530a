//! `out = alpha * op(a) @ op(b) + beta * out + bias`, and the bias gradient.

use rayon::prelude::*;

use crate::gemm::{sgemm, GemmEngine, Mat, MatMut};

/// Shapes, leading dimensions (row strides, already resolved: never 0) and
/// scalars of one product (validated by the backend).
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// Elements a strided `rows x cols` matrix with row stride `ld` spans.
pub fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

pub fn forward(
    engine: GemmEngine,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    d: Dims,
) {
    let out = &mut out[..span(d.m, d.n, d.ldc)];
    // a is [m,k] or, transposed, [k,m]; b is [k,n] or [n,k]; rows `ld` apart.
    let a_view = Mat::row_major(a, d.lda, d.trans_a);
    let b_view = Mat::row_major(b, d.ldb, d.trans_b);
    // SAFETY: the backend checked that a, b and out hold at least the
    // elements these views address, and `out` is borrowed mutably here.
    unsafe {
        sgemm(
            engine,
            d.m,
            d.n,
            d.k,
            d.alpha,
            a_view,
            b_view,
            d.beta,
            MatMut::row_major(out, d.ldc),
        )
    };
    if let Some(bias) = bias {
        let bias = &bias[..d.n];
        out.par_chunks_mut(d.ldc).for_each(|row| {
            for (o, b) in row[..d.n].iter_mut().zip(bias) {
                *o += b;
            }
        });
    }
}

/// The fused GELU epilogue: `out = gelu(pre)` over a strided `[m, n]`.
pub fn gelu_epilogue(out: &mut [f32], pre: &[f32], d: Dims) {
    if d.m == 0 || d.n == 0 {
        return;
    }
    out.par_chunks_mut(d.ldc)
        .zip(pre.par_chunks(d.ldc))
        .for_each(|(o, p)| super::gelu::forward_chunk(&mut o[..d.n], &p[..d.n]));
}

/// Columns per task in [`bias_backward`].
const BIAS_COLS: usize = 64;

/// `dbias[j] += sum_i dout[i, j]`; each task owns a column block and sums
/// rows in order (deterministic for any thread count).
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, cols: usize) {
    dbias[..cols]
        .par_chunks_mut(BIAS_COLS)
        .enumerate()
        .for_each(|(blk, db)| {
            let c0 = blk * BIAS_COLS;
            let w = db.len();
            let mut acc = [0f32; BIAS_COLS];
            for r in 0..rows {
                let row = &dout[r * cols + c0..][..w];
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            for (d, a) in db.iter_mut().zip(&acc) {
                *d += a;
            }
        });
}
