//! The op kernels, as plain functions over slices. Each one runs inside the
//! backend's rayon pool (the caller wraps it in `pool.install`), validates
//! nothing (the backend does that first), and splits its work into pieces
//! whose boundaries depend on the shapes only, never on the thread count, so
//! that results are bit-identical run after run and across thread counts.

pub mod adamw;
pub mod attention;
pub mod crossentropy;
pub mod elementwise;
pub mod encoder;
pub mod gelu;
pub mod layernorm;
pub mod matmul;

/// Elements per parallel task in elementwise loops.
pub(crate) const CHUNK: usize = 1 << 14;

/// A raw pointer that may cross threads. Used where parallel tasks write
/// disjoint but interleaved parts of one buffer (e.g. the columns of one
/// attention head); each use states why the writes are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: see the type's docs; dereferences are in `unsafe` blocks whose
// callers guarantee disjointness.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. A method, so closures capture the whole `SendPtr` (a
    /// field access would capture the bare, non-`Send` pointer).
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Sum with eight independent lanes so the compiler can vectorise it. The
/// association order is fixed by the length, hence deterministic.
#[inline]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        s += v;
    }
    s
}

/// Dot product with the same fixed eight-lane order as [`sum`].
#[inline]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut acc = [0f32; 8];
    let n8 = x.len() / 8 * 8;
    for (cx, cy) in x[..n8].chunks_exact(8).zip(y[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += cx[l] * cy[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in x[n8..].iter().zip(&y[n8..]) {
        s += a * b;
    }
    s
}

/// Largest element (the first `max` in a fixed order; NaN-propagating is not
/// needed because softmax inputs are validated finite by the model's loss checks).
#[inline]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in rest {
        m = m.max(v);
    }
    m
}
