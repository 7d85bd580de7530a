//! `kiln merge`: folds a LoRA adapter (PEFT directory, e.g. a LoRA run's
//! OUT/adapter/) into its base model and writes the merged Hugging Face
//! model directory (W + alpha/r * B A per adapted projection).
//!
//! The merged weights have the base's names and shapes, so the base's own
//! config.json, generation_config.json and tokenizer files are copied as
//! they are: transformers loads the merged directory as it loads the base.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_model::{Gpt, SHARD_INDEX_FILE, WEIGHTS_FILE};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The base model directory the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged model (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub backend: crate::backend::BackendArg,
}

pub fn run(args: Args) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&args.out, &args.model) || same(&args.out, &args.adapter) {
        bail!(
            "--out {} would overwrite an input; choose a new directory",
            args.out.display()
        );
    }
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    let mut model = Gpt::load_pretrained_frozen(&mut be, &args.model)
        .with_context(|| format!("loading base model {}", args.model.display()))?;
    model
        .load_lora(&mut be, &args.adapter)
        .with_context(|| format!("loading adapter {}", args.adapter.display()))?;
    let lora = model.lora().expect("just loaded").config.clone();
    model.merge_lora(&mut be)?;
    model
        .save_pretrained(&mut be, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    copy_base_files(&args.model, &args.out)?;
    println!(
        "merged {} (rank {}, alpha {}, {} projections per layer) into {}: {}",
        args.adapter.display(),
        lora.rank,
        lora.alpha,
        lora.targets.len(),
        args.model.display(),
        args.out.display()
    );
    Ok(())
}

/// Copies every file of `base` except its weights into `out` (config,
/// generation config, tokenizer files), replacing what kiln wrote.
fn copy_base_files(base: &Path, out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(base).with_context(|| format!("reading {}", base.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let weights = name_str == WEIGHTS_FILE
            || name_str == SHARD_INDEX_FILE
            || (name_str.starts_with("model-") && name_str.ends_with(".safetensors"));
        if weights || name_str.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        let to = out.join(&name);
        std::fs::copy(entry.path(), &to)
            .with_context(|| format!("copying {} to {}", entry.path().display(), to.display()))?;
    }
    Ok(())
}
