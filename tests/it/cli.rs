//! The `kiln` binary's contract: pretrain / eval / generate outputs, kill +
//! `--resume` exactness across processes, and errors (exit code 2, one
//! message naming the file, nothing overwritten).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_train::metrics::read_metrics;

use crate::train::{byte_shards, loss_bits};

/// The `kiln` binary of this build (built once per test process, with the
/// profile the tests were built with, into the same target directory).
pub(crate) fn kiln_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap().to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // `--workspace --tests` resolves features exactly as `cargo test
        // --workspace` did, so every library built for the tests is reused
        // and only the binary itself compiles. `-p kiln-cli` alone resolves
        // features differently and rebuilt the whole dependency tree a second
        // time (twice the disk and minutes in CI).
        cmd.args([
            "build",
            "--quiet",
            "--workspace",
            "--tests",
            "--bin",
            "kiln",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if cfg!(feature = "mpi") {
            // the features this test build was given, so its artifacts are reused
            cmd.args(["--features", "kiln-cli/mpi,kiln-tests/mpi"]);
        }
        if release {
            cmd.arg("--release");
        } else {
            cmd.args(["--profile", "test"]);
        }
        let status = cmd.status().expect("run cargo to build the kiln binary");
        assert!(status.success(), "building the kiln binary failed");
        let bin = profile_dir.join(format!("kiln{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} not built", bin.display());
        bin
    })
}

pub(crate) fn kiln(args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap()
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pretrain_args<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--data",
        data,
        "--out",
        out,
        "--model",
        "tiny",
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--lr",
        "3e-3",
        "--min-lr",
        "3e-4",
        "--warmup",
        "2",
        "--seed",
        "7",
        "--threads",
        "2",
    ]
}

