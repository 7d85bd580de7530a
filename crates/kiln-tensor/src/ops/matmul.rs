//! `out = alpha * op(a) @ op(b) + beta * out + bias`, and the bias gradient.

use std::borrow::Cow;

use half::bf16;
use rayon::prelude::*;

use crate::gemm::{sgemm, GemmEngine, Mat, MatMut};
use crate::gemm_bf16::{gemm_bf16, Bf16Mat};

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

/// The two operands of a product: f32 (borrowed or widened) for the f32
/// GEMM, or both bf16 for the native kernel ([`crate::gemm_bf16`]).
pub enum Operands<'a> {
    F32(Cow<'a, [f32]>, Cow<'a, [f32]>),
    Bf16(&'a [bf16], &'a [bf16]),
}

pub fn forward(
    engine: GemmEngine,
    out: &mut [f32],
    operands: &Operands<'_>,
    bias: Option<&[f32]>,
    d: Dims,
) {
    let out = &mut out[..span(d.m, d.n, d.ldc)];
    match operands {
        Operands::F32(a, b) => {
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
        }
        Operands::Bf16(a, b) => gemm_bf16(
            d.m,
            d.n,
            d.k,
            d.alpha,
            Bf16Mat {
                data: a,
                ld: d.lda,
                trans: d.trans_a,
            },
            Bf16Mat {
                data: b,
                ld: d.ldb,
                trans: d.trans_b,
            },
            d.beta,
            out,
            d.ldc,
        ),
    }
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
