//! Issue 17 through the real binary: reruns, changed inputs, interrupted
//! and concurrent runs never leave stale, mixed or half-written results that
//! read as complete, and failures that used to pass silently are loud
//! (exit code 2, a message naming the file and the fix).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{kiln, kiln_bin, s};
use crate::train::{byte_shards, fixture_text, write_shard};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// Exit code 2 and every needle in stderr.
fn assert_refused(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// `n` distinct JSONL documents (`tag` makes two sets differ).
fn documents(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| {
            let text = format!(
                "Document {i} of set {tag}. The river ran past the mill where the miller kept \
                 his grain, and the children of the village came down every evening to watch \
                 the water turn the great wheel number {i}. They talked of the harvest and the \
                 weather and the fair that would come to town at the end of the summer {tag}."
            );
            serde_json::json!({"id": format!("{tag}-{i}"), "text": text}).to_string() + "\n"
        })
        .collect()
}

fn curate(inputs: &[&Path], out: &Path) -> std::process::Output {
    let mut args = vec!["data", "curate", "--output", s(out), "--input"];
    args.extend(inputs.iter().map(|p| s(p)));
    kiln(&args)
}

#[test]
fn curate_reruns_an_input_replaced_at_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let out = dir.path().join("curated");
    std::fs::write(&input, documents(50, "a")).unwrap();
    assert_ok(&curate(&[&input], &out));
    assert_eq!(read_json(&out.join("stats.json"))["input_docs"], 50);
    std::fs::write(&input, documents(80, "b")).unwrap();
    let o = curate(&[&input], &out);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("already done (skipped): 0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read_json(&out.join("stats.json"))["input_docs"], 80);
}

#[test]
fn a_curate_rerun_with_fewer_inputs_leaves_only_its_own_shards() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> = (0..8)
        .map(|i| {
            let p = dir.path().join(format!("part{i}.jsonl"));
            std::fs::write(&p, documents(5, &format!("p{i}"))).unwrap();
            p
        })
        .collect();
    let out = dir.path().join("curated");
    let all: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    assert_ok(&curate(&all, &out));
    assert_eq!(names_in(&out.join("kept")).len(), 8);
    assert_ok(&curate(&all[..2], &out));
    assert_eq!(
        names_in(&out.join("kept")),
        ["shard-00000.jsonl.zst", "shard-00001.jsonl.zst"]
    );
    assert_eq!(names_in(&out.join("rejected")).len(), 4);
    assert_eq!(names_in(&out.join("work")).len(), 4);
    assert_eq!(read_json(&out.join("stats.json"))["input_docs"], 10);
}

#[test]
fn downstream_commands_refuse_an_unfinished_curate_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, documents(20, "a")).unwrap();
    let out = dir.path().join("curated");
    assert_ok(&curate(&[&input], &out));
    // What a kill during the last stage leaves: kept/ without stats.json.
    std::fs::remove_file(out.join("stats.json")).unwrap();
    let kept = out.join("kept");
    let o = kiln(&[
        "tokenizer",
        "train",
        "--input",
        s(&kept),
        "--vocab-size",
        "300",
        "--output",
        s(&dir.path().join("tok.json")),
    ]);
    assert_refused(&o, &["did not finish", "stats.json", "curated"]);
}

#[test]
fn curate_without_recognised_inputs_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("table.csv"), "a,b\n1,2\n").unwrap();
    let o = curate(&[&inputs], &dir.path().join("out"));
    assert_refused(&o, &["no input files of a known format", s(&inputs)]);
}

#[test]
fn curate_names_a_truncated_compressed_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(documents(200, "z").as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let o = curate(&[&path], &dir.path().join("out"));
    assert_refused(&o, &["docs.jsonl.gz"]);
}

/// `kiln data tokenize` of `input` into `out` with a fresh tokenizer.
fn tokenize(dir: &Path, input: &Path, out: &Path, shard_tokens: &str) -> std::process::Output {
    let tok = dir.join("tok.json");
    if !tok.exists() {
        assert_ok(&kiln(&[
            "tokenizer",
            "train",
            "--input",
            s(input),
            "--vocab-size",
            "300",
            "--output",
            s(&tok),
        ]));
    }
    kiln(&[
        "data",
        "tokenize",
        "--tokenizer",
        s(&tok),
        "--input",
        s(input),
        "--output",
        s(out),
        "--shard-tokens",
        shard_tokens,
        "--val-fraction",
        "0.1",
    ])
}

