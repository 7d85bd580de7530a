//! A safetensors file written tensor by tensor: the header first (names,
//! shapes and offsets are known before any data), then each tensor as its
//! producer hands it over. Writing a checkpoint so adds at most one tensor
//! to the process's memory, instead of a second copy of every tensor (and a
//! third for the serialised file) that `safetensors::serialize` needs.
//!
//! The layout is the format's: an 8-byte little-endian header length, the
//! JSON header (padded with spaces to a multiple of 8), then the tensors'
//! bytes back to back in the header's order. F32 only (what kiln writes).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

/// One tensor of the file: its name and shape (F32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
        }
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The header bytes (length prefix included) for `tensors` in this order.
fn header(tensors: &[TensorSpec], metadata: &BTreeMap<String, String>) -> io::Result<Vec<u8>> {
    let mut map = Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + 4 * t.len();
        let entry = json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]});
        if map.insert(t.name.clone(), entry).is_some() {
            return Err(io::Error::other(format!("tensor {} named twice", t.name)));
        }
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).map_err(io::Error::other)?;
    // The data must start 8-byte aligned: pad the header with spaces.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    Ok(out)
}

/// Writes `path` atomically: the header for `tensors`, then tensor `i`'s
/// values from `produce(i)`, called once per tensor in order and dropped
/// once written. A wrong length or a failing producer leaves no file.
pub fn write_f32_tensors<E>(
    path: &Path,
    tensors: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut produce: impl FnMut(usize) -> Result<Vec<f32>, E>,
) -> Result<(), StreamError<E>> {
    let head = header(tensors, metadata).map_err(StreamError::Io)?;
    let mut failed: Option<E> = None;
    let result = kiln_stdx::fs::write_atomic_with(path, |w| {
        w.write_all(&head)?;
        for (i, t) in tensors.iter().enumerate() {
            let values = match produce(i) {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(e);
                    return Err(io::Error::other("the tensor producer failed"));
                }
            };
            if values.len() != t.len() {
                return Err(io::Error::other(format!(
                    "tensor {} has {} values, its shape {:?} needs {}",
                    t.name,
                    values.len(),
                    t.shape,
                    t.len()
                )));
            }
            for chunk in values.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.write_all(&bytes)?;
            }
        }
        Ok(())
    });
    match (failed, result) {
        (Some(e), _) => Err(StreamError::Produce(e)),
        (None, Err(e)) => Err(StreamError::Io(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// Why [`write_f32_tensors`] failed: writing, or the producer's own error.
#[derive(Debug)]
pub enum StreamError<E> {
    Io(io::Error),
    Produce(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use safetensors::{Dtype, SafeTensors};

    /// What `safetensors::serialize` writes for the same tensors: the
    /// reference the streamed file must read back equal to.
    fn check_round_trip(tensors: &[(String, Vec<usize>, Vec<f32>)]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let specs: Vec<TensorSpec> = tensors
            .iter()
            .map(|(n, s, _)| TensorSpec::new(n.clone(), s.clone()))
            .collect();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_f32_tensors::<()>(&path, &specs, &meta, |i| Ok(tensors[i].2.clone())).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (n, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!((8 + n) % 8, 0, "data starts aligned");
        assert_eq!(header.metadata().as_ref().unwrap()["format"], "pt");
        assert_eq!(st.len(), tensors.len());
        for (name, shape, values) in tensors {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32);
            assert_eq!(t.shape(), shape.as_slice());
            let back: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(back.len(), values.len());
            assert!(back
                .iter()
                .zip(values)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    proptest! {
        #[test]
        fn streamed_files_read_back_with_the_safetensors_crate(
            shapes in proptest::collection::vec(proptest::collection::vec(1usize..5, 0..3), 1..6),
            seed in any::<u32>(),
        ) {
            let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
                .into_iter()
                .enumerate()
                .map(|(i, shape)| {
                    let n: usize = shape.iter().product();
                    let values = (0..n).map(|j| (seed as f32) * 0.5 - (i * 31 + j) as f32).collect();
                    (format!("t{i}.weight"), shape, values)
                })
                .collect();
            check_round_trip(&tensors);
        }
    }

    #[test]
    fn a_failing_producer_or_a_wrong_length_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let specs = [TensorSpec::new("a", vec![2]), TensorSpec::new("b", vec![3])];
        let none = BTreeMap::new();
        let e = write_f32_tensors(&path, &specs, &none, |i| {
            if i == 0 {
                Ok(vec![1.0, 2.0])
            } else {
                Err("gone")
            }
        });
        assert!(matches!(e, Err(StreamError::Produce("gone"))));
        let e = write_f32_tensors::<()>(&path, &specs, &none, |_| Ok(vec![1.0]));
        assert!(matches!(e, Err(StreamError::Io(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
