//! bf16 x bf16 GEMM with f32 accumulation on the CPU's own bf16 units.
//!
//! Why: the widening path (16-bit operands converted to f32, then the f32
//! GEMM) makes a bf16 product cost as much as an f32 one plus two
//! conversions. Two native kernels, chosen once at run time
//! ([`best_kernel`]); callers keep the widening path where neither runs:
//! - AMX-BF16 (`amx.rs`, `TDPBF16PS` on 16x16 f32 tiles): 2-5x the f32
//!   GEMM on Sapphire Rapids-class CPUs. Off with `KILN_CPU_BF16_AMX=0`.
//! - AVX512-BF16 (this file, `VDPBF16PS`: bf16 pairs along k multiplied and
//!   accumulated in f32 lanes). On Sapphire Rapids it issues at half the
//!   rate of `VFMADD231PS`, so it is *slower* than the f32 GEMM there (hence
//!   AMX first); it pays where it issues at the FMA rate (e.g. Zen 4/5).
//!
//! AVX512-BF16 layout:
//! - Both operands are packed once per call (in parallel; packing is a pure
//!   copy, so it cannot affect results) into per-thread reused buffers. k is
//!   cut into pairs, an odd k is padded with a zero. `A` becomes panels of
//!   [`MR`] rows, each `[kpair][MR]` of u32 (one bf16 pair per row, broadcast
//!   by the kernel); `B` becomes panels of [`NR`] = 32 columns, each
//!   `[kpair][32]` of u32 (two zmm per k-pair). Tails are zero-padded panels.
//! - The micro-kernel keeps an `MR x 32` tile of f32 in 2*MR zmm registers
//!   and runs over one k-block of at most [`KC`] elements.
//!
//! Determinism (both kernels): the output is cut into tiles of fixed size;
//! each tile is one serial task that walks the k-blocks in order. Every
//! output element is therefore computed by one task with a fixed summation
//! order: bit-identical for any thread count.
//!
//! Semantics: `c = alpha * op(a) @ op(b) + beta * c`; `beta == 0` never reads
//! `c`. Like the instructions, subnormal bf16 inputs and subnormal f32
//! partial sums flush to zero (round to nearest even otherwise); results
//! differ from the widening path only in summation order and that flush.

use half::bf16;
use rayon::prelude::*;

/// Rows per micro-tile (broadcast side).
pub const MR: usize = 12;
/// Columns per micro-tile (two zmm of 16 f32).
pub const NR: usize = 32;
/// k elements per block (even).
pub const KC: usize = 384;
/// Output rows per task (a multiple of [`MR`]).
const TM: usize = 8 * MR;
/// Output columns per task (a multiple of [`NR`]).
const TN: usize = 8 * NR;
/// Products below this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

#[cfg(target_arch = "x86_64")]
mod amx;

/// Which instruction set runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX tiles (`TDPBF16PS`), see `amx.rs`.
    Amx,
    /// AVX512-BF16 (`VDPBF16PS`) on zmm registers, in this file.
    Avx512,
}

impl Bf16Kernel {
    /// Whether this CPU (and OS, for AMX) runs it; detected once.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Bf16Kernel::Amx => amx::available() && avx512_available(),
                Bf16Kernel::Avx512 => avx512_available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
    })
}

/// The kernel [`gemm_bf16`] uses: AMX where it runs (unless the environment
/// sets `KILN_CPU_BF16_AMX=0`), else AVX512-BF16, else none.
pub fn best_kernel() -> Option<Bf16Kernel> {
    use std::sync::OnceLock;
    static BEST: OnceLock<Option<Bf16Kernel>> = OnceLock::new();
    *BEST.get_or_init(|| {
        let amx_ok = std::env::var("KILN_CPU_BF16_AMX").map_or(true, |v| v.trim() != "0");
        [Bf16Kernel::Amx, Bf16Kernel::Avx512]
            .into_iter()
            .filter(|&k| k != Bf16Kernel::Amx || amx_ok)
            .find(|k| k.available())
    })
}

