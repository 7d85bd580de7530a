//! `kiln eval`: held-out loss and perplexity of a checkpoint on a token
//! shard, printed as one JSON object.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (model.safetensors + config.json; kiln's or HF's).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A PEFT LoRA adapter (e.g. a LoRA run's OUT/adapter/) to run on top
    /// of the checkpoint, unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A .bin token shard.
    #[arg(long)]
    data: PathBuf,
    /// Window length (default: the model's context length).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    backend: crate::backend::BackendArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    let mut model =
        super::lora_args::load_inference_model(&mut be, &args.checkpoint, args.adapter.as_deref())?;
    let seq_len = args.seq_len.unwrap_or(model.config.max_seq_len);
    let r = kiln_train::eval::evaluate(&mut be, &mut model, &args.data, seq_len, args.batch_size)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
