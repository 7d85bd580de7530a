//! `kiln data tokenize`: documents -> llm.c token shards (owned by the tokenizer work).
//!
//! Documents are plain `.txt` files (one document each) or JSONL with a
//! `"text"` field (one document per line); directories are walked. Each
//! document is preceded by `<|endoftext|>` (llm.c/nanoGPT convention), so
//! documents are joined by it. Every k-th document (k = 1/val-fraction)
//! goes to the held-out validation split. Shards are written atomically as
//! `train_NNNNNN.bin` / `val_NNNNNN.bin`, plus `meta.json`, written last:
//! the completion marker. A run locks the output directory and first
//! removes `meta.json` and every earlier `train_*`/`val_*` shard, so the
//! directory holds one run's shards, and a killed run leaves no
//! `meta.json` (pretrain refuses such a directory).

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_tokenizer::{SpecialPolicy, Tokenizer};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(clap::Args)]
pub struct Args {
    /// Tokenizer file (tokenizer.json, *.tiktoken, or vocab.json with merges.txt beside it).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Input files or directories (.txt = one document, .jsonl = one {"text": ...} per line).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory for the shards.
    #[arg(long)]
    pub output: PathBuf,
    /// Tokens per shard.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: usize,
    /// Fraction of documents held out for the validation split (0 = none).
    #[arg(long, default_value_t = 0.01)]
    pub val_fraction: f64,
    /// Replace invalid UTF-8 with U+FFFD (and report how many) instead of stopping.
    #[arg(long)]
    pub replace_invalid_utf8: bool,
}

/// How invalid UTF-8 in the input is handled.
#[derive(Clone, Copy)]
pub(crate) struct Utf8Policy {
    pub replace: bool,
}

/// Input files under `inputs` (directories walked, sorted for determinism).
pub(crate) fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let meta = std::fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot list", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                let hidden = e
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if !hidden {
                    walk(&e, out)?;
                }
            }
        } else {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        kiln_data::curate::check_finished(p).map_err(anyhow::Error::msg)?;
        walk(p, &mut out)?;
    }
    if out.is_empty() {
        bail!("no input files found in {inputs:?}");
    }
    Ok(out)
}

/// JSONL, plain or compressed (the output of `kiln data curate` is .jsonl.zst).
fn is_jsonl(p: &Path) -> bool {
    use kiln_data::read::Format;
    matches!(
        kiln_data::read::format_of(p),
        Some(Format::Jsonl | Format::JsonlGz | Format::JsonlZst)
    )
}

/// Checks UTF-8; on failure either errors with the file and byte offset or
/// replaces (counting replacements).
fn to_text(
    bytes: Vec<u8>,
    file: &Path,
    base: usize,
    policy: Utf8Policy,
    replaced: &AtomicU64,
) -> Result<String> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let at = base + e.utf8_error().valid_up_to();
            if !policy.replace {
                bail!(
                    "{}: invalid UTF-8 at byte offset {at}; fix the file or pass --replace-invalid-utf8",
                    file.display()
                );
            }
            let bytes = e.into_bytes();
            // Count only the replacements, not U+FFFD already in the text.
            let n = bytes
                .utf8_chunks()
                .filter(|c| !c.invalid().is_empty())
                .count();
            replaced.fetch_add(n as u64, Ordering::Relaxed);
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }
}

/// The documents of one file.
pub(crate) fn read_documents(
    file: &Path,
    policy: Utf8Policy,
    replaced: &AtomicU64,
) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    kiln_data::read::open(file)
        .and_then(|mut r| r.read_to_end(&mut bytes))
        .with_context(|| format!("{}: cannot read", file.display()))?;
    if !is_jsonl(file) {
        return Ok(vec![to_text(bytes, file, 0, policy, replaced)?]);
    }
    let mut docs = Vec::new();
    let mut offset = 0;
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_start = offset;
        offset += line.len() + 1;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let text = to_text(line.to_vec(), file, line_start, policy, replaced)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}:{}: not valid JSON", file.display(), n + 1))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => docs.push(t.to_string()),
            None => bail!(
                "{}:{}: no string field \"text\" (each JSONL line must be {{\"text\": \"...\"}})",
                file.display(),
                n + 1
            ),
        }
    }
    Ok(docs)
}

pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    kiln_tokenizer::formats::load(path)
        .with_context(|| format!("loading tokenizer {}", path.display()))
}

pub(crate) fn byte_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar
}

/// Accumulates tokens and writes full shards atomically.
struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    shard_tokens: usize,
    buf: Vec<u32>,
    written: usize,
    tokens: u64,
}

