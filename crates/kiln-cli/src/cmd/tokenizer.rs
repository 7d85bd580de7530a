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
    /// Threads (default: all cores). The text is cut where the pre-tokenizer
    /// splits anyway, so the ids are those of one thread.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Pieces of the input encoded in parallel (large enough to keep each
/// thread busy, small enough to balance the last ones).
const CHUNK_BYTES: usize = 256 << 10;

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
    let policy = SpecialPolicy::uniform(mode);
    let ids = match a.threads {
        // One thread: no cutting, no pool.
        Some(1) => tok.encode(&text, &policy)?,
        threads => {
            let mut pool = rayon::ThreadPoolBuilder::new();
            if let Some(n) = threads {
                pool = pool.num_threads(n);
            }
            let pool = pool.build().context("starting the encoding threads")?;
            pool.install(|| tok.encode_parallel(&text, &policy, CHUNK_BYTES))?
        }
    };
    drop(text);
    match &a.output {
        Some(p) if is_bin(p) => {
            kiln_data::shard::write_shard(p, &ids)?;
            eprintln!("{} tokens -> {}", ids.len(), p.display());
        }
        out => write_output(out, &ids_text(&ids, a.json))?,
    }
    Ok(())
}

/// `[1,2,3]` or `1 2 3`, then a newline, formatted straight into one
/// buffer (a String per id cost more than the encoding of short ids).
fn ids_text(ids: &[u32], json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 7 + 3);
    if json {
        out.push(b'[');
    }
    let sep = if json { b',' } else { b' ' };
    let mut digits = [0u8; 10];
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        let mut n = id;
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
    }
    if json {
        out.push(b']');
    }
    out.push(b'\n');
    out
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

#[cfg(test)]
mod tests {
    use super::ids_text;

    #[test]
    fn ids_print_as_json_and_as_plain_text() {
        let ids = [0, 7, 10, 4_294_967_295, 100_257];
        assert_eq!(
            ids_text(&ids, true),
            format!("{}\n", serde_json::to_string(&ids).unwrap()).into_bytes()
        );
        assert_eq!(ids_text(&ids, false), b"0 7 10 4294967295 100257\n");
        assert_eq!(ids_text(&[], true), b"[]\n");
        assert_eq!(ids_text(&[], false), b"\n");
    }
}
