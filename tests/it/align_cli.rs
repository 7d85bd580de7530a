//! `kiln sft` and `kiln reward`: a tiny run writes a loadable model, metrics
//! and a summary; bad input exits 2 with one message naming FILE:LINE (or
//! the config key), and --skip-bad counts what it leaves out.

use std::path::{Path, PathBuf};

use kiln_align::metrics::read_metrics;
use kiln_align::policy::Policy;
use kiln_align::reward::RewardModel;
use kiln_model::{Gpt, GptConfig};
use kiln_tokenizer::{chat, Pattern};

use crate::cli::{kiln, s};

const CORPUS: &[&str] = &[
    "What is the capital of France? Paris is the capital of France.",
    "Name a red fruit. An apple is a red fruit. Say hello. Hello there, friend!",
    "The sun is bright and warm and good. The rain is cold and bad.",
];

/// A tiny model + chat tokenizer saved as a policy directory.
pub(crate) fn tiny_model_dir(root: &Path) -> PathBuf {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let tok = kiln_tokenizer::train(CORPUS, 300, Pattern::Gpt2, &refs, 0).unwrap();
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let cfg = GptConfig::new(tok.vocab_size(), 48, 1, 2, 32);
    let model = Gpt::new(&mut be, cfg, 1).unwrap();
    let dir = root.join("base");
    Policy::new(model, tok)
        .unwrap()
        .save(&mut be, &dir)
        .unwrap();
    dir
}

pub(crate) fn chat_line(q: &str, a: &str) -> String {
    serde_json::json!({"messages": [
        {"role": "user", "content": q},
        {"role": "assistant", "content": a}
    ]})
    .to_string()
}

pub(crate) fn pref_line(q: &str, good: &str, bad: &str) -> String {
    serde_json::json!({"prompt": q, "chosen": good, "rejected": bad}).to_string()
}

pub(crate) fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sft_then_reward_write_loadable_models_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model_dir(dir.path());
    let chats = dir.path().join("chats.jsonl");
    let qa = [
        ("Name a red fruit.", "An apple."),
        ("Say hello.", "Hello there!"),
        ("What is the capital of France?", "Paris."),
        ("Is the sun bright?", "The sun is bright."),
    ];
    let lines: Vec<String> = (0..3)
        .flat_map(|_| qa.iter().map(|(q, a)| chat_line(q, a)))
        .collect();
    write_lines(&chats, &lines);
    let sft_out = dir.path().join("sft");
    let o = kiln(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&chats),
        "--out",
        s(&sft_out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--eval-fraction",
        "0.25",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_metrics(&sft_out.join("metrics.jsonl")).unwrap();
    // 9 train chats / 4 per step = 3 steps per epoch, 2 epochs
    assert_eq!(records.iter().filter(|r| r.split == "train").count(), 6);
    assert!(records.iter().any(|r| r.split == "eval" && r.step == 6));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sft_out.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["steps"], 6);
    assert_eq!(summary["eval_chats"], 3);
    let mut be = kiln_tensor::cpu_backend(Some(1));
    Policy::load(&mut be, &sft_out.join("model"), None).unwrap();

    let prefs = dir.path().join("prefs.jsonl");
    let mut lines: Vec<String> = (0..6)
        .map(|i| {
            pref_line(
                &format!("Say {i} things."),
                "The sun is good.",
                "The rain is bad.",
            )
        })
        .collect();
    lines.push(
        serde_json::json!({"prompt": "Hi", "chosen": "Hello.", "rejected": "Bad.", "margin": 0.5})
            .to_string(),
    );
    write_lines(&prefs, &lines);
    let rm_out = dir.path().join("rm");
    let o = kiln(&[
        "reward",
        "--model",
        s(&sft_out.join("model")),
        "--data",
        s(&prefs),
        "--out",
        s(&rm_out),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--center-coef",
        "0.01",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_metrics(&rm_out.join("metrics.jsonl")).unwrap();
    assert!(records
        .iter()
        .any(|r| r.split == "eval" && r.get("accuracy").is_some()));
    RewardModel::load(&mut be, &rm_out.join("model"), None).unwrap();

    // A reward model as `--model`: training continues from its head (an
    // RLHF round), so on the same data and split it starts where the
    // first run ended.
    let rm2_out = dir.path().join("rm2");
    #[rustfmt::skip]
    let o = kiln(&[
        "reward", "--model", s(&rm_out.join("model")), "--data", s(&prefs),
        "--out", s(&rm2_out), "--epochs", "1", "--batch-size", "2", "--center-coef", "0.01",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("training continues"), "{}", stderr(&o));
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap()
    };
    let (first, second) = (summary(&rm_out), summary(&rm2_out));
    let ended = first["eval"]["loss"].as_f64().unwrap();
    let began = second["eval_before"]["loss"].as_f64().unwrap();
    assert!((ended - began).abs() < 1e-5, "{ended} vs {began}");
    let fresh = first["eval_before"]["loss"].as_f64().unwrap();
    assert!((fresh - began).abs() > 1e-4, "{fresh} vs {began}");
}

#[test]
fn bad_chat_lines_exit_2_naming_the_line_and_skip_bad_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model_dir(dir.path());
    let chats = dir.path().join("chats.jsonl");
    let long = "apple ".repeat(200);
    write_lines(
        &chats,
        &[
            chat_line("Say hello.", "Hello there!"),
            chat_line("Name a red fruit.", "An apple."),
            chat_line("Talk a lot.", &long),
            r#"{"messages": [{"role": "user", "content": "no reply"}]}"#.to_string(),
        ],
    );
    let out = dir.path().join("out");
    let o = kiln(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&chats),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("chats.jsonl:4") && err.contains("assistant"),
        "{err}"
    );
    // without the bad line, the chat too long for the context is named
    let text = std::fs::read_to_string(&chats).unwrap();
    let three = dir.path().join("three.jsonl");
    let first3: Vec<String> = text.lines().take(3).map(String::from).collect();
    write_lines(&three, &first3);
    let o = kiln(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&three),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("three.jsonl:3") && err.contains("context"),
        "{err}"
    );
    assert!(!out.join("model").exists());

    let o = kiln(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&chats),
        "--out",
        s(&out),
        "--skip-bad",
        "--epochs",
        "1",
        "--eval-fraction",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("skipped 2") && err.contains("line 3") && err.contains("line 4"),
        "{err}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_lines"], 2);
    assert_eq!(summary["train_chats"], 2);
}

