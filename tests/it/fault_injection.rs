//! Fault injection through the real binary (issue 17): each command is
//! killed with SIGKILL at random moments, then rerun; its final outputs must
//! equal an uninterrupted run's, and what a killed run leaves must never be
//! accepted downstream. Also: concurrent runs into one directory, and a
//! full disk (a small tmpfs, where this machine lets us mount one).
//!
//! Kill moments come from a seed printed on failure (`KILN_FAULT_SEED`
//! reproduces a run). Tiny models and few steps keep each test to seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::align_cli::{chat_line, pref_line, tiny_model_dir, write_lines};
use crate::cli::{kiln, kiln_bin, s};
use crate::train::byte_shards;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A small xorshift: the kill delays, reproducible from the printed seed.
struct Delays(u64);

impl Delays {
    fn new(test: &str) -> Self {
        let seed = std::env::var("KILN_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos() as u64
                    | 1
            });
        eprintln!("{test}: KILN_FAULT_SEED={seed}");
        Delays(seed)
    }

    /// A delay in [0, max).
    fn next(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

/// Runs `kiln args` to the end; returns the output and how long it took.
fn timed(args: &[String]) -> (Output, Duration) {
    let t = Instant::now();
    let o = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (o, t.elapsed())
}

/// Starts `kiln args` and kills it with SIGKILL after `delay` (if it is
/// still running). Returns whether it was killed.
fn kill_after(args: &[String], delay: Duration) -> bool {
    let mut child = Command::new(kiln_bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    child.wait().unwrap();
    killed
}

/// Every file under `dir` (relative path -> bytes), temps and the lock
/// file left out.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}

/// `files` of `dir` under `sub`, for comparing outputs that must be equal.
fn files_under(dir: &Path, sub: &str) -> Vec<(String, Vec<u8>)> {
    files(&dir.join(sub))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn corpus(dir: &Path) -> Vec<PathBuf> {
    (0..6)
        .map(|k| {
            let p = dir.join(format!("part{k}.jsonl"));
            let lines: String = (0..40)
                .map(|i| {
                    let text = format!(
                        "Part {k}, document {i}. The old mill stood by the river and the \
                         miller kept the wheel turning through the long summer days, while \
                         the children of the village counted the boats number {} going by.",
                        i * 7 + k
                    );
                    serde_json::json!({ "id": format!("{k}-{i}"), "text": text }).to_string() + "\n"
                })
                .collect();
            std::fs::write(&p, lines).unwrap();
            p
        })
        .collect()
}

#[test]
fn curate_killed_at_random_moments_then_rerun_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let args = |out: &Path| {
        let mut a = owned(&[
            "data",
            "curate",
            "--workers",
            "1",
            "--output",
            s(out),
            "--input",
        ]);
        a.extend(inputs.iter().map(|p| s(p).to_string()));
        a
    };
    let reference = dir.path().join("reference");
    let (o, took) = timed(&args(&reference));
    assert_ok(&o);
    let want = files_under(&reference, "kept");
    let stats = json(&reference.join("stats.json"));
    let mut delays = Delays::new("curate");
    let out = dir.path().join("out");
    for _ in 0..4 {
        let killed = kill_after(&args(&out), delays.next(took.mul_f64(1.2)));
        if killed && !out.join("stats.json").exists() && out.join("kept").exists() {
            let o = kiln(&[
                "tokenizer",
                "train",
                "--input",
                s(&out.join("kept")),
                "--vocab-size",
                "300",
                "--output",
                s(&dir.path().join("tok.json")),
            ]);
            assert_eq!(
                o.status.code(),
                Some(2),
                "a partial kept/ was accepted: {}",
                stderr(&o)
            );
        }
    }
    assert_ok(&timed(&args(&out)).0);
    assert_eq!(files_under(&out, "kept"), want);
    let again = json(&out.join("stats.json"));
    for k in ["input_docs", "kept_docs", "kept_bytes"] {
        assert_eq!(again[k], stats[k], "{k}");
    }
}

/// A tokenizer and a JSONL corpus to tokenize.
fn tokenizer_and_docs(dir: &Path) -> (PathBuf, PathBuf) {
    let docs = corpus(dir).remove(0);
    let tok = dir.join("tok.json");
    assert_ok(&kiln(&[
        "tokenizer",
        "train",
        "--input",
        s(&docs),
        "--vocab-size",
        "300",
        "--output",
        s(&tok),
    ]));
    (tok, docs)
}

#[test]
fn tokenize_killed_at_random_moments_then_rerun_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, docs) = tokenizer_and_docs(dir.path());
    let args = |out: &Path| {
        owned(&[
            "data",
            "tokenize",
            "--tokenizer",
            s(&tok),
            "--input",
            s(&docs),
            "--output",
            s(out),
            "--shard-tokens",
            "400",
            "--val-fraction",
            "0.1",
        ])
    };
    let reference = dir.path().join("reference");
    let (o, took) = timed(&args(&reference));
    assert_ok(&o);
    let want = files(&reference);
    let mut delays = Delays::new("tokenize");
    let out = dir.path().join("out");
    for _ in 0..4 {
        let killed = kill_after(&args(&out), delays.next(took.mul_f64(1.2)));
        if killed && !out.join("meta.json").exists() && out.is_dir() {
            let o = kiln(&[
                "pretrain",
                "--data",
                s(&out),
                "--out",
                s(&dir.path().join("run")),
                "--steps",
                "1",
                "--vocab-size",
                "320",
                "--seq-len",
                "8",
                "--batch-size",
                "1",
            ]);
            assert_eq!(
                o.status.code(),
                Some(2),
                "a partial tokenize output was accepted"
            );
        }
    }
    assert_ok(&timed(&args(&out)).0);
    let got = files(&out);
    assert_eq!(names(&got), names(&want));
    assert!(
        got == want,
        "the rerun's shards differ from the uninterrupted run's"
    );
}

