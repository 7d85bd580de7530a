//! Argument checking shared by every op: operands resolved to memory and
//! checked for overlap, typed slices with dtype and size checks, and
//! overflow-checked shape products. Errors name the op, the argument and the fix.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use half::{bf16, f16, slice::HalfFloatSliceExt};
use kiln_abi::{BufId, DType};
use rayon::prelude::*;

use crate::store::{Region, Store};

/// The resolved operands of one op call. Outputs were checked not to
/// overlap any other operand, so the `&mut` slices handed out never alias
/// another live slice; each output can be taken once.
pub struct Operands<'a> {
    op: &'static str,
    outs: Vec<(&'static str, Region)>,
    ins: Vec<(&'static str, Region)>,
    taken: AtomicU64,
    _store: PhantomData<&'a Store>,
}

/// Resolves `outs` and `ins` (absent optional operands are `None`) and
/// refuses an output that overlaps any other operand.
pub fn operands<'a>(
    store: &'a Store,
    op: &'static str,
    outs: &[(&'static str, Option<BufId>)],
    ins: &[(&'static str, Option<BufId>)],
) -> Result<Operands<'a>, String> {
    let resolve = |list: &[(&'static str, Option<BufId>)]| -> Result<Vec<_>, String> {
        list.iter()
            .filter_map(|&(name, id)| id.map(|id| (name, id)))
            .map(|(name, id)| {
                store
                    .region(id)
                    .map(|r| (name, r))
                    .map_err(|e| format!("{op}: argument `{name}`: {e}"))
            })
            .collect()
    };
    let (outs, ins) = (resolve(outs)?, resolve(ins)?);
    assert!(outs.len() <= 64, "at most 64 outputs per op");
    for (i, (name, r)) in outs.iter().enumerate() {
        let others = outs[i + 1..].iter().chain(&ins);
        if let Some((other, o)) = others.into_iter().find(|(_, o)| r.overlaps(o)) {
            return Err(format!(
                "{op}: output `{name}` (buffer {}) overlaps `{other}` (buffer {}) in memory; \
                 an output must not overlap another argument: use a separate buffer or non-overlapping views",
                r.id.0, o.id.0
            ));
        }
    }
    Ok(Operands {
        op,
        outs,
        ins,
        taken: AtomicU64::new(0),
        _store: PhantomData,
    })
}

/// A float input of any storage type.
pub enum FloatIn<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> FloatIn<'a> {
    /// As f32: borrowed when it is f32 (no copy), else widened.
    pub fn widen(self) -> Cow<'a, [f32]> {
        match self {
            FloatIn::F32(v) => Cow::Borrowed(v),
            FloatIn::BF16(v) => {
                // Collected straight into fresh capacity: no zeroing pass.
                let mut out = Vec::new();
                v.par_iter()
                    .with_min_len(CONVERT_CHUNK)
                    .map(|x| bf16_bits_to_f32(x.to_bits()))
                    .collect_into_vec(&mut out);
                Cow::Owned(out)
            }
            FloatIn::F16(v) => {
                let mut out = vec![0f32; v.len()];
                widen_into(v, &mut out);
                Cow::Owned(out)
            }
        }
    }
}

/// A float output's own storage, for ops that round it themselves.
pub enum RawFloatMut<'a> {
    F32(&'a mut [f32]),
    BF16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

/// A float output: the f32 buffer itself, or an f32 scratch copy of a
/// 16-bit buffer (widened, so accumulating ops and strided writes keep the
/// other elements) that [`FloatOut::finish`] rounds back once (nearest even).
pub enum FloatOut<'a> {
    F32(&'a mut [f32]),
    BF16(&'a mut [bf16], Vec<f32>),
    F16(&'a mut [f16], Vec<f32>),
}

impl FloatOut<'_> {
    pub fn f32(&mut self) -> &mut [f32] {
        match self {
            FloatOut::F32(v) => v,
            FloatOut::BF16(_, s) | FloatOut::F16(_, s) => s,
        }
    }

    /// Narrows a 16-bit output (a no-op for f32).
    pub fn finish(self) {
        match self {
            FloatOut::F32(_) => {}
            FloatOut::BF16(d, s) => {
                narrow_into(&s, d);
                recycle(s);
            }
            FloatOut::F16(d, s) => {
                narrow_into(&s, d);
                recycle(s);
            }
        }
    }
}

impl<'a> Operands<'a> {
    pub fn op(&self) -> &'static str {
        self.op
    }

    fn find_in(&self, name: &str) -> Option<Region> {
        self.ins.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    fn find_out(&self, name: &str) -> Option<(usize, Region)> {
        self.outs
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| (i, self.outs[i].1))
    }

    /// Whether an optional operand was given.
    pub fn has(&self, name: &str) -> bool {
        self.find_in(name).is_some() || self.find_out(name).is_some()
    }

    fn region(&self, name: &str) -> Region {
        self.find_in(name)
            .or_else(|| self.find_out(name).map(|(_, r)| r))
            .unwrap_or_else(|| panic!("{}: operand `{name}` was not declared", self.op))
    }

    /// Elements of an operand (a table whose row count the op does not know).
    pub fn len(&self, name: &str) -> usize {
        self.region(name).len
    }

    pub fn dtype(&self, name: &str) -> DType {
        self.region(name).dtype
    }

    fn check(&self, name: &str, r: &Region, need: usize, want: &[DType]) -> Result<(), String> {
        if !want.contains(&r.dtype) {
            let names: Vec<_> = want.iter().map(|d| d.name()).collect();
            return Err(format!(
                "{}: argument `{name}` (buffer {}) is {}, but this op needs {}",
                self.op,
                r.id.0,
                r.dtype,
                names.join(" or ")
            ));
        }
        if r.len < need {
            return Err(format!(
                "{}: argument `{name}` (buffer {}) holds {} elements but the given dimensions need {need}; \
                 allocate a larger buffer or pass smaller dimensions",
                self.op, r.id.0, r.len
            ));
        }
        Ok(())
    }

    /// # Safety (internal)
    /// `r` addresses `need <= r.len` elements of `T`'s dtype in a live
    /// allocation, aligned for `T` (allocations are 64-byte aligned and views
    /// start at element offsets).
    fn slice<T>(r: &Region, need: usize) -> &'a [T] {
        // SAFETY: see above; inputs only alias other shared slices (outputs
        // were checked not to overlap them).
        unsafe { std::slice::from_raw_parts(r.ptr as *const T, need) }
    }

    fn take(&self, name: &str) -> Result<Region, String> {
        let (i, r) = self
            .find_out(name)
            .unwrap_or_else(|| panic!("{}: output `{name}` was not declared", self.op));
        let bit = 1u64 << i;
        let before = self.taken.fetch_or(bit, Ordering::Relaxed);
        assert!(
            before & bit == 0,
            "{}: output `{name}` taken twice",
            self.op
        );
        Ok(r)
    }

    fn slice_mut<T>(r: &Region, need: usize) -> &'a mut [T] {
        // SAFETY: as `slice`; the output overlaps no other operand and is
        // taken once, so this is the only reference to its memory.
        unsafe { std::slice::from_raw_parts_mut(r.ptr as *mut T, need) }
    }

    pub fn f32(&self, name: &str, need: usize) -> Result<&'a [f32], String> {
        let r = self.region(name);
        self.check(name, &r, need, &[DType::F32])?;
        Ok(Self::slice(&r, need))
    }

    pub fn u32(&self, name: &str, need: usize) -> Result<&'a [u32], String> {
        let r = self.region(name);
        self.check(name, &r, need, &[DType::U32])?;
        Ok(Self::slice(&r, need))
    }

    /// An optional f32 input.
    pub fn f32_opt(&self, name: &str, need: usize) -> Result<Option<&'a [f32]>, String> {
        if self.has(name) {
            self.f32(name, need).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn u32_opt(&self, name: &str, need: usize) -> Result<Option<&'a [u32]>, String> {
        if self.has(name) {
            self.u32(name, need).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn float(&self, name: &str, need: usize) -> Result<FloatIn<'a>, String> {
        let r = self.region(name);
        self.check(name, &r, need, &[DType::F32, DType::BF16, DType::F16])?;
        Ok(match r.dtype {
            DType::F32 => FloatIn::F32(Self::slice(&r, need)),
            DType::BF16 => FloatIn::BF16(Self::slice(&r, need)),
            _ => FloatIn::F16(Self::slice(&r, need)),
        })
    }

    /// A float input as f32 (borrowed for f32, widened for 16-bit).
    pub fn widened(&self, name: &str, need: usize) -> Result<Cow<'a, [f32]>, String> {
        self.float(name, need).map(FloatIn::widen)
    }

    pub fn widened_opt(&self, name: &str, need: usize) -> Result<Option<Cow<'a, [f32]>>, String> {
        if self.has(name) {
            self.widened(name, need).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The raw bytes of the first `need` elements of any operand.
    pub fn bytes(&self, name: &str, need: usize) -> Result<&'a [u8], String> {
        let r = self.region(name);
        self.check(name, &r, need, &[r.dtype])?;
        Ok(Self::slice(&r, need * r.dtype.size()))
    }

    pub fn f32_mut(&self, name: &str, need: usize) -> Result<&'a mut [f32], String> {
        let r = self.take(name)?;
        self.check(name, &r, need, &[DType::F32])?;
        Ok(Self::slice_mut(&r, need))
    }

    pub fn u32_mut(&self, name: &str, need: usize) -> Result<&'a mut [u32], String> {
        let r = self.take(name)?;
        self.check(name, &r, need, &[DType::U32])?;
        Ok(Self::slice_mut(&r, need))
    }

    pub fn bytes_mut(&self, name: &str, need: usize) -> Result<&'a mut [u8], String> {
        let r = self.take(name)?;
        self.check(name, &r, need, &[r.dtype])?;
        Ok(Self::slice_mut(&r, need * r.dtype.size()))
    }

    pub fn f32_mut_opt(&self, name: &str, need: usize) -> Result<Option<&'a mut [f32]>, String> {
        if self.has(name) {
            self.f32_mut(name, need).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A float output of any storage type (see [`FloatOut`]).
    pub fn float_mut(&self, name: &str, need: usize) -> Result<FloatOut<'a>, String> {
        self.float_mut_with(name, need, true)
    }

    /// As [`Operands::float_mut`] for an op that overwrites all `need`
    /// elements without reading them: a 16-bit output's scratch is not
    /// widened (its contents are arbitrary until the op writes them).
    pub fn float_mut_overwrite(&self, name: &str, need: usize) -> Result<FloatOut<'a>, String> {
        self.float_mut_with(name, need, false)
    }

    fn float_mut_with(&self, name: &str, need: usize, widen: bool) -> Result<FloatOut<'a>, String> {
        let r = self.take(name)?;
        self.check(name, &r, need, &[DType::F32, DType::BF16, DType::F16])?;
        Ok(match r.dtype {
            DType::F32 => FloatOut::F32(Self::slice_mut(&r, need)),
            DType::BF16 => {
                let d: &mut [bf16] = Self::slice_mut(&r, need);
                let mut s = pooled_scratch(self.op, need)?;
                if widen {
                    widen_into(d, &mut s);
                }
                FloatOut::BF16(d, s)
            }
            _ => {
                let d: &mut [f16] = Self::slice_mut(&r, need);
                let mut s = pooled_scratch(self.op, need)?;
                if widen {
                    widen_into(d, &mut s);
                }
                FloatOut::F16(d, s)
            }
        })
    }

    pub fn raw_float_mut(&self, name: &str, need: usize) -> Result<RawFloatMut<'a>, String> {
        let r = self.take(name)?;
        self.check(name, &r, need, &[DType::F32, DType::BF16, DType::F16])?;
        Ok(match r.dtype {
            DType::F32 => RawFloatMut::F32(Self::slice_mut(&r, need)),
            DType::BF16 => RawFloatMut::BF16(Self::slice_mut(&r, need)),
            _ => RawFloatMut::F16(Self::slice_mut(&r, need)),
        })
    }

    pub fn float_mut_opt(&self, name: &str, need: usize) -> Result<Option<FloatOut<'a>>, String> {
        if self.has(name) {
            self.float_mut(name, need).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Rounds f32 values to the precision of `dtype` (kept in f32), so that a
/// later narrowing is exact: what an op goes on computing with equals what
/// it stores.
pub fn round_to(dtype: DType, x: &mut [f32]) {
    match dtype {
        DType::BF16 => x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        DType::F16 => x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32()),
        _ => {}
    }
}

