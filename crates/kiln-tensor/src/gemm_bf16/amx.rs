//! The AMX-BF16 kernel (`TDPBF16PS` on 16x16 f32 tiles), written in inline
//! assembly (the AMX intrinsics are not stable Rust).
//!
//! Why: on Sapphire Rapids-class CPUs `VDPBF16PS` issues at half the rate of
//! `VFMADD231PS`, so an AVX512-BF16 GEMM tops out at the f32 GEMM's speed;
//! one `TDPBF16PS` does 16x16x32 multiply-adds.
//!
//! Layout (k padded with zeros to a multiple of 32, one k-block `kb` = 32):
//! - `A` in panels of 32 rows: `[panel][kb][row 32][pair 16]` u32, so the two
//!   A tiles of a k-block (rows 0-15, 16-31) are contiguous 1 KiB blocks.
//! - `B` in panels of 32 columns: `[panel][kb][half 2][pair 16][col 16]` u32
//!   (VNNI layout), one contiguous 1 KiB tile per 16 columns.
//! - The micro-kernel holds a 32x32 f32 output in tmm0-3 (A tiles tmm4-5, B
//!   tiles tmm6-7). A task (fixed [`TM`] x [`TN`] output) walks k in
//!   [`KC`]-blocks; between blocks the partial sums are stored to and
//!   reloaded from a task-local f32 buffer exactly, so the summation order is
//!   that of one uninterrupted pass: a function of the shape only.

use std::arch::asm;
use std::arch::x86_64::*;

use half::bf16;
use rayon::prelude::*;

use super::{for_each_tile, pair, with_buffer, Bf16Mat, Out};

/// Output rows / columns per task (multiples of 32).
const TM: usize = 128;
const TN: usize = 128;
/// k-blocks (of 32) per cache block.
const KBC: usize = 8;