#[test]
fn a_tokenize_rerun_removes_the_earlier_shards() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, documents(60, "t")).unwrap();
    let out = dir.path().join("tokens");
    assert_ok(&tokenize(dir.path(), &input, &out, "500"));
    let many = names_in(&out).len();
    assert!(many > 4, "{:?}", names_in(&out));
    assert_ok(&tokenize(dir.path(), &input, &out, "100000000"));
    assert_eq!(
        names_in(&out),
        ["meta.json", "train_000000.bin", "val_000000.bin"]
    );
}

fn pretrain(data: &Path, out: &Path, steps: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "pretrain",
        "--data",
        s(data),
        "--out",
        s(out),
        "--model",
        "tiny",
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--seed",
        "3",
        "--threads",
        "1",
        "--vocab-size",
        "256",
    ];
    args.extend_from_slice(extra);
    kiln(&args)
}

/// The JSON training state of a checkpoint (the safetensors header's).
fn training_state(ckpt: &Path) -> Value {
    let bytes = std::fs::read(ckpt.join("training_state.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = meta.metadata().as_ref().unwrap()["kiln_training_state"].clone();
    serde_json::from_str(&json).unwrap()
}

/// A `kiln data tokenize`-style directory of byte shards: train + val + meta.json.
fn byte_token_dir(root: &Path) -> (PathBuf, usize) {
    let text = fixture_text();
    let tokens: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    let cut = tokens.len() * 9 / 10;
    let dir = root.join("tokens");
    std::fs::create_dir_all(&dir).unwrap();
    write_shard(&dir.join("train_000000.bin"), &tokens[..cut]);
    write_shard(&dir.join("val_000000.bin"), &tokens[cut..]);
    let meta = serde_json::json!({
        "train": {"shards": 1, "tokens": cut},
        "val": {"shards": 1, "tokens": tokens.len() - cut},
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    (dir, cut)
}

#[test]
fn pretrain_on_a_directory_trains_on_its_train_shards_and_evaluates_on_val() {
    let dir = tempfile::tempdir().unwrap();
    let (data, train_tokens) = byte_token_dir(dir.path());
    let run = dir.path().join("run");
    let o = pretrain(&data, &run, "2", &[]);
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("held-out: loss"), "{stdout}");
    let state = training_state(&run.join("checkpoints/step_00000002"));
    let loader = &state["loader"];
    assert_eq!(loader["total_windows"], ((train_tokens - 1) / 32) as u64);
    let fp = loader["data_fingerprint"].as_str().unwrap();
    assert!(
        fp.contains("train_000000.bin") && !fp.contains("val_"),
        "{fp}"
    );

    // Without meta.json the directory is an unfinished tokenize run.
    std::fs::remove_file(data.join("meta.json")).unwrap();
    let o = pretrain(&data, &dir.path().join("run2"), "2", &[]);
    assert_refused(&o, &["no meta.json", "did not finish"]);
}

#[test]
fn pretrain_refuses_a_validation_file_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (_, val) = byte_shards(dir.path());
    let o = pretrain(&val, &dir.path().join("run"), "1", &[]);
    assert_refused(&o, &["val.bin", "validation", "--train-on-val"]);
    let o = pretrain(&val, &dir.path().join("run"), "1", &["--train-on-val"]);
    assert_ok(&o);
}

#[test]
fn pretrain_refuses_a_seq_len_beyond_the_models_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let o = kiln(&[
        "pretrain",
        "--data",
        s(&train),
        "--out",
        s(&dir.path().join("run")),
        "--model",
        "tiny",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--seq-len",
        "4096",
    ]);
    assert_refused(&o, &["--seq-len 4096", "128 positions"]);
}

#[test]
fn resume_refuses_other_data_of_the_same_length_in_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    assert_ok(&pretrain(&train, &run, "2", &[]));
    // Same length, other bytes.
    let mut bytes = std::fs::read(&train).unwrap();
    let n = bytes.len();
    bytes[n - 10..].reverse();
    bytes[1100] ^= 1;
    std::fs::write(&train, &bytes).unwrap();
    let o = pretrain(&train, &run, "4", &["--resume"]);
    assert_refused(&o, &["other data of the same length"]);
    assert!(!stderr(&o).contains("LoaderPosition"), "{}", stderr(&o));
}