fn pretrain_args(data: &Path, out: &Path, resume: bool) -> Vec<String> {
    let mut a = owned(&[
        "pretrain",
        "--data",
        s(data),
        "--out",
        s(out),
        "--model",
        "tiny",
        "--steps",
        "8",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--seed",
        "5",
        "--threads",
        "1",
        "--vocab-size",
        "256",
        "--checkpoint-every",
        "2",
    ]);
    if resume {
        a.push("--resume".into());
    }
    a
}

#[test]
fn pretrain_killed_at_random_moments_then_resumed_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let reference = dir.path().join("reference");
    let (o, took) = timed(&pretrain_args(&train, &reference, false));
    assert_ok(&o);
    let last = "checkpoints/step_00000008";
    let want = files_under(&reference, last);
    let mut delays = Delays::new("pretrain");
    let out = dir.path().join("out");
    for _ in 0..3 {
        kill_after(
            &pretrain_args(&train, &out, true),
            delays.next(took.mul_f64(1.2)),
        );
    }
    assert_ok(&timed(&pretrain_args(&train, &out, true)).0);
    assert_eq!(files_under(&out, last), want);
    let losses = |d: &Path| -> Vec<u32> {
        kiln_train::metrics::read_metrics(&d.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.loss.to_bits())
            .collect()
    };
    assert_eq!(losses(&out), losses(&reference));
}

/// A base model, chats and preference pairs for sft / dpo.
pub(crate) fn align_inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let base = tiny_model_dir(dir);
    let chats = dir.join("chats.jsonl");
    let qa = [
        ("Name a red fruit.", "An apple."),
        ("Say hello.", "Hello there!"),
        ("What is the capital of France?", "Paris."),
    ];
    let lines: Vec<String> = (0..4)
        .flat_map(|_| qa.iter().map(|(q, a)| chat_line(q, a)))
        .collect();
    write_lines(&chats, &lines);
    let prefs = dir.join("prefs.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            pref_line(
                &format!("Say {i} things."),
                "The sun is good.",
                "The rain is bad.",
            )
        })
        .collect();
    write_lines(&prefs, &lines);
    (base, chats, prefs)
}

/// Kills `args` (writing into `out`) at random moments, checking after each
/// kill that a result either is complete (summary.json and model/) or is
/// refused as a later stage's input; then reruns to the end.
fn kill_and_rerun(args: &[String], out: &Path, took: Duration, test: &str, consumer: &Path) {
    let mut delays = Delays::new(test);
    for _ in 0..3 {
        let killed = kill_after(args, delays.next(took.mul_f64(1.2)));
        let model = out.join("model");
        if killed && model.exists() && !out.join("summary.json").exists() {
            let o = kiln(&[
                "dpo",
                "--model",
                s(&model),
                "--data",
                s(consumer),
                "--out",
                s(&out.with_extension("downstream")),
                "--steps",
                "1",
            ]);
            assert_eq!(
                o.status.code(),
                Some(2),
                "an unfinished model/ was accepted"
            );
            assert!(stderr(&o).contains("did not finish"), "{}", stderr(&o));
        }
    }
    assert_ok(&timed(args).0);
}