/// Whether this CPU runs a native bf16 kernel at all.
pub fn available() -> bool {
    best_kernel().is_some()
}

/// The default for new CPU backends: [`available`], unless the environment
/// sets `KILN_CPU_BF16_GEMM=0` (forces the widening f32 path).
pub fn enabled_by_env() -> bool {
    available() && std::env::var("KILN_CPU_BF16_GEMM").map_or(true, |v| v.trim() != "0")
}

/// A read-only row-major bf16 operand: `rows x cols` with row stride `ld`
/// (`trans`: the logical matrix is its transpose).
#[derive(Clone, Copy, Debug)]
pub struct Bf16Mat<'a> {
    pub data: &'a [bf16],
    pub ld: usize,
    pub trans: bool,
}

fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

#[inline(always)]
fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// Packs logical `a[m, k]` into `MR`-row panels of `[kpair][MR]` u32.
/// `d[i] = (x[2q][c0 + i], x[2q+1][c0 + i])` as k-pairs for `i < width`
/// (the odd row past `k` is zero), then zero padding: k-pair `q` of a
/// matrix whose k runs down its rows (transposed A, untransposed B).
fn pair_rows(d: &mut [u32], x: Bf16Mat<'_>, k: usize, q: usize, c0: usize, width: usize) {
    let r0 = &x.data[2 * q * x.ld + c0..][..width];
    if 2 * q + 1 < k {
        let r1 = &x.data[(2 * q + 1) * x.ld + c0..][..width];
        for ((d, x), y) in d.iter_mut().zip(r0).zip(r1) {
            *d = pair(x.to_bits(), y.to_bits());
        }
    } else {
        for (d, x) in d.iter_mut().zip(r0) {
            *d = pair(x.to_bits(), 0);
        }
    }
    d[width..].fill(0);
}

fn pack_a(a: Bf16Mat<'_>, m: usize, k: usize, kp: usize, out: &mut [u32]) {
    let pack = |(p, dst): (usize, &mut [u32])| {
        let i0 = p * MR;
        let rows = MR.min(m - i0);
        if a.trans {
            // a is [k, m]: a k-pair is two rows; read MR contiguous of each.
            for q in 0..kp {
                pair_rows(&mut dst[q * MR..][..MR], a, k, q, i0, rows);
            }
        } else {
            // a is [m, k]: a k-pair is two adjacent elements of a row.
            for r in 0..MR {
                if r >= rows {
                    for q in 0..kp {
                        dst[q * MR + r] = 0;
                    }
                    continue;
                }
                let row = &a.data[(i0 + r) * a.ld..][..k];
                let mut chunks = row.chunks_exact(2);
                for (q, c) in chunks.by_ref().enumerate() {
                    dst[q * MR + r] = pair(c[0].to_bits(), c[1].to_bits());
                }
                if let [x] = chunks.remainder() {
                    dst[(kp - 1) * MR + r] = pair(x.to_bits(), 0);
                }
            }
        }
    };
    if m * k >= 1 << 16 {
        out.par_chunks_mut(kp * MR).enumerate().for_each(pack);
    } else {
        out.chunks_mut(kp * MR).enumerate().for_each(pack);
    }
}

/// Packs logical `b[k, n]` into `NR`-column panels of `[kpair][NR]` u32.
fn pack_b(b: Bf16Mat<'_>, n: usize, k: usize, kp: usize, out: &mut [u32]) {
    let pack = |(p, dst): (usize, &mut [u32])| {
        let j0 = p * NR;
        let cols = NR.min(n - j0);
        if b.trans {
            // b is [n, k]: a column's k-pair is two adjacent elements.
            for c in 0..NR {
                if c >= cols {
                    for q in 0..kp {
                        dst[q * NR + c] = 0;
                    }
                    continue;
                }
                let col = &b.data[(j0 + c) * b.ld..][..k];
                let mut chunks = col.chunks_exact(2);
                for (q, x) in chunks.by_ref().enumerate() {
                    dst[q * NR + c] = pair(x[0].to_bits(), x[1].to_bits());
                }
                if let [x] = chunks.remainder() {
                    dst[(kp - 1) * NR + c] = pair(x.to_bits(), 0);
                }
            }
        } else {
            // b is [k, n]: a k-pair is two rows; read NR contiguous of each.
            for q in 0..kp {
                pair_rows(&mut dst[q * NR..][..NR], b, k, q, j0, cols);
            }
        }
    };
    if n * k >= 1 << 16 {
        out.par_chunks_mut(kp * NR).enumerate().for_each(pack);
    } else {
        out.chunks_mut(kp * NR).enumerate().for_each(pack);
    }
}