fn assert_fails_naming(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn pretrain_eval_generate_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (data, val) = byte_shards(dir.path());
    let run = dir.path().join("run");
    let mut args = pretrain_args(s(&data), s(&run), "6");
    args.extend(["--checkpoint-every", "3"]);
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sample (greedy)"), "{stdout}");
    // metrics: one object per step with the contract's keys
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], (i + 1) as u64);
        for k in ["loss", "lr", "grad_norm", "tokens_per_s"] {
            assert!(l[k].as_f64().is_some_and(f64::is_finite), "{k} in {l}");
        }
    }
    let ck = run.join("checkpoints/step_00000006");
    assert!(run
        .join("checkpoints/step_00000003/model.safetensors")
        .is_file());
    assert!(ck.join("model.safetensors").is_file());

    // eval: one JSON object; its loss is the mean over the windows of T=32
    let out = kiln(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--data",
        s(&val),
        "--seq-len",
        "32",
        "--batch-size",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let val_tokens = std::fs::metadata(&val).unwrap().len() as u64 / 2 - 512;
    assert_eq!(v["tokens"].as_u64(), Some((val_tokens - 1) / 32 * 32));
    let loss = v["loss"].as_f64().unwrap();
    assert!(loss > 0.5 && loss < 6.0, "{v}");
    assert!((v["ppl"].as_f64().unwrap() - loss.exp()).abs() < 1e-6 * loss.exp());
    // the batch size does not change the result beyond rounding
    let out = kiln(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--data",
        s(&val),
        "--seq-len",
        "32",
        "--batch-size",
        "16",
    ]);
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (w["loss"].as_f64().unwrap() - loss).abs() < 1e-4,
        "{v} vs {w}"
    );

    // generate: ids only, as many as asked, same seed same ids
    let gen = |seed: &str| {
        let out = kiln(&[
            "generate",
            "--checkpoint",
            s(&ck),
            "--prompt-ids",
            "84,104,101",
            "--max-new-tokens",
            "10",
            "--seed",
            seed,
            "--top-k",
            "20",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let a = gen("1");
    let ids: Vec<u32> = a.trim().split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.iter().all(|&i| i < 256));
    assert_eq!(a, gen("1"));
    let out = kiln(&["generate", "--checkpoint", s(&ck), "--prompt", "The"]);
    assert_fails_naming(&out, &["needs --tokenizer"]);
}

#[test]
fn killed_run_resumes_to_the_same_losses_as_a_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let steps = "40";
    let straight = dir.path().join("straight");
    let out = kiln(&pretrain_args(s(&data), s(&straight), steps));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = dir.path().join("killed");
    let mut args = pretrain_args(s(&data), s(&run), steps);
    args.extend(["--checkpoint-every", "5"]);
    let mut child = Command::new(kiln_bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = run.join("checkpoints/step_00000005");
    let t0 = Instant::now();
    while !first.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        if child.try_wait().unwrap().is_some() {
            break; // finished before we could kill it: still a valid resume test
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let out = kiln(&[args.as_slice(), &["--resume"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = read_metrics(&straight.join("metrics.jsonl")).unwrap();
    let b = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 40);
    assert_eq!(loss_bits(&a), loss_bits(&b));
}

#[test]
fn errors_exit_2_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (data, val) = byte_shards(dir.path());
    let missing = dir.path().join("missing.bin");
    let run = dir.path().join("run");
    // missing data
    let out = kiln(&pretrain_args(s(&missing), s(&run), "2"));
    assert_fails_naming(&out, &["missing.bin"]);
    assert!(!run.exists(), "nothing is created on error");
    // unknown config key
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(&cfg, "steps = 2\nlearning_rate = 0.1\n").unwrap();
    let mut args = pretrain_args(s(&data), s(&run), "2");
    args.extend(["--config", s(&cfg)]);
    assert_fails_naming(&kiln(&args), &["cfg.toml", "learning_rate"]);
    // a good run to get a checkpoint
    let out = kiln(&pretrain_args(s(&data), s(&run), "2"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ck = run.join("checkpoints/step_00000002");
    // running again without --resume: refused, nothing overwritten
    let before = std::fs::read(ck.join("model.safetensors")).unwrap();
    assert_fails_naming(&kiln(&pretrain_args(s(&data), s(&run), "2")), &["--resume"]);
    assert_eq!(before, std::fs::read(ck.join("model.safetensors")).unwrap());
    // --init starts a new run from a checkpoint's weights; a vocabulary that
    // does not fit the checkpoint is refused naming it
    let from = dir.path().join("from_init");
    let mut args = pretrain_args(s(&data), s(&from), "2");
    args.retain(|a| *a != "--model" && *a != "tiny");
    args.extend(["--init", s(&ck)]);
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(from
        .join("checkpoints/step_00000002/model.safetensors")
        .is_file());
    let from2 = dir.path().join("from_init_bad");
    let mut bad_args = pretrain_args(s(&data), s(&from2), "2");
    bad_args.retain(|a| *a != "--model" && *a != "tiny");
    bad_args.extend(["--init", s(&ck), "--vocab-size", "300"]);
    assert_fails_naming(&kiln(&bad_args), &["step_00000002", "vocabulary"]);
    // checkpoint whose shapes do not fit its config
    let bad = dir.path().join("bad_shape");
    copy_dir(&ck, &bad);
    let cfg_text = std::fs::read_to_string(bad.join("config.json")).unwrap();
    let mut cfg_json: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    cfg_json["n_embd"] = serde_json::json!(128);
    std::fs::write(bad.join("config.json"), cfg_json.to_string()).unwrap();
    let out = kiln(&[
        "eval",
        "--checkpoint",
        s(&bad),
        "--data",
        s(&val),
        "--seq-len",
        "32",
    ]);
    assert_fails_naming(&out, &["bad_shape"]);
    // corrupt checkpoint
    let corrupt = dir.path().join("corrupt");
    copy_dir(&ck, &corrupt);
    let w = std::fs::read(corrupt.join("model.safetensors")).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let out = kiln(&[
        "eval",
        "--checkpoint",
        s(&corrupt),
        "--data",
        s(&val),
        "--seq-len",
        "32",
    ]);
    assert_fails_naming(&out, &["corrupt", "model.safetensors"]);
    let out = kiln(&[
        "generate",
        "--checkpoint",
        s(&corrupt),
        "--prompt-ids",
        "1,2",
    ]);
    assert_fails_naming(&out, &["model.safetensors"]);
    // eval data missing
    let out = kiln(&["eval", "--checkpoint", s(&ck), "--data", s(&missing)]);
    assert_fails_naming(&out, &["missing.bin"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
