//! `kiln generate`: continue a prompt from a checkpoint (KV-cache sampling).

use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln_model::{Gpt, SampleOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (model.safetensors + config.json).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prompt as token ids, e.g. 1,2,3.
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Option<String>,
    /// Prompt as text (needs --tokenizer).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokenizer file (tokenizer.json, *.tiktoken or vocab.json) for --prompt.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    backend: crate::backend::BackendArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tokenizer = match (&args.prompt, &args.tokenizer) {
        (Some(_), None) => bail!(
            "--prompt TEXT needs --tokenizer FILE to turn the text into token ids \
             (or pass --prompt-ids 1,2,3)"
        ),
        (_, Some(path)) => Some(
            kiln_tokenizer::formats::load(path)
                .with_context(|| format!("tokenizer {}", path.display()))?,
        ),
        _ => None,
    };
    let prompt: Vec<u32> = match (&args.prompt_ids, &args.prompt, &tokenizer) {
        (Some(ids), _, _) => parse_ids(ids)?,
        (None, Some(text), Some(tok)) => tok.encode_ordinary(text),
        _ => bail!("give a prompt: --prompt-ids 1,2,3 (or --prompt TEXT --tokenizer FILE)"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty; generation needs at least one token");
    }
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    let mut model = Gpt::load_pretrained(&mut be, &args.checkpoint)?;
    let opts = SampleOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop_token: None,
    };
    let new = model.generate(&mut be, &prompt, &opts)?;
    let ids: Vec<String> = new.iter().map(|x| x.to_string()).collect();
    println!("{}", ids.join(","));
    if let Some(tok) = &tokenizer {
        let text = tok
            .decode_lossy(&new)
            .context("decoding the generated ids")?;
        println!("{text}");
    }
    Ok(())
}

/// "1,2, 3" or "1 2 3" -> ids; names the bad entry.
fn parse_ids(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("--prompt-ids: `{p}` is not a token id (use e.g. 1,2,3)"))
        })
        .collect()
}
