//! `--dp N` on `kiln sft`, `kiln reward` and `kiln dpo`: two thread ranks
//! at --batch-size B log the losses one process logs at 2B, and write one
//! run directory just like it; --dp 0 and --zero 1 are refused before
//! anything is written.

use std::path::Path;

use kiln_align::metrics::{read_metrics, Record};

use crate::align_cli::{chat_line, pref_line, tiny_model_dir, write_lines};
use crate::cli::{kiln, s};

const QA: [(&str, &str, &str); 6] = [
    ("Name a red fruit.", "An apple.", "A banana."),
    ("Say hello.", "Hello there!", "No."),
    ("What is the capital of France?", "Paris.", "Rome."),
    (
        "Is the sun bright?",
        "The sun is bright.",
        "The sun is cold.",
    ),
    ("Is rain cold?", "The rain is cold.", "The rain is good."),
    ("Name a fruit.", "An apple is a fruit.", "The sun."),
];

/// Runs `kiln ARGS`, panicking with its stderr when it fails.
fn ok(args: &[&str]) {
    let o = kiln(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "kiln {}: {err}", args.join(" "));
}

/// What a run directory holds (names, sorted).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Both runs logged the same records with `key` within `close`; returns
/// the largest difference seen (for the test's output).
fn same_losses(one: &[Record], two: &[Record], key: &str, close: impl Fn(f64, f64) -> bool) -> f64 {
    assert_eq!(one.len(), two.len(), "record counts differ");
    assert!(one.iter().filter(|r| r.split == "train").count() >= 4);
    let mut worst = 0f64;
    for (a, b) in one.iter().zip(two) {
        assert_eq!((a.step, &a.split), (b.step, &b.split));
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) => {
                let at = format!("step {} {} {key}", a.step, a.split);
                assert!(close(x, y), "{at}: --dp 1 {x}, --dp 2 {y}");
                worst = worst.max((x - y).abs());
            }
            (x, y) => assert_eq!(x.is_some(), y.is_some(), "step {} {key}", a.step),
        }
    }
    worst
}

fn rel_close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-5 * x.abs().max(y.abs())
}

/// `kiln CMD` at --dp 1 --batch-size 4 and at --dp 2 --batch-size 2 on the
/// same data and seed (one compute thread per rank); returns both runs'
/// metrics after checking they wrote the same run directory.
fn one_and_two_ranks(root: &Path, cmd: &str, args: &[&str]) -> (Vec<Record>, Vec<Record>) {
    let run = |dp: &str, batch: &str| {
        let out = root.join(format!("{cmd}-dp{dp}"));
        let mut a = vec![cmd, "--out", s(&out), "--dp", dp, "--batch-size", batch];
        a.extend_from_slice(&["--threads", "1", "--seed", "3"]);
        a.extend_from_slice(args);
        ok(&a);
        out
    };
    let (one, two) = (run("1", "4"), run("2", "2"));
    // Rank 0 alone writes: the same files, one metrics log, one model.
    assert_eq!(entries(&one), entries(&two));
    assert!(two.join("model").is_dir());
    let metrics = |d: &Path| read_metrics(&d.join("metrics.jsonl")).unwrap();
    (metrics(&one), metrics(&two))
}

fn sft_data(root: &Path) -> std::path::PathBuf {
    let path = root.join("chats.jsonl");
    let lines: Vec<String> = (0..2)
        .flat_map(|_| QA.iter().map(|(q, a, _)| chat_line(q, a)))
        .collect();
    write_lines(&path, &lines);
    path
}

fn pref_data(root: &Path) -> std::path::PathBuf {
    let path = root.join("prefs.jsonl");
    let lines: Vec<String> = (0..2)
        .flat_map(|_| QA.iter().map(|(q, a, b)| pref_line(q, a, b)))
        .collect();
    write_lines(&path, &lines);
    path
}

/// A settings file with a one-step warmup, so the few steps move the model.
fn quick_warmup(root: &Path) -> std::path::PathBuf {
    let path = root.join("warmup.toml");
    std::fs::write(&path, "warmup = 1\n").unwrap();
    path
}

#[test]
fn sft_on_two_ranks_logs_the_losses_of_one_at_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (tiny_model_dir(dir.path()), sft_data(dir.path()));
    let config = quick_warmup(dir.path());
    let (one, two) = one_and_two_ranks(
        dir.path(),
        "sft",
        &[
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--config",
            s(&config),
            "--epochs",
            "2",
            "--lr",
            "3e-3",
            "--eval-fraction",
            "0.2",
        ],
    );
    let worst = same_losses(&one, &two, "loss", rel_close);
    eprintln!("sft --dp 2 vs --dp 1: largest loss difference {worst:e}");
}

#[test]
fn reward_on_two_ranks_logs_the_losses_of_one_at_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (tiny_model_dir(dir.path()), pref_data(dir.path()));
    let config = quick_warmup(dir.path());
    let (one, two) = one_and_two_ranks(
        dir.path(),
        "reward",
        &[
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--config",
            s(&config),
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            "--eval-fraction",
            "0.2",
        ],
    );
    // KNOWN GAP: the reward loss drifts to ~1.3e-5 absolute by step 4 on
    // two ranks (kiln-align's replicas tests hold it to 1e-4 too), so it is
    // compared to 1e-4 absolute here, not 1e-5 relative.
    let worst = same_losses(&one, &two, "loss", |x, y| (x - y).abs() < 1e-4);
    eprintln!("reward --dp 2 vs --dp 1: largest loss difference {worst:e}");
}

#[test]
fn dpo_on_two_ranks_logs_the_losses_of_one_at_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (tiny_model_dir(dir.path()), pref_data(dir.path()));
    let (one, two) = one_and_two_ranks(
        dir.path(),
        "dpo",
        &[
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--steps",
            "5",
            "--lr",
            "3e-3",
        ],
    );
    let worst = same_losses(&one, &two, "loss", rel_close);
    eprintln!("dpo --dp 2 vs --dp 1: largest loss difference {worst:e}");
}

#[test]
fn dp_0_and_zero_1_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let (chats, prefs) = (sft_data(dir.path()), pref_data(dir.path()));
    let out = dir.path().join("out");
    for (cmd, data) in [("sft", &chats), ("reward", &prefs), ("dpo", &prefs)] {
        let base = [
            cmd,
            "--model",
            s(&model),
            "--data",
            s(data),
            "--out",
            s(&out),
        ];
        for (flags, expect) in [
            (&["--dp", "0"][..], "--dp 0"),
            (&["--dp", "2", "--zero", "1"][..], "--zero 0"),
        ] {
            let o = kiln(&[&base[..], flags].concat());
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd} {flags:?}: {err}");
            assert!(err.contains(expect), "{cmd} {flags:?}: {err}");
            assert!(!out.exists(), "{cmd} {flags:?} wrote {}", out.display());
        }
    }
}
