//! Strided f32 GEMM on top of a third-party micro-kernel library.
//!
//! Parallelism is ours, not the library's: a product is cut into chunks of
//! rows (or columns) whose size depends on the shape only, and each chunk is
//! one single-threaded library call inside the caller's rayon pool. Every
//! output element is therefore computed by exactly one call with a fixed
//! summation order, so results are bit-identical run after run *and* for any
//! thread count.

use rayon::prelude::*;

/// Which micro-kernel library runs a chunk (see docs/perf.md for figures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmEngine {
    /// The `gemm` crate (runtime-dispatched AVX2/AVX-512 kernels).
    Gemm,
    /// The `matrixmultiply` crate.
    MatrixMultiply,
}

/// Read-only strided matrix: element `(i, j)` lives at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// Writable strided matrix, same addressing as [`Mat`].
#[derive(Clone, Copy, Debug)]
pub struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: these are plain addresses; the functions that dereference them are
// `unsafe` and their callers guarantee validity and disjointness of writes.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl Mat {
    /// Row-major `rows x cols` slice (or its transpose when `trans`).
    pub fn row_major(data: &[f32], cols: usize, trans: bool) -> Mat {
        let (rs, cs) = if trans {
            (1, cols as isize)
        } else {
            (cols as isize, 1)
        };
        Mat {
            ptr: data.as_ptr(),
            rs,
            cs,
        }
    }
    /// # Safety
    /// The offset must stay inside the allocation the pointer came from.
    pub unsafe fn offset(self, i: usize, j: usize) -> Mat {
        Mat {
            ptr: self.ptr.offset(i as isize * self.rs + j as isize * self.cs),
            ..self
        }
    }
}

impl MatMut {
    pub fn row_major(data: &mut [f32], cols: usize) -> MatMut {
        MatMut {
            ptr: data.as_mut_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
    /// # Safety
    /// The offset must stay inside the allocation the pointer came from.
    pub unsafe fn offset(self, i: usize, j: usize) -> MatMut {
        MatMut {
            ptr: self.ptr.offset(i as isize * self.rs + j as isize * self.cs),
            ..self
        }
    }
}

/// Products smaller than this many multiply-adds run as one call.
const SERIAL_MACS: usize = 1 << 18;

/// `c[m,n] = alpha * a[m,k] @ b[k,n] + beta * c`, single-threaded.
/// `beta == 0` never reads `c` (old NaNs vanish).
///
/// # Safety
/// `a`, `b` must address valid `m x k` / `k x n` matrices, `c` a valid
/// `m x n` matrix that no other thread touches during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_serial(
    engine: GemmEngine,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: MatMut,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // The product is empty: only the beta term remains.
        for i in 0..m {
            for j in 0..n {
                let p = c.ptr.offset(i as isize * c.rs + j as isize * c.cs);
                *p = if beta == 0.0 { 0.0 } else { beta * *p };
            }
        }
        return;
    }
    match engine {
        GemmEngine::Gemm => gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            c.cs,
            c.rs,
            beta != 0.0,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        ),
        GemmEngine::MatrixMultiply => matrixmultiply::sgemm(
            m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs,
        ),
    }
}

/// Chunk length along the split dimension: a function of the shape only.
/// At least 256 rows/columns, because every chunk re-packs the whole other
/// operand (128 cost ~30% on 2048x1152x384 against PyTorch).
fn chunk_len(dim: usize) -> usize {
    dim.div_ceil(16).next_multiple_of(64).max(256)
}

/// Same contract as [`sgemm_serial`], spread over the current rayon pool in
/// shape-determined chunks (bit-identical for any thread count).
///
/// # Safety
/// As [`sgemm_serial`]; the caller must not touch `c` during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    engine: GemmEngine,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: MatMut,
) {
    let macs = m.saturating_mul(n).saturating_mul(k);
    if macs < SERIAL_MACS {
        return sgemm_serial(engine, m, n, k, alpha, a, b, beta, c);
    }
    if m >= n {
        let len = chunk_len(m);
        (0..m.div_ceil(len)).into_par_iter().for_each(|ci| {
            let r0 = ci * len;
            let rows = len.min(m - r0);
            // SAFETY: chunks cover disjoint row ranges of c.
            unsafe {
                sgemm_serial(
                    engine,
                    rows,
                    n,
                    k,
                    alpha,
                    a.offset(r0, 0),
                    b,
                    beta,
                    c.offset(r0, 0),
                )
            }
        });
    } else {
        let len = chunk_len(n);
        (0..n.div_ceil(len)).into_par_iter().for_each(|ci| {
            let c0 = ci * len;
            let cols = len.min(n - c0);
            // SAFETY: chunks cover disjoint column ranges of c.
            unsafe {
                sgemm_serial(
                    engine,
                    m,
                    cols,
                    k,
                    alpha,
                    a,
                    b.offset(0, c0),
                    beta,
                    c.offset(0, c0),
                )
            }
        });
    }
}