/// Whether the CPU and OS run AMX-BF16 (asks Linux for the tile state once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(detect)
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    // SAFETY: cpuid/xgetbv are always present on x86_64 CPUs that report
    // OSXSAVE; arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) only
    // changes this process's permission.
    unsafe {
        let l1 = __cpuid(1);
        if l1.ecx & (1 << 27) == 0 {
            return false;
        }
        let l7 = __cpuid_count(7, 0);
        if l7.edx & (1 << 22) == 0 || l7.edx & (1 << 24) == 0 {
            return false;
        }
        let (lo, _hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi, options(nomem, nostack));
        if (lo >> 17) & 3 != 3 {
            return false;
        }
        let ret: i64;
        asm!(
            "syscall",
            inlateout("rax") 158i64 => ret, // SYS_arch_prctl
            in("rdi") 0x1023i64,            // ARCH_REQ_XCOMP_PERM
            in("rsi") 18i64,                // XFEATURE_XTILEDATA
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// Packs logical `a[m, k]` (see the module docs); `nkb` k-blocks of 32.
fn pack_a(a: Bf16Mat<'_>, m: usize, k: usize, nkb: usize, out: &mut [u32]) {
    let pack = |(p, dst): (usize, &mut [u32])| {
        let i0 = p * 32;
        let rows = 32.min(m - i0);
        if a.trans {
            // a is [k, m]: a k-pair is two rows of a; read 32 of each.
            let kp = k.div_ceil(2);
            for q in 0..nkb * 16 {
                let (kb, pp) = (q / 16, q % 16);
                let base = kb * 512 + pp;
                if q >= kp {
                    for r in 0..32 {
                        dst[base + r * 16] = 0;
                    }
                    continue;
                }
                let r0 = &a.data[2 * q * a.ld + i0..][..rows];
                let r1 = (2 * q + 1 < k).then(|| &a.data[(2 * q + 1) * a.ld + i0..][..rows]);
                for r in 0..32 {
                    dst[base + r * 16] = if r >= rows {
                        0
                    } else {
                        pair(r0[r].to_bits(), r1.map_or(0, |r1| r1[r].to_bits()))
                    };
                }
            }
        } else {
            // a is [m, k]: rows are contiguous along k.
            for r in 0..32 {
                if r >= rows {
                    for kb in 0..nkb {
                        dst[kb * 512 + r * 16..][..16].fill(0);
                    }
                    continue;
                }
                let row = &a.data[(i0 + r) * a.ld..][..k];
                for kb in 0..nkb {
                    let d = &mut dst[kb * 512 + r * 16..][..16];
                    let k0 = kb * 32;
                    if k0 + 32 <= k {
                        // Little-endian pairs are the row's own bytes.
                        let d: &mut [bf16] = bytemuck::cast_slice_mut(d);
                        d.copy_from_slice(&row[k0..k0 + 32]);
                    } else {
                        for (pp, d) in d.iter_mut().enumerate() {
                            let at = |kk: usize| row.get(kk).map_or(0, |x| x.to_bits());
                            *d = pair(at(k0 + 2 * pp), at(k0 + 2 * pp + 1));
                        }
                    }
                }
            }
        }
    };
    if m * k >= 1 << 16 {
        out.par_chunks_mut(nkb * 512).enumerate().for_each(pack);
    } else {
        out.chunks_mut(nkb * 512).enumerate().for_each(pack);
    }
}

/// Packs logical `b[k, n]` (see the module docs); `nkb` k-blocks of 32.
fn pack_b(b: Bf16Mat<'_>, n: usize, k: usize, nkb: usize, out: &mut [u32]) {
    let pack = |(p, dst): (usize, &mut [u32])| {
        let j0 = p * 32;
        let cols = 32.min(n - j0);
        let at = |c: usize| (c / 16) * 256 + c % 16;
        if b.trans {
            // b is [n, k]: a column is contiguous along k.
            for c in 0..32 {
                let o = at(c);
                if c >= cols {
                    for q in 0..nkb * 16 {
                        dst[(q / 16) * 512 + (q % 16) * 16 + o] = 0;
                    }
                    continue;
                }
                let col = &b.data[(j0 + c) * b.ld..][..k];
                let mut chunks = col.chunks_exact(2);
                let mut q = 0;
                for x in chunks.by_ref() {
                    dst[(q / 16) * 512 + (q % 16) * 16 + o] = pair(x[0].to_bits(), x[1].to_bits());
                    q += 1;
                }
                if let [x] = chunks.remainder() {
                    dst[(q / 16) * 512 + (q % 16) * 16 + o] = pair(x.to_bits(), 0);
                    q += 1;
                }
                for q in q..nkb * 16 {
                    dst[(q / 16) * 512 + (q % 16) * 16 + o] = 0;
                }
            }
        } else {
            // b is [k, n]: a k-pair is two rows of b; read 32 of each.
            let kp = k.div_ceil(2);
            for q in 0..nkb * 16 {
                let base = (q / 16) * 512 + (q % 16) * 16;
                if q >= kp {
                    for c in 0..32 {
                        dst[base + at(c)] = 0;
                    }
                    continue;
                }
                let r0 = &b.data[2 * q * b.ld + j0..][..cols];
                let r1 = (2 * q + 1 < k).then(|| &b.data[(2 * q + 1) * b.ld + j0..][..cols]);
                for c in 0..32 {
                    dst[base + at(c)] = if c >= cols {
                        0
                    } else {
                        pair(r0[c].to_bits(), r1.map_or(0, |r1| r1[c].to_bits()))
                    };
                }
            }
        }
    };
    if n * k >= 1 << 16 {
        out.par_chunks_mut(nkb * 512).enumerate().for_each(pack);
    } else {
        out.chunks_mut(nkb * 512).enumerate().for_each(pack);
    }
}

/// `c = alpha * op(a) @ op(b) + beta * c` (shapes checked by the caller,
/// `k > 0`, [`available`] true).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Bf16Mat<'_>,
    b: Bf16Mat<'_>,
    beta: f32,
    c: Out,
    parallel: bool,
) {
    let nkb = k.div_ceil(32);
    let (mp, np) = (m.div_ceil(32), n.div_ceil(32));
    with_buffer(0, mp * nkb * 512, |apack| {
        with_buffer(1, np * nkb * 512, |bpack| {
            pack_a(a, m, k, nkb, apack);
            pack_b(b, n, k, nkb, bpack);
            tiles(apack, bpack, m, n, nkb, alpha, beta, c, parallel)
        })
    })
}

/// Runs the tasks over packed operands.
#[allow(clippy::too_many_arguments)]
fn tiles(
    apack: &[u32],
    bpack: &[u32],
    m: usize,
    n: usize,
    nkb: usize,
    alpha: f32,
    beta: f32,
    c: Out,
    parallel: bool,
) {
    for_each_tile(m, n, TM, TN, parallel, |i0, i1, j0, j1| {
        // SAFETY: AMX is enabled (caller); the tile is inside `c` and no
        // other task writes it; packed panels hold `nkb` k-blocks.
        unsafe { tile(apack, bpack, nkb, i0, i1, j0, j1, alpha, beta, c) }
    });
}

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Palette 1, tiles 0-7 all 16 rows x 64 bytes.
const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// One task: output rows `i0..i1`, columns `j0..j1`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    apack: &[u32],
    bpack: &[u32],
    nkb: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    alpha: f32,
    beta: f32,
    c: Out,
) {
    let (mi, nj) = ((i1 - i0).div_ceil(32), (j1 - j0).div_ceil(32));
    // Partial sums: one 4 KiB block (tiles 0-3 of 16x16 f32) per micro-tile,
    // each stored before it is read (kb0 == 0 starts from tilezero).
    with_buffer(2, mi * nj * 1024, |acc| {
        tile_in(
            apack, bpack, nkb, i0, i1, j0, j1, alpha, beta, c, mi, nj, acc,
        )
    })
}