#[test]
fn sft_and_dpo_killed_at_random_moments_then_rerun_equal_uninterrupted_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (base, chats, prefs) = align_inputs(dir.path());
    let sft = |out: &Path| {
        owned(&[
            "sft",
            "--model",
            s(&base),
            "--data",
            s(&chats),
            "--out",
            s(out),
            "--epochs",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--threads",
            "1",
            "--eval-fraction",
            "0",
        ])
    };
    let reference = dir.path().join("sft_reference");
    let (o, took) = timed(&sft(&reference));
    assert_ok(&o);
    let out = dir.path().join("sft");
    // A finished run first: a killed rerun must not leave it looking finished.
    assert_ok(&timed(&sft(&out)).0);
    kill_and_rerun(&sft(&out), &out, took, "sft", &prefs);
    assert_eq!(files_under(&out, "model"), files_under(&reference, "model"));

    let dpo = |out: &Path| {
        owned(&[
            "dpo",
            "--model",
            s(&reference.join("model")),
            "--data",
            s(&prefs),
            "--out",
            s(out),
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--threads",
            "1",
        ])
    };
    let dpo_reference = dir.path().join("dpo_reference");
    let (o, took) = timed(&dpo(&dpo_reference));
    assert_ok(&o);
    let out = dir.path().join("dpo");
    kill_and_rerun(&dpo(&out), &out, took, "dpo", &prefs);
    assert_eq!(
        files_under(&out, "model"),
        files_under(&dpo_reference, "model")
    );
}

#[test]
fn two_sft_runs_into_one_directory_one_is_refused_and_metrics_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (base, chats, _) = align_inputs(dir.path());
    let out = dir.path().join("sft");
    let args = owned(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&chats),
        "--out",
        s(&out),
        "--epochs",
        "100000",
        "--batch-size",
        "2",
        "--threads",
        "1",
    ]);
    let mut first = Command::new(kiln_bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let start = Instant::now();
    while !std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    let err = stderr(&second);
    assert!(
        err.contains("in use by another kiln run") && err.contains(&first.id().to_string()),
        "{err}"
    );
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    assert!(!out.join("summary.json").exists());
}

/// Runs `cmd` at lr 1e6 into `out`; it must stop with exit 2 and a
/// "diverging" message, saving no model and no summary. Returns stderr.
fn diverges(cmd: &str, base: &Path, data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        cmd,
        "--model",
        s(base),
        "--data",
        s(data),
        "--out",
        s(out),
        "--batch-size",
        "2",
        "--lr",
        "1e6",
        "--threads",
        "1",
    ];
    args.extend(extra);
    let o = kiln(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
    assert!(err.contains("diverging"), "{cmd}: {err}");
    assert!(!out.join("model").exists() && !out.join("summary.json").exists());
    err
}

#[test]
fn sft_reward_and_ipo_dpo_that_diverge_stop_with_a_message_and_save_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, chats, prefs) = align_inputs(dir.path());
    let no_eval = ["--eval-fraction", "0"];
    diverges(
        "sft",
        &base,
        &chats,
        &dir.path().join("sft"),
        &[&["--epochs", "20"], &no_eval[..]].concat(),
    );
    // Replies that differ from the first token on, so the scores do.
    let pairs = dir.path().join("reward_pairs.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| pref_line(&format!("Say {i} things."), "Paris is good.", "No."))
        .collect();
    write_lines(&pairs, &lines);
    diverges(
        "reward",
        &base,
        &pairs,
        &dir.path().join("reward"),
        &[&["--epochs", "30"], &no_eval[..]].concat(),
    );
    let err = diverges(
        "dpo",
        &base,
        &prefs,
        &dir.path().join("dpo"),
        &["--steps", "30", "--loss", "ipo"],
    );
    assert!(!err.contains("backward_weighted"), "{err}");
}

#[test]
fn curate_on_a_full_disk_names_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    // A private mount namespace: the tmpfs vanishes with the command.
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(format!("mount -t tmpfs -o size=8k tmpfs {}", s(&mnt)))
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipping the full-disk check: cannot mount a tmpfs in a private namespace here \
             (needs `unshare -rm` and tmpfs mounts)"
        );
        return;
    }
    let out = mnt.join("out");
    let mut script = format!(
        "mount -t tmpfs -o size=8k tmpfs {} && exec {} data curate --workers 1 --output {} --input",
        s(&mnt),
        s(kiln_bin()),
        s(&out)
    );
    for p in &inputs {
        script.push(' ');
        script.push_str(s(p));
    }
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no space left") && err.contains(s(&out)),
        "{err}"
    );
}