/// Runs `f` on a u32 buffer of `len` elements reused across calls on this
/// thread (`slot` picks one of a few), so repeated products neither fault in
/// fresh pages nor zero them. Its contents on entry are arbitrary: callers
/// write every element before reading it. A re-entrant call gets a fresh one.
fn with_buffer<R>(slot: usize, len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    use std::cell::RefCell;
    /// Larger buffers are freed after use.
    const KEEP: usize = 16 << 20;
    thread_local! {
        static BUFS: RefCell<[Vec<u32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
    }
    let mut buf = BUFS.with(|b| std::mem::take(&mut b.borrow_mut()[slot]));
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = f(&mut buf[..len]);
    if buf.len() <= KEEP {
        BUFS.with(|b| b.borrow_mut()[slot] = buf);
    }
    r
}

/// Writable output: element `(i, j)` at `ptr + i * ld + j`.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    ld: usize,
}
// SAFETY: tasks write disjoint tiles (see `gemm_bf16`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `c = alpha * op(a)[m,k] @ op(b)[k,n] + beta * c` over the current rayon
/// pool; `c` is row-major with row stride `ldc`.
///
/// # Panics
/// When the CPU lacks AVX512-BF16 (check [`available`]) or a slice is
/// shorter than the shape and leading dimensions address.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Bf16Mat<'_>,
    b: Bf16Mat<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let kernel = best_kernel().expect("gemm_bf16: this CPU lacks avx512bf16");
    gemm_bf16_with(kernel, m, n, k, alpha, a, b, beta, c, ldc)
}