/// Elements per task of the conversions below (elementwise, so the split
/// cannot change results).
const CONVERT_CHUNK: usize = 1 << 15;

/// 16-bit to f32 over the current rayon pool (`f` converts one chunk).
fn par_convert<S: Sync, D: Send>(src: &[S], dst: &mut [D], f: impl Fn(&[S], &mut [D]) + Sync) {
    if src.len() < CONVERT_CHUNK {
        return f(src, dst);
    }
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(d, s)| f(s, d));
}

/// `half`'s `bf16::to_f32`, branch-free so that it vectorizes (same bits,
/// NaNs quieted the same way).
#[inline(always)]
fn bf16_bits_to_f32(i: u16) -> f32 {
    let q = if i & 0x7FFF > 0x7F80 { i | 0x0040 } else { i };
    f32::from_bits((q as u32) << 16)
}

/// `half`'s `bf16::from_f32` (nearest even), branch-free (same bits).
#[inline(always)]
fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let up = (x & 0x8000 != 0) & (x & 0x17FFF != 0);
    let r = ((x >> 16) + up as u32) as u16;
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        ((x >> 16) | 0x0040) as u16
    } else {
        r
    }
}

/// Widens a 16-bit slice into `dst` over the current rayon pool.
pub trait Widen: Copy + Sync + Send {
    fn widen_into(src: &[Self], dst: &mut [f32]);
    fn narrow_into(src: &[f32], dst: &mut [Self]);
}