#[test]
fn resume_names_a_newest_checkpoint_without_training_state() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    assert_ok(&pretrain(&train, &run, "4", &["--checkpoint-every", "2"]));
    let newest = run.join("checkpoints/step_00000004");
    std::fs::remove_file(newest.join("training_state.safetensors")).unwrap();
    let o = pretrain(&train, &run, "6", &["--resume"]);
    assert_refused(&o, &["step_00000004", "not a complete checkpoint", "rm -r"]);
    std::fs::remove_dir_all(&newest).unwrap();
    let o = pretrain(&train, &run, "6", &["--resume"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("resuming from step 2"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_removes_stale_temps_and_keeps_the_last_n_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    let stale = [
        run.join("checkpoints/..step_00000009.tmp.tmp-4242"),
        run.join("checkpoints/.step_00000009.tmp"),
        run.join(".model.saving-17"),
    ];
    for d in &stale {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"partial").unwrap();
    }
    let o = pretrain(
        &train,
        &run,
        "5",
        &["--checkpoint-every", "1", "--keep-last", "2"],
    );
    assert_ok(&o);
    for d in &stale {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert_eq!(
        names_in(&run.join("checkpoints")),
        ["step_00000004", "step_00000005"]
    );
}

/// Spawns `kiln ARGS` with piped output.
fn spawn(args: &[&str]) -> Child {
    Command::new(kiln_bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `cond` holds (or panics after a minute).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_pretrain_into_a_busy_directory_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    let mut first = spawn(&[
        "pretrain",
        "--data",
        s(&train),
        "--out",
        s(&run),
        "--model",
        "tiny",
        "--steps",
        "100000",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--threads",
        "1",
        "--vocab-size",
        "256",
    ]);
    let metrics = run.join("metrics.jsonl");
    wait_for("the first run's first step", || {
        std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0)
    });
    let o = pretrain(&train, &run, "2", &[]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_refused(
        &o,
        &[
            "in use by another kiln run",
            &format!("process {}", first.id()),
        ],
    );
    // The loser wrote nothing: every metrics line is the first run's, whole.
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        let _: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
}

#[test]
fn generate_validates_its_options_and_exits_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    assert_ok(&pretrain(&train, &run, "1", &[]));
    let ck = run.join("checkpoints/step_00000001");
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--checkpoint", s(&ck), "--prompt-ids", "72,101"];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    assert_refused(&gen(&["--temperature=-1"]), &["--temperature"]);
    assert_refused(&gen(&["--temperature", "nan"]), &["--temperature"]);
    assert_refused(&gen(&["--top-p", "1.5"]), &["--top-p"]);
    assert_refused(
        &gen(&["--max-new-tokens", "500"]),
        &["at most 126 new tokens"],
    );
    assert_ok(&gen(&["--max-new-tokens", "126"]));

    // A reader that has gone: no panic, exit code 0.
    let mut child = Command::new(kiln_bin())
        .args([
            "generate",
            "--checkpoint",
            s(&ck),
            "--prompt-ids",
            "72",
            "--max-new-tokens",
        ])
        .arg("100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn a_checkpoint_with_nan_weights_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = byte_shards(dir.path());
    let run = dir.path().join("run");
    assert_ok(&pretrain(&train, &run, "1", &[]));
    let ck = run.join("checkpoints/step_00000001");
    let path = ck.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec(), t.shape().to_vec()))
        .collect();
    let victim = tensors
        .iter_mut()
        .find(|(n, _, _)| n.ends_with("h.1.mlp.c_fc.weight"))
        .expect("a c_fc weight");
    victim.1[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, shape)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let o = kiln(&["eval", "--checkpoint", s(&ck), "--data", s(&val)]);
    assert_refused(
        &o,
        &["h.1.mlp.c_fc.weight", "non-finite", "model.safetensors"],
    );
}

#[test]
fn plugins_check_resolves_a_bare_name_against_the_working_directory() {
    let lib = crate::plugins::plugin_library("kiln-cpu-plugin");
    let name = lib.file_name().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("here");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(&lib, here.join(&name)).unwrap();
    let check = |cwd: &Path| {
        Command::new(kiln_bin())
            .args(["plugins", "check"])
            .arg(&name)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let o = check(&here);
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let loaded = here.canonicalize().unwrap().join(&name);
    assert!(
        stdout.contains(&format!("loading code from {}", loaded.display())),
        "{stdout}"
    );
    let o = check(&empty);
    assert_refused(&o, &["looked for", s(&empty.canonicalize().unwrap())]);
}

#[test]
fn the_pipeline_refuses_a_bad_setting_before_the_first_stage() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[pretrain]\nbatch_size = 0\n").unwrap();
    let out = dir.path().join("run");
    let o = kiln(&[
        "pipeline",
        "--quick",
        "--config",
        s(&config),
        "--out",
        s(&out),
    ]);
    assert_refused(&o, &["batch_size", "bad.toml"]);
    assert!(
        !out.join("curated").exists(),
        "a stage ran before the refusal"
    );
}