/// As [`gemm_bf16`] with a chosen kernel (both paths are tested on CPUs
/// that run both).
///
/// # Panics
/// When `kernel` does not run here, or as [`gemm_bf16`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with(
    kernel: Bf16Kernel,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Bf16Mat<'_>,
    b: Bf16Mat<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        kernel.available(),
        "gemm_bf16: {kernel:?} does not run on this CPU"
    );
    if m == 0 || n == 0 {
        return;
    }
    let (ar, ac) = if a.trans { (k, m) } else { (m, k) };
    let (br, bc) = if b.trans { (n, k) } else { (k, n) };
    assert!(a.data.len() >= span(ar, ac, a.ld) && (ar <= 1 || a.ld >= ac));
    assert!(b.data.len() >= span(br, bc, b.ld) && (br <= 1 || b.ld >= bc));
    assert!(c.len() >= span(m, n, ldc) && (m <= 1 || ldc >= n));
    if k == 0 {
        for i in 0..m {
            for v in &mut c[i * ldc..][..n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return;
    }
    let out = Out {
        ptr: c.as_mut_ptr(),
        ld: ldc,
    };
    let parallel = m.saturating_mul(n).saturating_mul(k) >= SERIAL_MACS;
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Amx {
        return amx::gemm(m, n, k, alpha, a, b, beta, out, parallel);
    }
    let kp = k.div_ceil(2);
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    with_buffer(0, mp * kp * MR, |apack| {
        with_buffer(1, np * kp * NR, |bpack| {
            pack_a(a, m, k, kp, apack);
            pack_b(b, n, k, kp, bpack);
            avx512_tiles(apack, bpack, m, n, kp, alpha, beta, out, parallel)
        })
    })
}

/// Runs the AVX512-BF16 tasks over packed operands.
#[allow(clippy::too_many_arguments)]
fn avx512_tiles(
    apack: &[u32],
    bpack: &[u32],
    m: usize,
    n: usize,
    kp: usize,
    alpha: f32,
    beta: f32,
    out: Out,
    parallel: bool,
) {
    for_each_tile(m, n, TM, TN, parallel, |i0, i1, j0, j1| {
        // SAFETY: the feature is present (asserted above); tiles are
        // disjoint and inside `c` (checked above); packed panels hold
        // kp pairs per row/column.
        unsafe { tile(apack, bpack, kp, i0, i1, j0, j1, alpha, beta, out) }
    });
}

/// Calls `tile(i0, i1, j0, j1)` once for every `tm x tn` tile of an
/// `m x n` output, one task each (in parallel when asked). Each tile walks
/// k in order inside, so the result does not depend on the thread count.
fn for_each_tile(
    m: usize,
    n: usize,
    tm: usize,
    tn: usize,
    parallel: bool,
    tile: impl Fn(usize, usize, usize, usize) + Sync,
) {
    let tiles_n = n.div_ceil(tn);
    let task = |t: usize| {
        let (i0, j0) = ((t / tiles_n) * tm, (t % tiles_n) * tn);
        tile(i0, (i0 + tm).min(m), j0, (j0 + tn).min(n));
    };
    let count = m.div_ceil(tm) * tiles_n;
    if parallel {
        (0..count).into_par_iter().for_each(task);
    } else {
        (0..count).for_each(task);
    }
}

/// One task: output rows `i0..i1`, columns `j0..j1`, all k-blocks in order.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
unsafe fn tile(
    apack: &[u32],
    bpack: &[u32],
    kp: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    alpha: f32,
    beta: f32,
    c: Out,
) {
    let kcp = KC / 2;
    let mut q0 = 0;
    while q0 < kp {
        let q = kcp.min(kp - q0);
        let first = q0 == 0;
        let mut j = j0;
        while j < j1 {
            let bp = bpack.as_ptr().add((j / NR) * kp * NR + q0 * NR);
            let mut i = i0;
            while i < i1 {
                let ap = apack.as_ptr().add((i / MR) * kp * MR + q0 * MR);
                let cp = c.ptr.add(i * c.ld + j);
                kernel(
                    q,
                    ap,
                    bp,
                    cp,
                    c.ld,
                    MR.min(i1 - i),
                    NR.min(j1 - j),
                    alpha,
                    if first { beta } else { 1.0 },
                    first,
                );
                i += MR;
            }
            j += NR;
        }
        q0 += q;
    }
}

#[allow(clippy::too_many_arguments)]
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(
    _: &[u32],
    _: &[u32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: f32,
    _: f32,
    _: Out,
) {
    unreachable!("gemm_bf16 needs x86_64")
}

/// The `MR x NR` micro-kernel over `q` k-pairs: `c = alpha * acc + beta * c`
/// on the first k-block (`beta == 0`: `c` unread), `c += alpha * acc` after.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
unsafe fn kernel(
    q: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
    first: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    for p in 0..q {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        let ar = a.add(p * MR);
        for r in 0..MR {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ar.add(r) as i32));
            acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], av, b0);
            acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], av, b1);
        }
    }
    let m0: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        (1u32 << cols) as u16 - 1
    };
    let m1: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols <= 16 {
        0
    } else {
        (1u32 << (cols - 16)) as u16 - 1
    };
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (r, pair) in acc.chunks_exact(2).enumerate().take(rows) {
        let row = c.add(r * ldc);
        for (h, (&x, mask)) in pair.iter().zip([m0, m1]).enumerate() {
            if mask == 0 {
                continue;
            }
            let p = row.add(16 * h);
            let x = _mm512_mul_ps(va, x);
            let v = if first && beta == 0.0 {
                x
            } else if first {
                _mm512_add_ps(x, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask, p)))
            } else {
                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), x)
            };
            _mm512_mask_storeu_ps(p, mask, v);
        }
    }
}
