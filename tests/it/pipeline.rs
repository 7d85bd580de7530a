//! The main job: `kiln pipeline --quick` runs every stage on the embedded
//! corpus (curation through pretraining, SFT, reward model, DPO, PPO, the
//! judge and the report) and writes summary.json; a rerun skips every
//! finished stage and reports the same figures.

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

    // Post-training ran every stage from the files the previous one wrote.
    assert!(sum["sft"]["steps"].as_u64().unwrap() > 0, "{}", sum["sft"]);
    let sft_val = &sum["sft"];
    assert!(
        sft_val["eval_loss"].as_f64().unwrap() < sft_val["eval_loss_before"].as_f64().unwrap(),
        "SFT did not lower the held-out loss: {sft_val}"
    );
    assert!(sum["preferences"]["total_pairs"].as_u64().unwrap() >= 48);
    assert!(sum["reward"]["steps"].as_u64().unwrap() > 0);
    assert!(sum["dpo"]["steps"].as_u64().unwrap() > 0, "{}", sum["dpo"]);
    assert_eq!(sum["ppo"]["iterations"].as_u64(), Some(2), "{}", sum["ppo"]);
    // Two RLHF rounds: the second sampled pairs from the first round's PPO
    // model, continued the reward model on them (and a replay of earlier
    // pairs) and ran PPO again from that model.
    let round2 = &sum["preferences_round2"];
    assert_eq!(round2["prompts"].as_u64(), Some(16), "{round2}");
    assert!(round2["replayed_pairs"].as_u64().unwrap() > 0, "{round2}");
    assert!(sum["reward_round2"]["steps"].as_u64().unwrap() > 0);
    assert!(sum["reward_round2"]["held_out_tasks"]["accuracy"].is_number());
    assert_eq!(sum["ppo_round1"]["iterations"].as_u64(), Some(2));
    for stage in ["sft", "reward", "dpo", "ppo_round1", "reward_round2", "ppo"] {
        let model = out.join(stage).join("model");
        assert!(
            model.join("model.safetensors").exists(),
            "{stage}: no model"
        );
        assert!(
            model.join("tokenizer.json").exists(),
            "{stage}: no tokenizer"
        );
        assert!(
            out.join(stage).join("metrics.jsonl").exists(),
            "{stage}: no metrics"
        );
    }
    // The models are Hugging Face models: they chat and score in transformers.
    crate::hf_models::check_quick_run(&out);

    // Every model was judged on the same held-out tasks, several replies
    // each (--quick: 2); the SFT model ties itself.
    assert_eq!(sum["judge"]["samples_per_task"].as_u64(), Some(2));
    let models = &sum["judge"]["models"];
    for stage in ["pretrain", "sft", "dpo", "ppo_round1", "ppo"] {
        let judge = models[stage]["judge"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&judge), "{stage}: {judge}");
        assert!(models[stage]["kl_to_sft"].as_f64().unwrap().is_finite());
    }
    assert_eq!(models["sft"]["win_rate_vs_sft"].as_f64(), Some(0.5));
    assert_eq!(models["sft"]["kl_to_sft"].as_f64(), Some(0.0));
    let results: Value =
        serde_json::from_slice(&std::fs::read(out.join("eval").join("results.json")).unwrap())
            .unwrap();
    assert!(!results["samples"].as_array().unwrap().is_empty());
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        report.contains("<svg") && report.contains("ppo"),
        "report lacks plots"
    );

    // A rerun finds every stage up to date and reproduces the figures.
    let second = kiln(&["pipeline", "--quick", "--out", s(&out), "--threads", "2"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "rerun failed:\n{stderr}");
    for stage in [
        "curate",
        "tokenizer",
        "tokenize",
        "pretrain",
        "tasks",
        "sft",
        "preferences",
        "reward",
        "dpo",
        "ppo_round1",
        "preferences_round2",
        "reward_round2",
        "ppo",
        "judge",
    ] {
        assert!(
            stderr.contains(&format!("== {stage}: up to date, skipped")),
            "stage {stage} was not skipped:\n{stderr}"
        );
    }
    let again = summary(&out);
    assert_eq!(again["pretrain"], sum["pretrain"]);
    assert_eq!(again["eval"], sum["eval"]);
    assert_eq!(again["samples"], sum["samples"]);
    assert_eq!(again["judge"], sum["judge"]);

    // A settings file that changes DPO's learning rate reruns DPO and the
    // judge, nothing else; the settings used are written to the run.
    let settings = dir.path().join("settings.toml");
    std::fs::write(&settings, "[align.dpo]\nlr = 2e-4\n").unwrap();
    let third = kiln(&[
        "pipeline",
        "--quick",
        "--out",
        s(&out),
        "--threads",
        "2",
        "--config",
        s(&settings),
    ]);
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(
        third.status.success(),
        "run with --config failed:\n{stderr}"
    );
    for stage in [
        "pretrain",
        "sft",
        "preferences",
        "reward",
        "ppo_round1",
        "ppo",
    ] {
        assert!(
            stderr.contains(&format!("== {stage}: up to date, skipped")),
            "stage {stage} reran:\n{stderr}"
        );
    }
    for stage in ["dpo", "judge"] {
        assert!(
            stderr.contains(&format!("== {stage}\n")),
            "{stage} not rerun:\n{stderr}"
        );
    }
    let used = std::fs::read_to_string(out.join("configs").join("pipeline.toml")).unwrap();
    assert!(used.contains("lr = 0.0002"), "{used}");

    // A typo in the settings is refused, naming the file and the key.
    std::fs::write(&settings, "[align.dpo]\nlrr = 2e-4\n").unwrap();
    let bad = kiln(&[
        "pipeline",
        "--quick",
        "--out",
        s(&out),
        "--config",
        s(&settings),
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("settings.toml") && stderr.contains("lrr"),
        "{stderr}"
    );
}