#[allow(clippy::too_many_arguments)]
unsafe fn tile_in(
    apack: &[u32],
    bpack: &[u32],
    nkb: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    alpha: f32,
    beta: f32,
    c: Out,
    mi: usize,
    nj: usize,
    acc: &mut [u32],
) {
    let acc: &mut [f32] = bytemuck::cast_slice_mut(acc);
    let direct = alpha == 1.0 && beta == 0.0;
    asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
    let stride = 64usize;
    let mut kb0 = 0;
    while kb0 < nkb {
        let kbs = KBC.min(nkb - kb0);
        for jj in 0..nj {
            let bp = bpack.as_ptr().add(((j0 / 32) + jj) * nkb * 512 + kb0 * 512);
            for ii in 0..mi {
                let ap = apack.as_ptr().add(((i0 / 32) + ii) * nkb * 512 + kb0 * 512);
                // Where the partial sums live: straight in `c` for a whole
                // micro-tile when nothing scales them (alpha = 1, beta = 0),
                // else in `acc` (for `store`). Tiles 0-3 at `cp + off[t]`,
                // rows `cs` bytes apart; loads and stores are exact.
                let (i, j) = (i0 + ii * 32, j0 + jj * 32);
                let (cp, cs, off) = if direct && i + 32 <= i1 && j + 32 <= j1 {
                    let cs = c.ld * 4;
                    (
                        c.ptr.add(i * c.ld + j).cast::<u8>(),
                        cs,
                        [0, 64, 16 * cs, 16 * cs + 64],
                    )
                } else {
                    (
                        acc.as_mut_ptr().add((jj * mi + ii) * 1024).cast::<u8>(),
                        64,
                        [0, 1024, 2048, 3072],
                    )
                };
                if kb0 == 0 {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nomem, nostack)
                    );
                } else {
                    asm!(
                        "tileloadd tmm0, [{c0} + {s}]",
                        "tileloadd tmm1, [{c1} + {s}]",
                        "tileloadd tmm2, [{c2} + {s}]",
                        "tileloadd tmm3, [{c3} + {s}]",
                        c0 = in(reg) cp.add(off[0]),
                        c1 = in(reg) cp.add(off[1]),
                        c2 = in(reg) cp.add(off[2]),
                        c3 = in(reg) cp.add(off[3]),
                        s = in(reg) cs,
                        options(nostack, readonly)
                    );
                }
                for kb in 0..kbs {
                    asm!(
                        "tileloadd tmm4, [{a} + {s}]",
                        "tileloadd tmm6, [{b} + {s}]",
                        "tileloadd tmm7, [{b} + {s} + 1024]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm5, [{a} + {s} + 1024]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a = in(reg) ap.add(kb * 512),
                        b = in(reg) bp.add(kb * 512),
                        s = in(reg) stride,
                        options(nostack, readonly)
                    );
                }
                asm!(
                    "tilestored [{c0} + {s}], tmm0",
                    "tilestored [{c1} + {s}], tmm1",
                    "tilestored [{c2} + {s}], tmm2",
                    "tilestored [{c3} + {s}], tmm3",
                    c0 = in(reg) cp.add(off[0]),
                    c1 = in(reg) cp.add(off[1]),
                    c2 = in(reg) cp.add(off[2]),
                    c3 = in(reg) cp.add(off[3]),
                    s = in(reg) cs,
                    options(nostack)
                );
            }
        }
        kb0 += kbs;
    }
    asm!("tilerelease", options(nomem, nostack));
    for jj in 0..nj {
        for ii in 0..mi {
            let (i, j) = (i0 + ii * 32, j0 + jj * 32);
            if direct && i + 32 <= i1 && j + 32 <= j1 {
                continue;
            }
            store(
                &acc[(jj * mi + ii) * 1024..][..1024],
                c.ptr.add(i * c.ld + j),
                c.ld,
                32.min(i1 - i),
                32.min(j1 - j),
                alpha,
                beta,
            );
        }
    }
}

/// `c = alpha * acc + beta * c` for one 32x32 micro-tile (`beta == 0`: `c`
/// unread), `acc` as tiles 0-3 of 16x16.
#[target_feature(enable = "avx512f")]
unsafe fn store(
    acc: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    let mask = |from: usize| -> __mmask16 {
        let w = cols.saturating_sub(from).min(16);
        ((1u32 << w) - 1) as u16
    };
    let (m0, m1) = (mask(0), mask(16));
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for r in 0..rows {
        let row = c.add(r * ldc);
        for (h, m) in [m0, m1].into_iter().enumerate() {
            if m == 0 {
                continue;
            }
            let t = (r / 16) * 2 + h;
            let x = _mm512_loadu_ps(acc.as_ptr().add(t * 256 + (r % 16) * 16));
            let p = row.add(16 * h);
            let x = _mm512_mul_ps(va, x);
            let v = if beta == 0.0 {
                x
            } else {
                _mm512_add_ps(x, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, p)))
            };
            _mm512_mask_storeu_ps(p, m, v);
        }
    }
}
