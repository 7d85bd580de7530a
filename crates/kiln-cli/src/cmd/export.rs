//! `kiln export --model DIR --gguf OUT.gguf [--type f16|q8_0|f32]`: an HF
//! model directory (GPT-2 or Llama-family, with its tokenizer.json) as a
//! GGUF file that llama.cpp and ollama load.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_gguf::TensorType;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory: config.json, model.safetensors (or shards) and tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The GGUF file to write.
    #[arg(long)]
    gguf: PathBuf,
    /// Type of the 2-D weights: f16, q8_0 or f32 (norms and biases stay f32).
    #[arg(long = "type", default_value = "f16", value_parser = ["f16", "q8_0", "f32"])]
    ty: String,
}

pub fn run(args: Args) -> Result<()> {
    let ty = match args.ty.as_str() {
        "f32" => TensorType::F32,
        "q8_0" => TensorType::Q8_0,
        _ => TensorType::F16,
    };
    let summary = kiln_gguf::export_hf_dir(&args.model, &args.gguf, ty)
        .with_context(|| format!("exporting {} to GGUF", args.model.display()))?;
    let bytes = std::fs::metadata(&args.gguf).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} tensors, vocabulary {}, llama.cpp architecture {:?}, {} ({:.1} MB)",
        args.gguf.display(),
        summary.tensors,
        summary.vocab_size,
        summary.architecture,
        args.ty,
        bytes as f64 / 1e6
    );
    if !summary.f16_fallbacks.is_empty() {
        println!(
            "  f16 instead of q8_0 (rows not a multiple of 32 values): {}",
            summary.f16_fallbacks.join(", ")
        );
    }
    Ok(())
}
