//! Tokenizer file formats: tiktoken rank files, GPT-2 vocab.json +
//! merges.txt, Hugging Face tokenizer.json.

pub mod gpt2;
pub mod hf;
pub mod hf_config;
mod hf_pipeline;
pub mod tiktoken;

use crate::{Error, Tokenizer};
use std::path::Path;

/// Loads a tokenizer, choosing the format by file name: `*.tiktoken`
/// (encoding guessed from the name, e.g. `cl100k_base.tiktoken`),
/// `vocab.json` (with `merges.txt` beside it), anything else as
/// tokenizer.json.
pub fn load(path: &Path) -> Result<Tokenizer, Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".tiktoken") {
        tiktoken::load(path, None)
    } else if name.ends_with("vocab.json") || name.ends_with("encoder.json") {
        let dir = path.parent().unwrap_or(Path::new("."));
        let merges = ["merges.txt", "vocab.bpe"]
            .iter()
            .map(|m| dir.join(m))
            .find(|p| p.exists())
            .unwrap_or_else(|| dir.join("merges.txt"));
        gpt2::load(path, &merges)
    } else {
        hf::load(path)
    }
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
