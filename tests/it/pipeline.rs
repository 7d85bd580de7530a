//! The main job: `kiln pipeline --quick` runs every stage on the embedded
//! corpus and writes summary.json; a rerun skips every finished stage and
//! reports the same figures.

use serde_json::Value;

use crate::cli::{kiln, s};

fn summary(dir: &std::path::Path) -> Value {
    let path = dir.join("summary.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn quick_pipeline_runs_every_stage_then_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = kiln(&["pipeline", "--quick", "--out", s(&out), "--threads", "2"]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "pipeline failed:\n{stderr}");
    let sum = summary(&out);

    // Curation removed documents for stated reasons and kept real text;
    // the planted evaluation passages were found.
    let input = sum["curate"]["input_docs"].as_u64().unwrap();
    let kept = sum["curate"]["kept_docs"].as_u64().unwrap();
    assert!(kept > 100 && kept < input, "kept {kept} of {input}");
    let removed = &sum["curate"]["removed_docs_by_filter"];
    assert!(
        removed["decontamination"].as_u64().unwrap() > 0,
        "{removed}"
    );
    assert!(removed["exact_dedup"].as_u64().unwrap() > 0, "{removed}");

    // Tokenizer and shards.
    let vocab = sum["tokenizer"]["vocab_size"].as_u64().unwrap();
    assert!((512..=1024).contains(&vocab), "vocab {vocab}");
    assert!(sum["tokenize"]["train_tokens"].as_u64().unwrap() > 100_000);
    assert!(sum["tokenize"]["val_tokens"].as_u64().unwrap() > 1_000);

    // Pretraining ran all its steps and learned something: the held-out
    // loss is well below that of a uniform guess over the vocabulary.
    assert_eq!(sum["pretrain"]["steps"].as_u64(), Some(60));
    let val_loss = sum["eval"]["val_loss"].as_f64().unwrap();
    assert!(
        val_loss.is_finite() && val_loss < (vocab as f64).ln() - 0.5,
        "{val_loss}"
    );
    assert_eq!(sum["samples"].as_array().unwrap().len(), 4);

    // A rerun finds every stage up to date and reproduces the figures.
    let second = kiln(&["pipeline", "--quick", "--out", s(&out), "--threads", "2"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "rerun failed:\n{stderr}");
    for stage in ["curate", "tokenizer", "tokenize", "pretrain"] {
        assert!(
            stderr.contains(&format!("== {stage}: up to date, skipped")),
            "stage {stage} was not skipped:\n{stderr}"
        );
    }
    let again = summary(&out);
    assert_eq!(again["pretrain"], sum["pretrain"]);
    assert_eq!(again["eval"], sum["eval"]);
    assert_eq!(again["samples"], sum["samples"]);
}
