//! `kiln dpo`: bad lines stop the run naming FILE:LINE, or are skipped and
//! counted with --skip-bad; reference log-probs are cached and reused;
//! metrics.jsonl carries the reward figures.

use std::path::{Path, PathBuf};

use kiln_align::metrics::read_metrics;
use kiln_model::Gpt;

use crate::cli::{kiln, s};

/// A policy directory the CLI loads: a byte-level BPE with the chat
/// specials (tiny vocabulary) and a small random GPT with a 48-token context.
fn tiny_policy_dir(dir: &Path) -> PathBuf {
    let corpus = ["the cat sat on the mat. the dog ate the bone. good answer, bad answer."; 4];
    let specials: Vec<String> = kiln_tokenizer::chat::default_special_tokens();
    let specials: Vec<&str> = specials.iter().map(String::as_str).collect();
    let tok =
        kiln_tokenizer::train(&corpus, 300, kiln_tokenizer::Pattern::Gpt2, &specials, 1).unwrap();
    let mut be = kiln_tensor::cpu_backend(Some(2));
    let cfg = kiln_model::GptConfig::new(tok.vocab_size(), 48, 1, 2, 32);
    let gpt = Gpt::new(&mut be, cfg, 3).unwrap();
    let out = dir.join("sft");
    gpt.save_pretrained(&mut be, &out).unwrap();
    kiln_tokenizer::formats::hf::save(&tok, &out.join("tokenizer.json")).unwrap();
    out
}

fn write_prefs(path: &Path, bad: bool) {
    let mut lines = vec![
        r#"{"prompt": "the cat", "chosen": "sat on the mat.", "rejected": "bad answer"}"#
            .to_string(),
        r#"{"prompt": "the dog", "chosen": "ate the bone.", "rejected": "bad"}"#.to_string(),
    ];
    if bad {
        lines.push(r#"{"prompt": "the cat", "chosen": "good answer"}"#.into());
        lines.push(r#"{"prompt": "the dog", "chosen": "", "rejected": "bad"}"#.into());
        lines.push(format!(
            r#"{{"prompt": "{}", "chosen": "good", "rejected": "bad"}}"#,
            "the cat sat on the mat. ".repeat(12)
        ));
    }
    lines.push(r#"{"prompt": "good", "chosen": "good answer.", "rejected": "bad answer."}"#.into());
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_bad_lines_error_or_are_counted_and_reference_logps_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_policy_dir(dir.path());
    let data = dir.path().join("prefs.jsonl");
    write_prefs(&data, true);
    let out = dir.path().join("run");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "dpo",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--threads",
            "2",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| kiln(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // Without --skip-bad: the first bad line stops the run, named FILE:LINE.
    let o = run(args(&[]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("prefs.jsonl:3"), "{err}");
    assert!(err.contains("rejected"), "{err}");
    assert!(!out.join("model").exists());

    // With it: three lines skipped and counted (missing field, empty
    // completion, too long for the 48-token context), the rest trained on.
    let o = run(args(&["--skip-bad"]));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped 3"), "{err}");
    assert!(err.contains("line 4") && err.contains("line 5"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_lines"], 3);
    assert_eq!(summary["pairs"], 3);
    assert_eq!(summary["reference_logps"], "computed");
    assert!((summary["first_loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(out.join("ref_logps.json").is_file());
    assert!(out.join("model/model.safetensors").is_file());
    assert!(out.join("model/tokenizer.json").is_file());
    let records = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let first = records.iter().find(|r| r.split == "train").unwrap();
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
    ] {
        assert!(first.get(key).is_some(), "metrics lack {key}");
    }

    // Rerun: same model and data, so the cache is reused; other data recomputes.
    let o = run(args(&["--skip-bad", "--loss", "ipo"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reference_logps"], "reused from cache");
    assert_eq!(summary["loss_type"], "ipo");
    // The same good pairs without the bad lines encode identically: reused.
    write_prefs(&data, false);
    let o = run(args(&[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reference_logps"], "reused from cache");
    // A changed pair is new data: recomputed.
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.replace("sat on the mat.", "sat on the rug.")).unwrap();
    let o = run(args(&[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reference_logps"], "computed");

    // A bad setting is refused naming it.
    let o = run(args(&["--loss", "kto"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("valid: sigmoid, robust, ipo, hinge, simpo"),
        "{}",
        stderr(&o)
    );
}
