//! `kiln tokenizer ...`: train, encode, decode, info.

use super::data_tokenize::{byte_bar, collect_files, load_tokenizer, read_documents, Utf8Policy};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_tokenizer::formats::hf;
use kiln_tokenizer::{Pattern, SpecialMode, SpecialPolicy, TrainConfig, Trainer};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a byte-level BPE tokenizer and save it as tokenizer.json.
    Train(TrainArgs),
    /// Encode text to token ids (text, JSON, or an llm.c .bin shard).
    Encode(EncodeArgs),
    /// Decode token ids (a .bin shard, a JSON array, or whitespace-separated ids).
    Decode(DecodeArgs),
    /// Show a tokenizer's vocabulary, pattern and special tokens.
    Info(InfoArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training files or directories (.txt = one document, .jsonl = {"text": ...} per line).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Total vocabulary size: 256 bytes + merges + special tokens.
    #[arg(long)]
    pub vocab_size: usize,
    /// Output tokenizer.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Pre-tokenization: gpt2, cl100k (GPT-4, default), o200k, or a regex.
    #[arg(long, default_value = "cl100k")]
    pub pattern: String,
    /// Special token (repeatable); default: <|endoftext|>.
    #[arg(long = "special")]
    pub special: Vec<String>,
    /// Pairs seen fewer times are never merged.
    #[arg(long, default_value_t = 0)]
    pub min_frequency: u64,
    /// Replace invalid UTF-8 with U+FFFD instead of stopping.
    #[arg(long)]
    pub replace_invalid_utf8: bool,
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Input text file (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output: a .bin path writes an llm.c shard; other paths get the text/JSON output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print ids as a JSON array (default: space-separated).
    #[arg(long)]
    pub json: bool,
    /// Special-token text in the input: special (emit the id), text, or error.
    #[arg(long, default_value = "special")]
    pub specials: String,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Ids: a .bin shard, a JSON array, or whitespace-separated ids (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output text file (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Also show how this text tokenizes.
    #[arg(long)]
    pub text: Option<String>,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train(a) => train(a),
        Command::Encode(a) => encode(a),
        Command::Decode(a) => decode(a),
        Command::Info(a) => info(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let specials = if a.special.is_empty() {
        vec![kiln_tokenizer::ENDOFTEXT.to_string()]
    } else {
        a.special.clone()
    };
    let pattern = Pattern::parse(&a.pattern);
    let mut trainer = Trainer::new(TrainConfig {
        vocab_size: a.vocab_size,
        pattern: pattern.clone(),
        special_tokens: specials,
        min_frequency: a.min_frequency,
    })?;
    let files = collect_files(&a.input)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    let start = Instant::now();
    let bar = byte_bar(total);
    bar.set_message("counting pre-tokens");
    let policy = Utf8Policy {
        replace: a.replace_invalid_utf8,
    };
    let replaced = AtomicU64::new(0);
    // Feed in ~32 MB batches: memory is the batch plus distinct pre-tokens.
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for f in &files {
        for d in read_documents(f, policy, &replaced)? {
            batch_bytes += d.len();
            batch.push(d);
        }
        if batch_bytes >= 32 << 20 {
            trainer.feed(&batch);
            batch.clear();
            batch_bytes = 0;
        }
        bar.inc(f.metadata().map(|m| m.len()).unwrap_or(0));
    }
    trainer.feed(&batch);
    drop(batch);
    bar.finish_and_clear();
    eprintln!(
        "counted {} distinct pre-tokens in {:.1}s",
        trainer.distinct_pretokens(),
        start.elapsed().as_secs_f64()
    );
    let merges_bar = ProgressBar::new(0);
    merges_bar.set_style(
        ProgressStyle::with_template("merging [{bar:30}] {pos}/{len} merges eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let tok = trainer.finish_with_progress(|p| {
        merges_bar.set_length(p.merges_total as u64);
        merges_bar.set_position(p.merges_done as u64);
    })?;
    merges_bar.finish_and_clear();
    hf::save(&tok, &a.output)?;
    eprintln!(
        "trained {} tokens ({} merges, pattern {}) in {:.1}s -> {}",
        tok.vocab_size(),
        tok.merges()?.len(),
        pattern.name(),
        start.elapsed().as_secs_f64(),
        a.output.display()
    );
    let r = replaced.load(Ordering::Relaxed);
    if r > 0 {
        eprintln!("replaced {r} invalid UTF-8 sequences with U+FFFD");
    }
    Ok(())
}

fn read_input(input: &Option<PathBuf>) -> Result<Vec<u8>> {
    match input {
        Some(p) => std::fs::read(p).with_context(|| format!("{}: cannot read", p.display())),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading stdin")?;
            Ok(v)
        }
    }
}

fn write_output(output: &Option<PathBuf>, bytes: &[u8]) -> Result<()> {
    match output {
        Some(p) => kiln_stdx::fs::write_atomic(p, bytes)
            .with_context(|| format!("{}: cannot write", p.display())),
        None => {
            std::io::stdout().write_all(bytes)?;
            Ok(())
        }
    }
}

fn is_bin(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "bin")
}

fn encode(a: EncodeArgs) -> Result<()> {
    let tok = load_tokenizer(&a.tokenizer)?;
    let mode = match a.specials.as_str() {
        "special" => SpecialMode::Special,
        "text" => SpecialMode::Text,
        "error" => SpecialMode::Error,
        other => bail!("--specials must be special, text or error, not {other:?}"),
    };
    let bytes = read_input(&a.input)?;
    let name = a
        .input
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or("stdin".into());
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}: invalid UTF-8 at byte offset {}",
            e.utf8_error().valid_up_to()
        )
    })?;
    let ids = tok.encode(&text, &SpecialPolicy::uniform(mode))?;
    match &a.output {
        Some(p) if is_bin(p) => {
            kiln_data::shard::write_shard(p, &ids)?;
            eprintln!("{} tokens -> {}", ids.len(), p.display());
        }
        out => {
            let s = if a.json {
                serde_json::to_string(&ids)?
            } else {
                ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
            };
            write_output(out, format!("{s}\n").as_bytes())?;
        }
    }
    Ok(())
}