impl ShardWriter {
    fn new(dir: &Path, prefix: &'static str, shard_tokens: usize) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            prefix,
            shard_tokens,
            buf: Vec::new(),
            written: 0,
            tokens: 0,
        }
    }

    fn push(&mut self, ids: &[u32]) -> Result<()> {
        self.buf.extend_from_slice(ids);
        self.tokens += ids.len() as u64;
        while self.buf.len() >= self.shard_tokens {
            let rest = self.buf.split_off(self.shard_tokens);
            self.flush()?;
            self.buf = rest;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!("{}_{:06}.bin", self.prefix, self.written));
        kiln_data::shard::write_shard(&path, &self.buf)?;
        self.written += 1;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(usize, u64)> {
        if !self.buf.is_empty() {
            self.flush()?;
        }
        Ok((self.written, self.tokens))
    }
}

/// Removes `meta.json` (first: the directory reads as unfinished from then
/// on) and the shards an earlier run wrote into `dir`.
fn remove_earlier_outputs(dir: &Path) -> Result<()> {
    let meta = dir.join("meta.json");
    match std::fs::remove_file(&meta) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("{}: cannot remove", meta.display()))
        }
        _ => {}
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let shard =
            ["train_", "val_"].iter().any(|p| name.starts_with(p)) && name.ends_with(".bin");
        if shard {
            std::fs::remove_file(&path).with_context(|| {
                format!("{}: cannot remove an earlier run's shard", path.display())
            })?;
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if args.shard_tokens == 0 {
        bail!("--shard-tokens must be positive");
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!(
            "--val-fraction must be in [0, 1), got {}",
            args.val_fraction
        );
    }
    let tok = load_tokenizer(&args.tokenizer)?;
    let eot = tok.special_id(kiln_tokenizer::ENDOFTEXT).with_context(|| {
        format!(
            "{}: the tokenizer has no {} special token to separate documents",
            args.tokenizer.display(),
            kiln_tokenizer::ENDOFTEXT
        )
    })?;
    let files = collect_files(&args.input)?;
    let _lock = kiln_stdx::lock::DirLock::claim(&args.output).with_context(|| {
        format!(
            "{}: cannot claim the output directory",
            args.output.display()
        )
    })?;
    remove_earlier_outputs(&args.output)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    let bar = byte_bar(total);
    bar.set_message("tokenizing");
    let policy = Utf8Policy {
        replace: args.replace_invalid_utf8,
    };
    let replaced = AtomicU64::new(0);
    let val_every = if args.val_fraction > 0.0 {
        Some(((1.0 / args.val_fraction).round() as u64).max(2))
    } else {
        None
    };
    let mut train = ShardWriter::new(&args.output, "train", args.shard_tokens);
    let mut val = ShardWriter::new(&args.output, "val", args.shard_tokens);
    let mut doc_index = 0u64;
    let (mut n_train_docs, mut n_val_docs) = (0u64, 0u64);

    // Batches of ~32 MB of documents, encoded in parallel, written in order.
    const BATCH_BYTES: usize = 32 << 20;
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut flush_batch =
        |batch: &mut Vec<String>, train: &mut ShardWriter, val: &mut ShardWriter| -> Result<()> {
            let encoded: Vec<Vec<u32>> = batch
                .par_iter()
                .map(|d| {
                    let mut ids = Vec::with_capacity(d.len() / 3 + 1);
                    ids.push(eot);
                    // Document text is text: a literal "<|endoftext|>" inside
                    // a document must not split it.
                    tok.encode_into(d, &SpecialPolicy::all_text(), &mut ids)
                        .expect("all-text policy never fails");
                    ids
                })
                .collect();
            for ids in encoded {
                let to_val = val_every.is_some_and(|k| doc_index % k == k - 1);
                if to_val {
                    val.push(&ids)?;
                    n_val_docs += 1;
                } else {
                    train.push(&ids)?;
                    n_train_docs += 1;
                }
                doc_index += 1;
            }
            batch.clear();
            Ok(())
        };
    for f in &files {
        let docs = read_documents(f, policy, &replaced)?;
        for d in docs {
            batch_bytes += d.len();
            batch.push(d);
        }
        if batch_bytes >= BATCH_BYTES {
            flush_batch(&mut batch, &mut train, &mut val)?;
            batch_bytes = 0;
        }
        bar.inc(f.metadata().map(|m| m.len()).unwrap_or(0));
    }
    flush_batch(&mut batch, &mut train, &mut val)?;
    bar.finish_and_clear();
    let (train_shards, train_tokens) = train.finish()?;
    let (val_shards, val_tokens) = val.finish()?;
    let meta = serde_json::json!({
        "tokenizer": args.tokenizer.display().to_string(),
        "vocab_size": tok.vocab_size(),
        "eot_id": eot,
        "train": {"documents": n_train_docs, "tokens": train_tokens, "shards": train_shards},
        "val": {"documents": n_val_docs, "tokens": val_tokens, "shards": val_shards},
        "invalid_utf8_replaced": replaced.load(Ordering::Relaxed),
    });
    let meta_path = args.output.join("meta.json");
    kiln_stdx::fs::write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())
        .with_context(|| format!("{}: cannot write", meta_path.display()))?;
    eprintln!(
        "tokenized {} documents: train {train_tokens} tokens in {train_shards} shards, val {val_tokens} tokens in {val_shards} shards -> {}",
        n_train_docs + n_val_docs,
        args.output.display()
    );
    let r = replaced.load(Ordering::Relaxed);
    if r > 0 {
        eprintln!("replaced {r} invalid UTF-8 sequences with U+FFFD");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-cli-tok-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn invalid_utf8_is_reported_with_offset_or_replaced() {
        let d = tmpdir("utf8");
        let f = d.join("bad.txt");
        std::fs::write(&f, b"hello \xff world \xc3").unwrap();
        let n = AtomicU64::new(0);
        let e = read_documents(&f, Utf8Policy { replace: false }, &n).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("bad.txt") && msg.contains("byte offset 6"),
            "{msg}"
        );
        let docs = read_documents(&f, Utf8Policy { replace: true }, &n).unwrap();
        assert_eq!(docs, vec!["hello \u{FFFD} world \u{FFFD}"]);
        assert_eq!(n.load(Ordering::Relaxed), 2);
        // JSONL: offset is counted from the file start
        let j = d.join("bad.jsonl");
        std::fs::write(&j, b"{\"text\": \"a\"}\n{\"text\": \"\xfe\"}\n").unwrap();
        let msg = read_documents(&j, Utf8Policy { replace: false }, &n)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("byte offset 24"), "{msg}");
        std::fs::write(&j, b"{\"text\": \"a\"}\n{\"txt\": 1}\n").unwrap();
        let msg = read_documents(&j, Utf8Policy { replace: false }, &n)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bad.jsonl:2") && msg.contains("\"text\""),
            "{msg}"
        );
    }

    #[test]
    fn end_to_end_train_then_tokenize_into_shards() {
        let d = tmpdir("e2e");
        let docs_dir = d.join("docs");
        std::fs::create_dir_all(&docs_dir).unwrap();
        let mut lines = String::new();
        for i in 0..200 {
            lines.push_str(&format!(
                "{{\"text\": \"Document {i}: the quick brown fox jumps over the lazy dog {}.\"}}\n",
                i * 7
            ));
        }
        std::fs::write(docs_dir.join("a.jsonl"), &lines).unwrap();
        std::fs::write(docs_dir.join("b.txt"), "A plain text document.\nTwo lines.").unwrap();
        let tok_path = d.join("tok.json");
        crate::cmd::tokenizer::run(crate::cmd::tokenizer::Command::Train(
            crate::cmd::tokenizer::TrainArgs {
                input: vec![docs_dir.clone()],
                vocab_size: 400,
                output: tok_path.clone(),
                pattern: "cl100k".into(),
                special: vec![],
                min_frequency: 0,
                replace_invalid_utf8: false,
            },
        ))
        .unwrap();
        let out = d.join("shards");
        run(Args {
            tokenizer: tok_path.clone(),
            input: vec![docs_dir],
            output: out.clone(),
            shard_tokens: 1000,
            val_fraction: 0.1,
            replace_invalid_utf8: false,
        })
        .unwrap();
        let tok = load_tokenizer(&tok_path).unwrap();
        let eot = tok.special_id("<|endoftext|>").unwrap();
        let mut train_ids = Vec::new();
        let mut n = 0;
        while let Ok(ids) = kiln_data::shard::read_shard(&out.join(format!("train_{n:06}.bin"))) {
            assert!(ids.len() <= 1000);
            train_ids.extend(ids);
            n += 1;
        }
        assert!(n >= 2, "several shards expected, got {n}");
        let val = kiln_data::shard::read_shard(&out.join("val_000000.bin")).unwrap();
        // 201 documents: every 10th is validation
        let count = |v: &[u32]| v.iter().filter(|&&t| t == eot).count();
        assert_eq!(count(&val), 20);
        assert_eq!(count(&train_ids), 181);
        assert_eq!(train_ids[0], eot);
        let text = tok.decode(&train_ids).unwrap();
        assert!(text.starts_with("<|endoftext|>Document 0: the quick"));
        assert!(text.ends_with("<|endoftext|>A plain text document.\nTwo lines."));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["val"]["documents"], 20);
    }
}