impl Widen for bf16 {
    fn widen_into(src: &[bf16], dst: &mut [f32]) {
        par_convert(src, dst, |s, d| {
            for (d, s) in d.iter_mut().zip(s) {
                *d = bf16_bits_to_f32(s.to_bits());
            }
        })
    }
    fn narrow_into(src: &[f32], dst: &mut [bf16]) {
        par_convert(src, dst, |s, d| {
            for (d, s) in d.iter_mut().zip(s) {
                *d = bf16::from_bits(f32_to_bf16_bits(*s));
            }
        })
    }
}

impl Widen for f16 {
    fn widen_into(src: &[f16], dst: &mut [f32]) {
        par_convert(src, dst, |s, d| s.convert_to_f32_slice(d))
    }
    fn narrow_into(src: &[f32], dst: &mut [f16]) {
        par_convert(src, dst, |s, d| d.convert_from_f32_slice(s))
    }
}

fn widen_into<T: Widen>(src: &[T], dst: &mut [f32]) {
    T::widen_into(src, dst)
}

fn narrow_into<T: Widen>(src: &[f32], dst: &mut [T]) {
    T::narrow_into(src, dst)
}

/// Scratch vectors of 16-bit outputs kept for reuse (at most this many,
/// none larger than [`POOL_MAX`] elements): repeated ops then neither fault
/// in fresh pages nor zero them.
const POOL_LEN: usize = 8;
const POOL_MAX: usize = 16 << 20;
static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// An f32 scratch of `n` elements with *arbitrary* contents (a recycled one
/// where the pool has one large enough): for a [`FloatOut`], whose scratch
/// is widened from the output or fully overwritten by the op.
fn pooled_scratch(op: &str, n: usize) -> Result<Vec<f32>, String> {
    let reused = POOL.lock().ok().and_then(|mut p| {
        let i = p.iter().position(|v| v.capacity() >= n)?;
        Some(p.swap_remove(i))
    });
    match reused {
        Some(mut v) => {
            // Only elements past its old length are written here.
            v.resize(n, 0.0);
            v.truncate(n);
            Ok(v)
        }
        None => scratch(op, n),
    }
}

