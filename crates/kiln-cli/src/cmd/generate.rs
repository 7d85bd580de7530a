//! `kiln generate`: continue a prompt from a checkpoint (KV-cache sampling).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln_model::SampleOptions;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (model.safetensors + config.json).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A PEFT LoRA adapter (e.g. a LoRA run's OUT/adapter/) to run on top
    /// of the checkpoint, unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
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
    check_sampling(&args)?;
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    let mut model =
        super::lora_args::load_inference_model(&mut be, &args.checkpoint, args.adapter.as_deref())?;
    let room = model.config.max_seq_len.saturating_sub(prompt.len());
    if args.max_new_tokens > room {
        bail!(
            "--max-new-tokens {}: the model has {} positions and the prompt takes {}, so at \
             most {room} new tokens fit; ask for {room} or fewer",
            args.max_new_tokens,
            model.config.max_seq_len,
            prompt.len()
        );
    }
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
    let mut out = std::io::stdout().lock();
    // A closed pipe (`kiln generate ... | head`) is an io error, which
    // main turns into a quiet exit, never a panic.
    writeln!(out, "{}", ids.join(","))?;
    if let Some(tok) = &tokenizer {
        let text = tok
            .decode_lossy(&new)
            .context("decoding the generated ids")?;
        writeln!(out, "{text}")?;
    }
    out.flush()?;
    Ok(())
}

/// Refuses sampling settings that cannot mean anything (instead of
/// sampling with them silently).
fn check_sampling(args: &Args) -> anyhow::Result<()> {
    let t = args.temperature;
    if !(t.is_finite() && t >= 0.0) {
        bail!("--temperature {t}: must be a finite number >= 0 (0 = greedy)");
    }
    if let Some(p) = args.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p {p}: must be in (0, 1] (1 keeps every token)");
        }
    }
    if args.top_k == Some(0) {
        bail!("--top-k 0: must be at least 1 (leave it out to keep every token)");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens 0: ask for at least one token");
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
