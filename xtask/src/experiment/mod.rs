//! `cargo xtask experiment data-quality [--quick] [--threads N]`: does
//! curation pay? The same model is trained for the same number of tokens on
//! the raw embedded corpus and on its curated version, and both are scored
//! on the same held-out clean text. Everything runs through the release
//! `kiln` binary (the real CLI):
//!
//! 1. `kiln data curate` the raw corpus (default config, decontaminated
//!    against data/eval/passages.jsonl); every 20th kept document becomes
//!    the held-out set, before any training.
//! 2. Training sets, both decontaminated against the held-out set (13-gram
//!    overlap, so its copies and near-copies in the raw corpus go too):
//!    curated = `kiln data curate --eval heldout.jsonl` (the same curation
//!    again); raw = `kiln data curate` with every filter, normalisation and
//!    dedup off except decontamination.
//! 3. One tokenizer, trained on the curated training text (as
//!    `kiln pipeline` does), tokenizes both training sets and the held-out
//!    set, so both models are scored on the very same token sequence.
//! 4. `kiln pretrain` each (same preset, steps, batch, lr, seed), with
//!    checkpoints along the way; `kiln eval` each checkpoint on the held-out
//!    tokens.
//! 5. docs/experiments/data-quality.md (table) and .svg (curves); `--quick`
//!    writes them under the work directory instead.

mod jsonl;
mod report;
mod svg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use jsonl::Doc;
use report::{Arm, Results};

/// Settings of one experiment run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub model: &'static str,
    pub vocab_size: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub warmup: u64,
    /// Held-out loss is measured at every multiple of this step.
    pub eval_every: u64,
    /// Every `holdout_every`-th curated document is held out.
    pub holdout_every: usize,
    pub threads: usize,
    pub seed: u64,
}

impl Plan {
    fn new(quick: bool, threads: usize) -> Plan {
        if quick {
            Plan {
                quick,
                model: "tiny",
                vocab_size: 1024,
                steps: 40,
                batch_size: 8,
                seq_len: 64,
                lr: 3e-3,
                warmup: 5,
                eval_every: 10,
                holdout_every: 20,
                threads,
                seed: 1337,
            }
        } else {
            Plan {
                quick,
                model: "tiny",
                vocab_size: 4096,
                steps: 150,
                batch_size: 16,
                seq_len: 128,
                lr: 3e-3,
                warmup: 15,
                eval_every: 25,
                holdout_every: 20,
                threads,
                seed: 1337,
            }
        }
    }

    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.seq_len) as u64
    }
}

fn usage() -> String {
    "usage: cargo xtask experiment data-quality [--quick] [--threads N] [--kiln PATH] [--reuse]"
        .into()
}

pub fn run(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) != Some("data-quality") {
        return Err(usage());
    }
    let mut quick = false;
    let mut kiln_bin = None;
    let mut reuse = false;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--reuse" => reuse = true,
            "--kiln" => {
                kiln_bin =
                    Some(PathBuf::from(rest.next().ok_or_else(|| {
                        format!("--kiln needs a path; {}", usage())
                    })?))
            }
            "--threads" => {
                threads = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--threads needs a positive number; {}", usage()))?
            }
            other => return Err(format!("unknown argument {other:?}; {}", usage())),
        }
    }
    data_quality(&Plan::new(quick, threads), kiln_bin, reuse)
}

/// Runs the built `kiln` binary; its output goes to `logs/NAME.log`.
struct Kiln {
    bin: PathBuf,
    logs: PathBuf,
}

