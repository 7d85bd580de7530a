//! Rust-side conveniences over the FFI-shaped [`Backend`] interface: typed
//! upload/download, shaped host arrays (ndarray) and `Result` instead of
//! `RResult`.

use abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};

use crate::backend::BackendBox;
use crate::dtype::{BufId, DType};

/// An error reported by a backend op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub String);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend: {}", self.0)
    }
}

impl std::error::Error for BackendError {}

impl From<RString> for BackendError {
    fn from(s: RString) -> Self {
        BackendError(s.into_string())
    }
}

pub type BResult<T> = Result<T, BackendError>;

/// Turns an FFI result into a Rust one: `backend.gelu_forward(..).ok_or_err()?`.
pub trait IntoBResult<T> {
    fn ok_or_err(self) -> BResult<T>;
}

impl<T> IntoBResult<T> for RResult<T, RString> {
    fn ok_or_err(self) -> BResult<T> {
        self.into_result().map_err(BackendError::from)
    }
}

/// Typed helpers every caller wants; implemented for [`BackendBox`].
pub trait BackendExt {
    fn alloc_buf(&mut self, dtype: DType, len: usize) -> BResult<BufId>;
    fn upload_f32(&mut self, buf: BufId, data: &[f32]) -> BResult<()>;
    fn upload_u32(&mut self, buf: BufId, data: &[u32]) -> BResult<()>;
    fn upload_bf16(&mut self, buf: BufId, data: &[half::bf16]) -> BResult<()>;
    fn upload_f16(&mut self, buf: BufId, data: &[half::f16]) -> BResult<()>;
    /// The whole buffer as f32 (the buffer must be f32).
    fn download_f32(&mut self, buf: BufId) -> BResult<Vec<f32>>;
    fn download_u32(&mut self, buf: BufId) -> BResult<Vec<u32>>;
    fn download_bf16(&mut self, buf: BufId) -> BResult<Vec<half::bf16>>;
    fn download_f16(&mut self, buf: BufId) -> BResult<Vec<half::f16>>;
    /// A new f32 buffer holding `data`.
    #[allow(clippy::wrong_self_convention)] // the backend allocates: `be.from_f32(..)`
    fn from_f32(&mut self, data: &[f32]) -> BResult<BufId>;
    /// A new u32 buffer holding `data`.
    #[allow(clippy::wrong_self_convention)]
    fn from_u32(&mut self, data: &[u32]) -> BResult<BufId>;
    /// A view of `len` elements of `parent` from `offset`.
    fn view_of(&mut self, parent: BufId, offset: usize, len: usize) -> BResult<BufId>;
    fn free_buf(&mut self, buf: BufId) -> BResult<()>;
    /// Any float buffer widened to f32 on the host (16-bit checkpoints,
    /// comparisons); an f32 buffer is downloaded as is.
    fn download_widened(&mut self, buf: BufId) -> BResult<Vec<f32>>;
    /// Uploads f32 values into a float buffer of any dtype, rounding to
    /// nearest even on the host for a 16-bit buffer.
    fn upload_f32_as(&mut self, buf: BufId, data: &[f32]) -> BResult<()>;
    /// The host-side n-dimensional view of an f32 buffer: its elements
    /// downloaded and shaped (`shape` must multiply to its length).
    fn download_array(&mut self, buf: BufId, shape: &[usize]) -> BResult<ndarray::ArrayD<f32>>;
    /// Uploads an array (any memory order) into an f32 buffer of as many elements.
    fn upload_array(&mut self, buf: BufId, data: &ndarray::ArrayD<f32>) -> BResult<()>;
}

fn download_as<T: bytemuck::Pod + Default + Clone>(
    be: &mut BackendBox,
    buf: BufId,
    want: DType,
) -> BResult<Vec<T>> {
    let info = be.buffer_info(buf).ok_or_err()?;
    // (a view reports its own dtype and length)
    if info.dtype != want {
        return Err(BackendError(format!(
            "buffer {buf:?} is {}, asked for {want}",
            info.dtype
        )));
    }
    let mut out = vec![T::default(); info.len];
    be.download(
        buf,
        RSliceMut::from_mut_slice(bytemuck::cast_slice_mut(&mut out)),
    )
    .ok_or_err()?;
    Ok(out)
}