fn decode(a: DecodeArgs) -> Result<()> {
    let tok = load_tokenizer(&a.tokenizer)?;
    let name = a
        .input
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or("stdin".into());
    let ids: Vec<u32> = match &a.input {
        Some(p) if is_bin(p) => kiln_data::shard::read_shard(p)?,
        input => {
            let raw = read_input(input)?;
            let s = String::from_utf8(raw).with_context(|| format!("{name}: not UTF-8 text"))?;
            let t = s.trim();
            if t.starts_with('[') {
                serde_json::from_str(t)
                    .with_context(|| format!("{name}: not a JSON array of ids"))?
            } else {
                t.split_whitespace()
                    .enumerate()
                    .map(|(i, w)| {
                        w.parse::<u32>().with_context(|| {
                            format!("{name}: item {} ({w:?}) is not a token id", i + 1)
                        })
                    })
                    .collect::<Result<_>>()?
            }
        }
    };
    let text = tok.decode_lossy(&ids)?;
    write_output(&a.output, text.as_bytes())
}

fn info(a: InfoArgs) -> Result<()> {
    let tok = load_tokenizer(&a.tokenizer)?;
    println!("tokenizer:      {}", a.tokenizer.display());
    println!("vocab size:     {} (largest id + 1)", tok.vocab_size());
    println!("ordinary:       {}", tok.ordinary_len());
    println!(
        "merge rule:     {}",
        match tok.merge_rule() {
            kiln_tokenizer::MergeRule::Ranks => "tiktoken ranks".to_string(),
            kiln_tokenizer::MergeRule::Merges(m) => format!("{} merges", m.len()),
        }
    );
    println!(
        "pattern:        {} {}",
        tok.pattern().name(),
        tok.pattern().regex()
    );
    println!("special tokens: {}", tok.special_tokens().len());
    for (s, id) in tok.special_tokens().iter().take(20) {
        println!("  {id:>8} {s}");
    }
    if let Some(text) = a.text {
        let ids = tok.encode(&text, &SpecialPolicy::allow_all())?;
        println!("{} tokens:", ids.len());
        for id in ids {
            let b = tok.token_bytes(id).unwrap_or(&[]);
            println!("  {id:>8} {:?}", String::from_utf8_lossy(b));
        }
    }
    Ok(())
}