impl Kiln {
    fn run(&self, name: &str, args: &[&str]) -> Result<String, String> {
        eprintln!("$ kiln {}", args.join(" "));
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let log = self.logs.join(format!("{name}.log"));
        let _ = std::fs::write(
            &log,
            format!("$ kiln {}\n{stdout}\n{stderr}", args.join(" ")),
        );
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            return Err(format!(
                "`kiln {}` failed ({}); log {}:\n{}",
                args.join(" "),
                out.status,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        Ok(stdout)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("paths under the workspace are UTF-8")
}

/// `kiln_bin`: a prebuilt `kiln` to use instead of building the release one.
/// `reuse`: keep the data stages (curation, tokenizer, token shards) a
/// previous run left in the work directory; training always reruns.
fn data_quality(plan: &Plan, kiln_bin: Option<PathBuf>, reuse: bool) -> Result<(), String> {
    let started = Instant::now();
    let machine = report::machine();
    let root = super::root();
    let bin = match kiln_bin {
        Some(b) => b,
        None => {
            crate::cargo(&["build", "--release", "-p", "kiln-cli", "--bin", "kiln"])?;
            super::target_dir()
                .join("release")
                .join(format!("kiln{}", std::env::consts::EXE_SUFFIX))
        }
    };
    let work = super::target_dir().join("experiments").join(if plan.quick {
        "data-quality-quick"
    } else {
        "data-quality"
    });
    if work.exists() && !reuse {
        std::fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let kiln = Kiln { bin, logs };
    let raw_corpus = root.join("data/corpus/raw.jsonl.zst");
    let passages = root.join("data/eval/passages.jsonl");
    let threads = plan.threads.to_string();
    let todo = |done: &Path| !(reuse && done.exists());

    // 1. Curate once, then hold out every k-th kept document.
    let all = work.join("curated-all");
    if todo(&all.join("stats.json")) {
        kiln.run(
            "curate-all",
            &[
                "data",
                "curate",
                "--input",
                s(&raw_corpus),
                "--output",
                s(&all),
                "--eval",
                s(&passages),
                "--workers",
                &threads,
            ],
        )?;
    }
    let curated_all = jsonl::read_kept(&all.join("kept"))?;
    let heldout: Vec<&Doc> = curated_all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % plan.holdout_every == plan.holdout_every - 1)
        .map(|(_, d)| d)
        .collect();
    let heldout_path = work.join("heldout.jsonl");
    jsonl::write_docs(&heldout_path, &heldout)?;
    eprintln!(
        "held out {} of {} curated documents",
        heldout.len(),
        curated_all.len()
    );

    // 2. The two training sets, decontaminated against the held-out set.
    let curated = work.join("curated");
    if todo(&curated.join("stats.json")) {
        kiln.run(
            "curate-curated",
            &[
                "data",
                "curate",
                "--input",
                s(&raw_corpus),
                "--output",
                s(&curated),
                "--eval",
                s(&passages),
                "--eval",
                s(&heldout_path),
                "--workers",
                &threads,
            ],
        )?;
    }
    let raw = work.join("raw");
    let raw_config = work.join("raw-decontaminate-only.toml");
    let off: String = [
        "normalize",
        "language",
        "gopher_repetition",
        "gopher_quality",
        "c4",
        "fineweb",
        "exact_dedup",
        "minhash",
    ]
    .iter()
    .map(|sec| format!("[{sec}]\nenabled = false\n"))
    .collect();
    std::fs::write(&raw_config, off).map_err(|e| format!("{}: {e}", raw_config.display()))?;
    if todo(&raw.join("stats.json")) {
        kiln.run(
            "curate-raw",
            &[
                "data",
                "curate",
                "--input",
                s(&raw_corpus),
                "--output",
                s(&raw),
                "--config",
                s(&raw_config),
                "--eval",
                s(&heldout_path),
                "--workers",
                &threads,
            ],
        )?;
    }
    // 13-grams miss a held-out document that C4 cut down to short lines
    // (its kept lines are no longer adjacent in the raw text): drop, in both
    // sets, any document with a held-out id or sharing a held-out line.
    let overlap = Overlap::new(&heldout);
    let mut arms = Vec::new();
    for (name, dir) in [("raw", &raw), ("curated", &curated)] {
        let docs = jsonl::read_kept(&dir.join("kept"))?;
        let train: Vec<&Doc> = docs.iter().filter(|d| !overlap.hits(d)).collect();
        jsonl::write_docs(&dir.join("train.jsonl"), &train)?;
        let stats = jsonl::read_json(&dir.join("stats.json"))?;
        arms.push(Arm {
            name,
            docs: train.len() as u64,
            bytes: train.iter().map(|d| d.text.len() as u64).sum(),
            decontaminated: stats["filters"]["decontamination"]["docs_removed"]
                .as_u64()
                .unwrap_or(0),
            line_overlap: (docs.len() - train.len()) as u64,
            ..Arm::default()
        });
    }

    // 3. One tokenizer (fitted to the curated training text), three token sets.
    let tokenizer = work.join("tokenizer.json");
    let vocab = plan.vocab_size.to_string();
    if todo(&tokenizer) {
        kiln.run(
            "tokenizer",
            &[
                "tokenizer",
                "train",
                "--input",
                s(&curated.join("train.jsonl")),
                "--vocab-size",
                &vocab,
                "--output",
                s(&tokenizer),
                "--pattern",
                "o200k",
                "--min-frequency",
                "2",
            ],
        )?;
    }
    let tokenize = |name: &str, input: &Path, out: &Path| -> Result<u64, String> {
        if todo(&out.join("meta.json")) {
            kiln.run(
                &format!("tokenize-{name}"),
                &[
                    "data",
                    "tokenize",
                    "--tokenizer",
                    s(&tokenizer),
                    "--input",
                    s(input),
                    "--output",
                    s(out),
                    "--val-fraction",
                    "0",
                ],
            )?;
        }
        let meta = jsonl::read_json(&out.join("meta.json"))?;
        meta["train"]["tokens"]
            .as_u64()
            .ok_or_else(|| format!("{}: no train.tokens", out.join("meta.json").display()))
    };
    let heldout_tokens_dir = work.join("heldout-tokens");
    let heldout_tokens = tokenize("heldout", &heldout_path, &heldout_tokens_dir)?;
    let heldout_shard = heldout_tokens_dir.join("train_000000.bin");
    for (arm, dir) in arms.iter_mut().zip([&raw, &curated]) {
        arm.tokens = tokenize(arm.name, &dir.join("train.jsonl"), &dir.join("tokens"))?;
    }

    // 4. Train each arm the same way; held-out loss at every checkpoint.
    let steps = plan.steps.to_string();
    let batch = plan.batch_size.to_string();
    let seq = plan.seq_len.to_string();
    let lr = plan.lr.to_string();
    let min_lr = (plan.lr / 10.0).to_string();
    let warmup = plan.warmup.to_string();
    let every = plan.eval_every.to_string();
    let seed = plan.seed.to_string();
    // Padding the vocabulary to a multiple of 64 costs nothing (as pretrain does).
    let model_vocab = plan.vocab_size.div_ceil(64) * 64;
    let model_vocab_s = model_vocab.to_string();
    for (arm, dir) in arms.iter_mut().zip([&raw, &curated]) {
        let run_dir = dir.join("run");
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        }
        let t0 = Instant::now();
        kiln.run(
            &format!("pretrain-{}", arm.name),
            &[
                "pretrain",
                "--data",
                s(&dir.join("tokens")),
                "--out",
                s(&run_dir),
                "--model",
                plan.model,
                "--vocab-size",
                &model_vocab_s,
                "--steps",
                &steps,
                "--batch-size",
                &batch,
                "--seq-len",
                &seq,
                "--lr",
                &lr,
                "--min-lr",
                &min_lr,
                "--warmup",
                &warmup,
                "--seed",
                &seed,
                "--checkpoint-every",
                &every,
                "--threads",
                &threads,
            ],
        )?;
        arm.train_wall_s = t0.elapsed().as_secs_f64();
        arm.train_curve = jsonl::read_train_losses(&run_dir.join("metrics.jsonl"))?;
        let mut step = plan.eval_every.min(plan.steps);
        loop {
            let ckpt = run_dir.join("checkpoints").join(format!("step_{step:08}"));
            let out = kiln.run(
                &format!("eval-{}-{step}", arm.name),
                &[
                    "eval",
                    "--checkpoint",
                    s(&ckpt),
                    "--data",
                    s(&heldout_shard),
                    "--seq-len",
                    &seq,
                    "--batch-size",
                    "16",
                    "--threads",
                    &threads,
                ],
            )?;
            let v: serde_json::Value = serde_json::from_str(out.trim())
                .map_err(|e| format!("kiln eval printed {out:?}: {e}"))?;
            let loss = v["loss"].as_f64().ok_or("kiln eval printed no loss")?;
            arm.eval_curve.push((step, loss));
            arm.eval_tokens = v["tokens"].as_u64().unwrap_or(0);
            if step == plan.steps {
                break;
            }
            step = (step + plan.eval_every).min(plan.steps);
        }
        if arm.name == "raw" {
            arm.params = report::read_param_count(&run_dir, plan.steps)?;
        }
    }
    let params = arms[0].params;
    arms[1].params = params;

    // 5. Report.
    let results = Results {
        plan: plan.clone(),
        heldout_docs: heldout.len() as u64,
        heldout_bytes: heldout.iter().map(|d| d.text.len() as u64).sum(),
        heldout_tokens,
        curated_all_docs: curated_all.len() as u64,
        arms,
        total_wall_s: started.elapsed().as_secs_f64(),
        machine,
    };
    // A quick run is a smoke check: it must not overwrite the committed page.
    let doc_dir = if plan.quick {
        work.clone()
    } else {
        root.join("docs/experiments")
    };
    report::write(&results, &doc_dir, &work)?;
    Ok(())
}

/// Held-out ids and lines (trimmed, at least `MIN_LINE` bytes: shorter
/// lines such as "Amen." recur by chance).
struct Overlap<'a> {
    ids: std::collections::HashSet<&'a str>,
    lines: std::collections::HashSet<&'a str>,
}

const MIN_LINE: usize = 25;

impl<'a> Overlap<'a> {
    fn new(heldout: &[&'a Doc]) -> Self {
        Overlap {
            ids: heldout.iter().map(|d| d.id.as_str()).collect(),
            lines: heldout
                .iter()
                .flat_map(|d| d.text.lines().map(str::trim))
                .filter(|l| l.len() >= MIN_LINE)
                .collect(),
        }
    }

    fn hits(&self, d: &Doc) -> bool {
        self.ids.contains(d.id.as_str())
            || d.text
                .lines()
                .map(str::trim)
                .any(|l| l.len() >= MIN_LINE && self.lines.contains(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_by_id_or_long_shared_line() {
        let doc = |id: &str, text: &str| Doc {
            id: id.into(),
            text: text.into(),
        };
        let h = doc("h1", "Who is filled with harmony is like a newborn.\nAmen.");
        let held = [&h];
        let o = Overlap::new(&held);
        assert!(o.hits(&doc("h1", "other text")));
        assert!(o.hits(&doc(
            "x",
            "Soft Bones\n  Who is filled with harmony is like a newborn.\n"
        )));
        assert!(!o.hits(&doc("y", "Amen.\nWho is filled with harmony")));
    }
}