impl BackendExt for BackendBox {
    fn alloc_buf(&mut self, dtype: DType, len: usize) -> BResult<BufId> {
        self.alloc(dtype, len).ok_or_err()
    }
    fn upload_f32(&mut self, buf: BufId, data: &[f32]) -> BResult<()> {
        self.upload(buf, RSlice::from_slice(bytemuck::cast_slice(data)))
            .ok_or_err()
    }
    fn upload_u32(&mut self, buf: BufId, data: &[u32]) -> BResult<()> {
        self.upload(buf, RSlice::from_slice(bytemuck::cast_slice(data)))
            .ok_or_err()
    }
    fn upload_bf16(&mut self, buf: BufId, data: &[half::bf16]) -> BResult<()> {
        self.upload(buf, RSlice::from_slice(bytemuck::cast_slice(data)))
            .ok_or_err()
    }
    fn upload_f16(&mut self, buf: BufId, data: &[half::f16]) -> BResult<()> {
        self.upload(buf, RSlice::from_slice(bytemuck::cast_slice(data)))
            .ok_or_err()
    }
    fn download_f32(&mut self, buf: BufId) -> BResult<Vec<f32>> {
        download_as(self, buf, DType::F32)
    }
    fn download_u32(&mut self, buf: BufId) -> BResult<Vec<u32>> {
        download_as(self, buf, DType::U32)
    }
    fn download_bf16(&mut self, buf: BufId) -> BResult<Vec<half::bf16>> {
        download_as(self, buf, DType::BF16)
    }
    fn download_f16(&mut self, buf: BufId) -> BResult<Vec<half::f16>> {
        download_as(self, buf, DType::F16)
    }
    fn from_f32(&mut self, data: &[f32]) -> BResult<BufId> {
        let id = self.alloc_buf(DType::F32, data.len())?;
        self.upload_f32(id, data)?;
        Ok(id)
    }
    fn from_u32(&mut self, data: &[u32]) -> BResult<BufId> {
        let id = self.alloc_buf(DType::U32, data.len())?;
        self.upload_u32(id, data)?;
        Ok(id)
    }
    fn view_of(&mut self, parent: BufId, offset: usize, len: usize) -> BResult<BufId> {
        self.view(parent, offset, len).ok_or_err()
    }
    fn free_buf(&mut self, buf: BufId) -> BResult<()> {
        self.free(buf).ok_or_err()
    }
    fn download_widened(&mut self, buf: BufId) -> BResult<Vec<f32>> {
        let info = self.buffer_info(buf).ok_or_err()?;
        Ok(match info.dtype {
            DType::F32 => self.download_f32(buf)?,
            DType::BF16 => self
                .download_bf16(buf)?
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            DType::F16 => self.download_f16(buf)?.iter().map(|x| x.to_f32()).collect(),
            DType::U32 => {
                return Err(BackendError(format!(
                    "buffer {buf:?} holds u32 token ids, not floats"
                )))
            }
        })
    }
    fn upload_f32_as(&mut self, buf: BufId, data: &[f32]) -> BResult<()> {
        match self.buffer_info(buf).ok_or_err()?.dtype {
            DType::F32 => self.upload_f32(buf, data),
            DType::BF16 => {
                let v: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
                self.upload_bf16(buf, &v)
            }
            DType::F16 => {
                let v: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
                self.upload_f16(buf, &v)
            }
            DType::U32 => Err(BackendError(format!(
                "buffer {buf:?} holds u32 token ids; cannot upload floats into it"
            ))),
        }
    }
    fn download_array(&mut self, buf: BufId, shape: &[usize]) -> BResult<ndarray::ArrayD<f32>> {
        let data = self.download_f32(buf)?;
        let n = data.len();
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), data).map_err(|_| {
            BackendError(format!(
                "buffer {buf:?} holds {n} elements, which shape {shape:?} does not fit"
            ))
        })
    }
    fn upload_array(&mut self, buf: BufId, data: &ndarray::ArrayD<f32>) -> BResult<()> {
        match data.as_slice() {
            Some(s) => self.upload_f32(buf, s),
            None => self.upload_f32(buf, &data.iter().copied().collect::<Vec<_>>()),
        }
    }
}
