//! Argument checking shared by every op: buffer lookup by name, dtype and
//! size checks, overflow-checked shape products. Errors name the op, the
//! argument and the fix.

use half::{bf16, f16};
use kiln_abi::{BufId, DType};

use crate::store::{Buffer, Store};

/// Read access to an op's input buffers, with errors that name the op.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub op: &'static str,
    pub store: &'a Store,
}

/// A float operand of any supported storage type.
pub enum FloatSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Inputs<'a> {
    fn get(&self, name: &str, id: BufId) -> Result<&'a Buffer, String> {
        self.store
            .get(id)
            .map_err(|e| format!("{}: argument `{name}`: {e}", self.op))
    }

    pub fn f32(&self, name: &str, id: BufId, need: usize) -> Result<&'a [f32], String> {
        match self.get(name, id)? {
            Buffer::F32(v) => Ok(&v[..check_len(self.op, name, id, v.len(), need)?]),
            other => Err(wrong_dtype(self.op, name, id, other.dtype(), "f32")),
        }
    }

    /// The whole f32 buffer (for tables whose row count the op does not know).
    pub fn f32_whole(&self, name: &str, id: BufId) -> Result<&'a [f32], String> {
        let n = self.get(name, id)?.len();
        self.f32(name, id, n)
    }

    pub fn u32(&self, name: &str, id: BufId, need: usize) -> Result<&'a [u32], String> {
        match self.get(name, id)? {
            Buffer::U32(v) => Ok(&v[..check_len(self.op, name, id, v.len(), need)?]),
            other => Err(wrong_dtype(self.op, name, id, other.dtype(), "u32")),
        }
    }

    pub fn float(&self, name: &str, id: BufId, need: usize) -> Result<FloatSlice<'a>, String> {
        let buf = self.get(name, id)?;
        let n = check_len(self.op, name, id, buf.len(), need)?;
        match buf {
            Buffer::F32(v) => Ok(FloatSlice::F32(&v[..n])),
            Buffer::BF16(v) => Ok(FloatSlice::BF16(&v[..n])),
            Buffer::F16(v) => Ok(FloatSlice::F16(&v[..n])),
            Buffer::U32(_) => Err(wrong_dtype(
                self.op,
                name,
                id,
                DType::U32,
                "a float type (f32, bf16, f16)",
            )),
        }
    }

    /// Any buffer, checked for length only.
    pub fn any(&self, name: &str, id: BufId, need: usize) -> Result<&'a Buffer, String> {
        let buf = self.get(name, id)?;
        check_len(self.op, name, id, buf.len(), need)?;
        Ok(buf)
    }
}

/// An output buffer taken out of the store for the op's duration.
pub struct Output {
    pub name: &'static str,
    pub id: BufId,
    pub buf: Buffer,
}

impl Output {
    /// The whole f32 buffer.
    pub fn f32_whole(&mut self, op: &str) -> Result<&mut [f32], String> {
        let n = self.buf.len();
        self.f32(op, n)
    }

    pub fn f32(&mut self, op: &str, need: usize) -> Result<&mut [f32], String> {
        let (name, id) = (self.name, self.id);
        match &mut self.buf {
            Buffer::F32(v) => {
                let n = check_len(op, name, id, v.len(), need)?;
                Ok(&mut v[..n])
            }
            other => Err(wrong_dtype(op, name, id, other.dtype(), "f32")),
        }
    }
}

fn check_len(op: &str, name: &str, id: BufId, len: usize, need: usize) -> Result<usize, String> {
    if len < need {
        Err(format!(
            "{op}: argument `{name}` (buffer {}) holds {len} elements but the given dimensions need {need}; \
             allocate a larger buffer or pass smaller dimensions",
            id.0
        ))
    } else {
        Ok(need)
    }
}

fn wrong_dtype(op: &str, name: &str, id: BufId, got: DType, want: &str) -> String {
    format!(
        "{op}: argument `{name}` (buffer {}) is {got}, but this op needs {want}",
        id.0
    )
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
