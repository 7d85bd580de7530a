//! The GGUF container: metadata and tensors collected in memory, then
//! written in one pass (atomically: a temp file renamed into place).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::quant::{quantize_q8_0, Q8_0_BLOCK};
use crate::GgufError;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
/// `general.alignment`'s default: every tensor starts at a multiple of it.
const ALIGNMENT: usize = 32;

/// A metadata value (the types kiln writes).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    ArrStr(Vec<String>),
    ArrI32(Vec<i32>),
    ArrF32(Vec<f32>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::ArrStr(_) | Value::ArrI32(_) | Value::ArrF32(_) => 9,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(*v as u8),
            Value::Str(s) => write_str(out, s),
            Value::ArrStr(items) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| write_str(out, s));
            }
            Value::ArrI32(items) => {
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items
                    .iter()
                    .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            }
            Value::ArrF32(items) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items
                    .iter()
                    .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            }
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// How a tensor's elements are stored (ggml's type ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl TensorType {
    fn ggml_id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 8,
            TensorType::Bf16 => 30,
        }
    }
}

struct Tensor {
    name: String,
    /// Row-major shape, outermost first (written reversed: ggml's ne[0] is
    /// the innermost dimension).
    shape: Vec<usize>,
    ty: TensorType,
    data: Vec<u8>,
}

/// Collects metadata and tensors; [`GgufWriter::write`] writes the file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: BTreeSet<String>,
    tensors: Vec<Tensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key (written in the order added).
    pub fn set(&mut self, key: &str, value: Value) -> Result<(), GgufError> {
        if !self.keys.insert(key.to_string()) {
            return Err(GgufError::DuplicateKey(key.to_string()));
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Adds a tensor of row-major `shape` from f32 values, stored as `ty`.
    /// q8_0 needs the innermost dimension to be a multiple of 32.
    pub fn add_f32(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[f32],
        ty: TensorType,
    ) -> Result<(), GgufError> {
        let fail = |msg: String| GgufError::Tensor {
            name: name.to_string(),
            msg,
        };
        let n: usize = shape.iter().product();
        if n != values.len() || shape.is_empty() {
            return Err(fail(format!(
                "shape {shape:?} holds {n} values, given {}",
                values.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(fail("added twice".into()));
        }
        let mut data = Vec::new();
        match ty {
            TensorType::F32 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            TensorType::F16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            TensorType::Bf16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
            TensorType::Q8_0 => {
                let inner = *shape.last().unwrap();
                if !inner.is_multiple_of(Q8_0_BLOCK) {
                    return Err(fail(format!(
                        "q8_0 needs rows of a multiple of 32 values, this one has {inner}"
                    )));
                }
                quantize_q8_0(values, &mut data);
            }
        }
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// The whole file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            value.write(&mut out);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&t.ty.ggml_id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.data.len().next_multiple_of(ALIGNMENT);
        }
        pad(&mut out);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out);
        }
        out
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        let bytes = self.to_bytes();
        kiln_stdx::fs::write_atomic_with(path, |f| f.write_all(&bytes)).map_err(|source| {
            GgufError::Io {
                path: path.display().to_string(),
                source,
            }
        })
    }
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_and_alignment_follow_the_spec() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("llama".into()))
            .unwrap();
        w.add_f32("a", &[2, 3], &[1.0; 6], TensorType::F32).unwrap();
        w.add_f32("b", &[1, 32], &[0.5; 32], TensorType::Q8_0)
            .unwrap();
        let bytes = w.to_bytes();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 1);
        assert_eq!(bytes.len() % ALIGNMENT, 0);
        // a's 24 bytes pad to 32, then b's one block of 34 bytes pads to 64.
        let a = bytes.len() - 96;
        assert_eq!(&bytes[a..a + 4], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[a + 24..a + 32], &[0; 8]);
        assert_eq!(bytes[a + 32 + 2] as i8, 127);
    }

    #[test]
    fn bad_tensors_and_keys_are_refused_by_name() {
        let mut w = GgufWriter::new();
        let e = w
            .add_f32("w", &[2, 3], &[0.0; 5], TensorType::F32)
            .unwrap_err();
        assert!(e.to_string().contains("tensor w"), "{e}");
        let e = w
            .add_f32("w", &[2, 3], &[0.0; 6], TensorType::Q8_0)
            .unwrap_err();
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        w.set("k", Value::U32(1)).unwrap();
        assert!(w.set("k", Value::U32(2)).is_err());
    }
}
