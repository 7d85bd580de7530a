//! Host buffers keyed by [`BufId`], one `Vec` per buffer in its own dtype.

use std::collections::HashMap;

use half::{bf16, f16};
use kiln_abi::{BufId, DType};

/// One host buffer. 16-bit floats keep their storage type; ops widen to f32.
pub enum Buffer {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
}

impl Buffer {
    /// A zero-filled buffer; `Err` instead of an abort when memory runs out.
    pub fn zeros(dtype: DType, len: usize) -> Result<Buffer, String> {
        fn vec<T: Clone + Default>(len: usize) -> Result<Vec<T>, String> {
            let mut v = Vec::new();
            v.try_reserve_exact(len)
                .map_err(|e| format!("cannot allocate {len} elements: {e}"))?;
            v.resize(len, T::default());
            Ok(v)
        }
        Ok(match dtype {
            DType::F32 => Buffer::F32(vec(len)?),
            DType::BF16 => Buffer::BF16(vec(len)?),
            DType::F16 => Buffer::F16(vec(len)?),
            DType::U32 => Buffer::U32(vec(len)?),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Buffer::F32(_) => DType::F32,
            Buffer::BF16(_) => DType::BF16,
            Buffer::F16(_) => DType::F16,
            Buffer::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Buffer::F32(v) => v.len(),
            Buffer::BF16(v) => v.len(),
            Buffer::F16(v) => v.len(),
            Buffer::U32(v) => v.len(),
        }
    }

    /// The elements as little-endian bytes (the host is little-endian; see lib.rs).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Buffer::F32(v) => bytemuck::cast_slice(v),
            Buffer::BF16(v) => bytemuck::cast_slice(v),
            Buffer::F16(v) => bytemuck::cast_slice(v),
            Buffer::U32(v) => bytemuck::cast_slice(v),
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buffer::F32(v) => bytemuck::cast_slice_mut(v),
            Buffer::BF16(v) => bytemuck::cast_slice_mut(v),
            Buffer::F16(v) => bytemuck::cast_slice_mut(v),
            Buffer::U32(v) => bytemuck::cast_slice_mut(v),
        }
    }
}

/// The live buffers of one backend.
#[derive(Default)]
pub struct Store {
    bufs: HashMap<u64, Buffer>,
    next_id: u64,
}

impl Store {
    pub fn insert(&mut self, buf: Buffer) -> BufId {
        // Ids are never reused, so a stale id cannot silently hit a new buffer.
        self.next_id += 1;
        self.bufs.insert(self.next_id, buf);
        BufId(self.next_id)
    }

    pub fn get(&self, id: BufId) -> Result<&Buffer, String> {
        self.bufs.get(&id.0).ok_or_else(|| unknown(id))
    }

    pub fn get_mut(&mut self, id: BufId) -> Result<&mut Buffer, String> {
        self.bufs.get_mut(&id.0).ok_or_else(|| unknown(id))
    }

    pub fn remove(&mut self, id: BufId) -> Result<Buffer, String> {
        self.bufs.remove(&id.0).ok_or_else(|| unknown(id))
    }

    /// Puts back a buffer taken out with [`Store::remove`] under its old id.
    pub fn restore(&mut self, id: BufId, buf: Buffer) {
        self.bufs.insert(id.0, buf);
    }

    pub fn len(&self) -> usize {
        self.bufs.len()
    }
}

fn unknown(id: BufId) -> String {
    format!(
        "unknown buffer id {} (freed, never allocated, or from another backend)",
        id.0
    )
}