fn recycle(v: Vec<f32>) {
    if v.capacity() > POOL_MAX || v.capacity() < CONVERT_CHUNK {
        return;
    }
    if let Ok(mut p) = POOL.lock() {
        if p.len() >= POOL_LEN {
            // Keep the larger ones.
            if let Some((i, _)) = p.iter().enumerate().min_by_key(|(_, x)| x.capacity()) {
                if p[i].capacity() < v.capacity() {
                    p[i] = v;
                }
            }
        } else {
            p.push(v);
        }
    }
}

/// A zeroed f32 scratch vector; an error instead of an abort when memory runs out.
pub fn scratch(op: &str, n: usize) -> Result<Vec<f32>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| format!("{op}: cannot allocate {n} f32 of scratch: {e}"))?;
    v.resize(n, 0.0);
    Ok(v)
}

/// Product of dimensions, or an error instead of a silent overflow.
pub fn product(op: &str, what: &str, dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("{op}: {what} = {dims:?} overflows usize"))
}

/// `Err` with the op's name when `ok` is false.
pub fn ensure(ok: bool, op: &str, msg: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{op}: {}", msg()))
    }
}

/// Whole rows of `c` elements in a buffer of `len` (0 when `c == 0`).
pub fn rows_of(len: usize, c: usize) -> usize {
    len.checked_div(c).unwrap_or(0)
}

/// Every index must address a row of a table of `rows` rows.
pub fn check_indices(
    op: &str,
    what: &str,
    table: &str,
    idx: &[u32],
    rows: usize,
    hint: &str,
) -> Result<(), String> {
    match idx.iter().position(|&t| t as usize >= rows) {
        Some(i) => Err(format!(
            "{op}: {what} {} at index {i} is outside `{table}` ({rows} rows); {hint}",
            idx[i]
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_conversions_match_half() {
        for i in 0..=u16::MAX {
            let want = bf16::from_bits(i).to_f32().to_bits();
            assert_eq!(bf16_bits_to_f32(i).to_bits(), want, "{i:#06x}");
        }
        let mut x = 0u32;
        let specials = [
            0x7F7F_8000u32,
            0x7F7F_7FFF,
            0x7F80_0000,
            0x7F80_0001,
            0xFFC0_0000,
            0x0000_8000,
            0x0001_8000,
            0x0000_8001,
            0x8000_8000,
            0x3F80_8000,
            0x3F81_8000,
        ];
        for &bits in specials.iter().chain(
            std::iter::from_fn(|| {
                x = x.wrapping_add(0x0001_0003);
                (x > 0x0001_0003).then_some(x)
            })
            .take(200_000)
            .collect::<Vec<_>>()
            .iter(),
        ) {
            let v = f32::from_bits(bits);
            assert_eq!(
                f32_to_bf16_bits(v),
                bf16::from_f32(v).to_bits(),
                "{bits:#010x}"
            );
        }
    }
}
