//! Buffers and views: allocation, host transfers, zero/copy/cast.

use abi_stable::std_types::ROption;
use half::slice::HalfFloatSliceExt;
use kiln_abi::{BufId, BufInfo, DType, HostRegion, Rounding};

use super::CpuBackend;
use crate::ops::cast::{self, Round};
use crate::validate::{ensure, FloatIn, RawFloatMut};

impl CpuBackend {
    pub(super) fn alloc_impl(&mut self, dtype: DType, len: usize) -> Result<BufId, String> {
        self.store.alloc(dtype, len)
    }

    pub(super) fn free_impl(&mut self, buf: BufId) -> Result<(), String> {
        self.store.free(buf)
    }

    pub(super) fn view_impl(
        &mut self,
        parent: BufId,
        offset: usize,
        len: usize,
    ) -> Result<BufId, String> {
        self.store.view(parent, offset, len)
    }

    pub(super) fn buffer_info_impl(&mut self, buf: BufId) -> Result<BufInfo, String> {
        self.store
            .info(buf)
            .map_err(|e| format!("buffer_info: {e}"))
    }

    pub(super) fn host_region_impl(&mut self, buf: BufId) -> Result<ROption<HostRegion>, String> {
        let r = self
            .store
            .region(buf)
            .map_err(|e| format!("host_region: {e}"))?;
        Ok(ROption::RSome(HostRegion {
            ptr: r.ptr,
            bytes: r.bytes(),
        }))
    }

    pub(super) fn upload_impl(&mut self, id: BufId, bytes: &[u8]) -> Result<(), String> {
        let op = "upload";
        self.exec(op, &[("buf", Some(id))], &[], |o| {
            let (len, dtype) = (o.len("buf"), o.dtype("buf"));
            ensure(bytes.len() == len * dtype.size(), op, || {
                format!(
                    "buffer {} is {len} {dtype} elements = {} bytes, got {} bytes",
                    id.0,
                    len * dtype.size(),
                    bytes.len()
                )
            })?;
            o.bytes_mut("buf", len)?.copy_from_slice(bytes);
            Ok(())
        })
    }

    pub(super) fn download_impl(&mut self, id: BufId, out: &mut [u8]) -> Result<(), String> {
        let op = "download";
        self.exec(op, &[], &[("buf", Some(id))], |o| {
            let (len, dtype) = (o.len("buf"), o.dtype("buf"));
            ensure(out.len() == len * dtype.size(), op, || {
                format!(
                    "buffer {} is {len} {dtype} elements = {} bytes, the destination holds {} bytes",
                    id.0,
                    len * dtype.size(),
                    out.len()
                )
            })?;
            out.copy_from_slice(o.bytes("buf", len)?);
            Ok(())
        })
    }

    pub(super) fn zero_impl(&mut self, id: BufId) -> Result<(), String> {
        self.exec("zero", &[("buf", Some(id))], &[], |o| {
            o.bytes_mut("buf", o.len("buf"))?.fill(0);
            Ok(())
        })
    }

    pub(super) fn copy_impl(&mut self, dst: BufId, src: BufId, n: usize) -> Result<(), String> {
        let op = "copy";
        self.exec(op, &[("dst", Some(dst))], &[("src", Some(src))], |o| {
            let (dd, sd) = (o.dtype("dst"), o.dtype("src"));
            ensure(dd == sd, op, || {
                format!(
                    "`dst` (buffer {}) is {dd} but `src` (buffer {}) is {sd}; use cast to convert",
                    dst.0, src.0
                )
            })?;
            let s = o.bytes("src", n)?;
            o.bytes_mut("dst", n)?.copy_from_slice(s);
            Ok(())
        })
    }

    pub(super) fn cast_impl(
        &mut self,
        dst: BufId,
        src: BufId,
        n: usize,
        rounding: Rounding,
        seed: u64,
    ) -> Result<(), String> {
        let op = "cast";
        let round = match rounding {
            Rounding::NearestEven => Round::NearestEven,
            Rounding::Stochastic => Round::Stochastic { seed },
        };
        self.exec(op, &[("dst", Some(dst))], &[("src", Some(src))], |o| {
            let s = o.float("src", n)?;
            // Same dtype: an exact copy (every rounding keeps exact values).
            match (o.raw_float_mut("dst", n)?, s) {
                (RawFloatMut::F32(d), s) => match s {
                    FloatIn::F32(s) => d.copy_from_slice(s),
                    FloatIn::BF16(s) => s.convert_to_f32_slice(d),
                    FloatIn::F16(s) => s.convert_to_f32_slice(d),
                },
                (RawFloatMut::BF16(d), FloatIn::BF16(s)) => d.copy_from_slice(s),
                (RawFloatMut::F16(d), FloatIn::F16(s)) => d.copy_from_slice(s),
                (RawFloatMut::BF16(d), s) => cast::to_bf16(d, &s.widen(), round),
                (RawFloatMut::F16(d), s) => cast::to_f16(d, &s.widen(), round),
            }
            Ok(())
        })
    }
}
