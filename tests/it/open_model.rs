//! The README's end-to-end example on an open model: a transformers-made
//! chat Llama (tests/fixtures/chat_llama_tiny, SmolLM2-style ChatML
//! template, made by scripts/make_chat_llama.py) standing in for a
//! downloaded one. `kiln sft --lora-rank 16` on the embedded tasks (`kiln
//! data tasks`) in the model's own template, `kiln merge`, `kiln export
//! --gguf`: the loss falls, the merged model's judge score (`kiln judge`)
//! rises over the base's, and the model's template and special tokens
//! survive into the merged directory and the GGUF file.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::{kiln, s};

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chat_llama_tiny")
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn judge(model: &Path) -> f64 {
    let out = ok(kiln(&[
        "judge",
        "--model",
        s(model),
        "--tasks",
        "48",
        "--samples",
        "2",
        "--threads",
        "2",
    ]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["judge"].as_f64().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn lora_sft_in_the_models_own_template_then_merge_and_export_improves_the_judge_score() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    ok(kiln(&[
        "data",
        "tasks",
        "--out",
        s(&tasks),
        "--chats",
        "400",
    ]));
    let sft = dir.path().join("sft");
    ok(kiln(&[
        "sft",
        "--model",
        s(&base()),
        "--data",
        s(&tasks.join("sft.jsonl")),
        "--out",
        s(&sft),
        "--lora-rank",
        "16",
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--threads",
        "2",
    ]));
    let summary = json(&sft.join("summary.json"));
    let (first, last) = (
        summary["first_loss"].as_f64().unwrap(),
        summary["last_loss"].as_f64().unwrap(),
    );
    eprintln!("sft loss {first} -> {last}");
    assert!(last < 0.5 * first, "the loss fell only {first} -> {last}");

    let merged = dir.path().join("merged");
    ok(kiln(&[
        "merge",
        "--model",
        s(&base()),
        "--adapter",
        s(&sft.join("adapter")),
        "--out",
        s(&merged),
        "--threads",
        "2",
    ]));
    // The model keeps its own template and tokens (not kiln's).
    let config = json(&merged.join("tokenizer_config.json"));
    assert_eq!(config, json(&base().join("tokenizer_config.json")));
    assert!(config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));

    let (before, after) = (judge(&base()), judge(&merged));
    eprintln!("judge: base {before:.3}, merged {after:.3}");
    assert!(
        after > before + 0.05,
        "the fine-tune did not raise the judge score: base {before}, merged {after}"
    );

    let gguf = dir.path().join("model.gguf");
    ok(kiln(&[
        "export",
        "--model",
        s(&merged),
        "--gguf",
        s(&gguf),
        "--type",
        "f16",
    ]));
    let g = crate::export_cli::read_gguf(&gguf);
    assert_eq!(g.metadata["general.architecture"].1, "llama");
    assert_eq!(
        g.metadata["tokenizer.chat_template"].1.as_str(),
        config["chat_template"].as_str()
    );
}