#[test]
fn config_and_margin_errors_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model_dir(dir.path());
    let chats = dir.path().join("chats.jsonl");
    write_lines(&chats, &[chat_line("Say hello.", "Hello there!")]);
    let cfg = dir.path().join("sft.toml");
    std::fs::write(&cfg, "epochs = 1\nlearning_rate = 0.1\n").unwrap();
    let out = dir.path().join("out");
    let o = kiln(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&chats),
        "--out",
        s(&out),
        "--config",
        s(&cfg),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("sft.toml") && err.contains("learning_rate"),
        "{err}"
    );

    let prefs = dir.path().join("prefs.jsonl");
    write_lines(
        &prefs,
        &[
            pref_line("Hi", "Hello.", "Bad."),
            serde_json::json!({"prompt": "Hi", "chosen": "A.", "rejected": "B.", "margin": "big"})
                .to_string(),
        ],
    );
    let o = kiln(&[
        "reward",
        "--model",
        s(&base),
        "--data",
        s(&prefs),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("prefs.jsonl:2") && err.contains("margin"),
        "{err}"
    );

    // a model directory without tokenizer.json names the --tokenizer fix
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(base.join(f), bare.join(f)).unwrap();
    }
    let o = kiln(&[
        "sft",
        "--model",
        s(&bare),
        "--data",
        s(&chats),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--tokenizer"), "{}", stderr(&o));
}

#[test]
fn sft_packing_flag_or_key_packs_chats_with_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model_dir(dir.path());
    let chats = dir.path().join("chats.jsonl");
    let qa = [
        ("Name a red fruit.", "An apple."),
        ("Say hello.", "Hello there!"),
        ("What is the capital of France?", "Paris."),
        ("Is the sun bright?", "The sun is bright."),
    ];
    let lines: Vec<String> = (0..2)
        .flat_map(|_| qa.iter().map(|(q, a)| chat_line(q, a)))
        .collect();
    write_lines(&chats, &lines);
    let cfg = dir.path().join("sft.toml");
    std::fs::write(&cfg, "packing = true\n").unwrap();
    let run = |name: &str, extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join(name);
        let mut args = vec![
            "sft",
            "--model",
            s(&base),
            "--data",
            s(&chats),
            "--out",
            s(&out),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--eval-fraction",
            "0",
        ];
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let records = read_metrics(&out.join("metrics.jsonl")).unwrap();
        assert!(records.iter().all(|r| r.get("rows").is_some()));
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
    };
    let plain = run("plain", &[]);
    let flag = run("flag", &["--packing"]);
    let key = run("key", &["--config", s(&cfg)]);
    assert_eq!(plain["packing"], false);
    assert_eq!(
        (&flag["packing"], &key["packing"]),
        (&true.into(), &true.into())
    );
    // 2 steps of 8 chats: one row per chat unpacked, fewer rows packed.
    assert_eq!(plain["rows"], 16);
    let rows = flag["rows"].as_u64().unwrap();
    assert!(rows < 16, "{flag}");
    assert_eq!(key["rows"], flag["rows"]);
    let eff = |v: &serde_json::Value| v["packing_efficiency"].as_f64().unwrap();
    assert!(
        eff(&flag) > eff(&plain) && eff(&flag) <= 1.0,
        "{flag} vs {plain}"
    );
    for k in ["first_loss", "last_loss"] {
        let (a, b) = (plain[k].as_f64().unwrap(), flag[k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{k}: {a} vs packed {b}");
    }
    assert_eq!(plain["trained_tokens"], flag["trained_tokens"]);
    eprintln!(
        "rows {} -> {rows}, efficiency {:.3} -> {:.3}, first loss {} vs {}, last loss {} vs {}",
        plain["rows"],
        eff(&plain),
        eff(&flag),
        plain["first_loss"],
        flag["first_loss"],
        plain["last_loss"],
        flag["last_loss"]
    );
}
