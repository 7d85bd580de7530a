//! GGUF, the file llama.cpp (and so ollama) loads: a header, typed
//! metadata, tensor descriptions, then the tensors, each aligned.
//!
//! This crate knows the container and the tensor encodings (f32, f16, bf16,
//! q8_0) and nothing about models; `kiln export --gguf` maps a kiln model
//! and its tokenizer onto llama.cpp's names. Format: ggml's `docs/gguf.md`
//! (version 3, little-endian).

mod model;
mod quant;
mod tokenizer;
mod writer;

pub use model::{export_hf_dir, ExportSummary};
pub use quant::{quantize_q8_0, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
pub use tokenizer::add_tokenizer;
pub use writer::{GgufWriter, TensorType, Value};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{file}: {msg}")]
    Tokenizer { file: String, msg: String },
    #[error("{file}: {msg}")]
    Model { file: String, msg: String },
    #[error("metadata key {0:?} given twice")]
    DuplicateKey(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}
