//! The op kernels, as plain functions over slices. Each one runs inside the
//! backend's rayon pool (the caller wraps it in `pool.install`), validates
//! nothing (the backend does that first), and splits its work into pieces
//! whose boundaries depend on the shapes only, never on the thread count, so
//! that results are bit-identical run after run and across thread counts.

/// Defines `fn $name(args)` that runs its body compiled for AVX2+FMA when the
/// CPU has them, else for the baseline target. The body is plain scalar
/// code the compiler vectorises; Rust never contracts `a * b + c` into an
/// FMA, so both versions give bit-identical results.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the running CPU supports the enabled features.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod cast;
pub mod crossentropy;
pub mod elementwise;
pub mod encoder;
pub mod fastmath;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod routing;
pub mod rows;
pub mod softmax;
pub mod swiglu;

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
#[inline(always)]
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
#[inline(always)]
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

/// Largest element, in a fixed order. NaNs are skipped here, but they still
/// reach the output through the softmax that uses this maximum.
#[inline(always)]
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
