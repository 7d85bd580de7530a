//! LoRA through the binary on a tiny Llama policy: `kiln sft/dpo/reward
//! --lora-rank` write a PEFT adapter (OUT/adapter/) with the memory figures
//! in summary.json; `kiln merge` folds it into a model with the adapted
//! model's logits; GPT-2 is refused with the reason. Live (skipped without
//! python3 + torch + transformers + peft): PEFT's `PeftModel.from_pretrained`
//! loads kiln's adapter and transformers the merged model, both with kiln's
//! logits.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_align::policy::Policy;
use kiln_model::{Gpt, GptConfig, LlamaFamily};
use kiln_tokenizer::{chat, Pattern};
use serde_json::Value;

use crate::align_cli::{chat_line, pref_line, tiny_model_dir, write_lines};
use crate::cli::{kiln, s};

const CORPUS: &[&str] = &[
    "What is the capital of France? Paris is the capital of France.",
    "Name a red fruit. An apple is a red fruit. Say hello. Hello there, friend!",
];

fn tiny_llama_dir(root: &Path) -> PathBuf {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let tok = kiln_tokenizer::train(CORPUS, 300, Pattern::Gpt2, &refs, 0).unwrap();
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let cfg = GptConfig::new_llama(
        LlamaFamily::Llama,
        tok.vocab_size(),
        48,
        2,
        4,
        2,
        32,
        48,
        false,
    );
    let dir = root.join("base");
    Policy::new(Gpt::new(&mut be, cfg, 1).unwrap(), tok)
        .unwrap()
        .save(&mut be, &dir)
        .unwrap();
    dir
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn chats(dir: &Path) -> PathBuf {
    let path = dir.join("chats.jsonl");
    let qa = [
        ("Name a red fruit.", "An apple."),
        ("Say hello.", "Hello there!"),
    ];
    let lines: Vec<String> = (0..3)
        .flat_map(|_| qa.iter().map(|(q, a)| chat_line(q, a)))
        .collect();
    write_lines(&path, &lines);
    path
}

/// Logits of `ids` from `model` (kiln).
fn logits(be: &mut kiln_abi::BackendBox, model: &mut Gpt, ids: &[u32]) -> Vec<f32> {
    model.forward(be, ids, None, 1, ids.len()).unwrap();
    model.logits(be).unwrap()
}

#[test]
fn lora_sft_writes_a_peft_adapter_and_merge_matches_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_llama_dir(dir.path());
    let data = chats(dir.path());
    let out = dir.path().join("sft");
    let args = [
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--epochs",
        "2",
        "--batch-size",
        "3",
        "--lr",
        "1e-2",
        "--eval-fraction",
        "0",
        "--lora-rank",
        "4",
        "--lora-targets",
        "q,v,down",
    ];
    ok(&kiln(&args));
    let adapter = out.join("adapter");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(adapter.join("adapter_model.safetensors").is_file());
    assert!(
        !out.join("model").exists(),
        "a LoRA run writes the adapter, not a model"
    );
    let sm = summary(&out);
    assert_eq!(sm["lora"]["rank"], 4);
    let (trainable, frozen) = (
        sm["memory"]["trainable_params"].as_u64().unwrap(),
        sm["memory"]["frozen_params"].as_u64().unwrap(),
    );
    // 2 layers x (q: 4*(32+32) + v: 4*(32+16) + down: 4*(48+32)) = 1536.
    assert_eq!(trainable, 1536);
    assert!(frozen > 10 * trainable);
    assert!(
        sm["memory"]["peak_rss_bytes_per_trainable_param"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let merged = dir.path().join("merged");
    ok(&kiln(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]));
    assert!(
        merged.join("tokenizer.json").is_file(),
        "the base's files come along"
    );
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let mut with_adapter = Gpt::load_pretrained(&mut be, &base).unwrap();
    with_adapter.load_lora(&mut be, &adapter).unwrap();
    let mut plain = Gpt::load_pretrained(&mut be, &base).unwrap();
    let mut folded = Gpt::load_pretrained(&mut be, &merged).unwrap();
    let ids: Vec<u32> = (5..25).collect();
    let want = logits(&mut be, &mut with_adapter, &ids);
    let got = logits(&mut be, &mut folded, &ids);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "merged vs adapter: {worst} of {scale}"
    );
    assert_ne!(
        logits(&mut be, &mut plain, &ids),
        want,
        "the adapter learned something"
    );
    check_with_peft(&base, &adapter, &merged, &ids, &want);
    check_unmerged_adapter(&base, &adapter, &merged, &data, dir.path(), &sm);

    // A merge that would overwrite its input is refused.
    let o = kiln(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&base),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
}

/// Greedy `kiln generate` ids from `checkpoint` (with `adapter` on top).
fn greedy_ids(checkpoint: &Path, adapter: Option<&Path>) -> String {
    let mut args = vec![
        "generate",
        "--checkpoint",
        s(checkpoint),
        "--prompt-ids",
        "5,6,7,8",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    let o = kiln(&args);
    ok(&o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `--adapter` without merging: generation with the adapter on top is the
/// merged model's, and `kiln sft --adapter` continues the trained adapter
/// (same rank and targets; it starts where the first run ended, below the
/// first run's start) rather than adding fresh ones.
fn check_unmerged_adapter(
    base: &Path,
    adapter: &Path,
    merged: &Path,
    data: &Path,
    root: &Path,
    first: &Value,
) {
    assert_eq!(
        greedy_ids(base, Some(adapter)),
        greedy_ids(merged, None),
        "generate --adapter = the merged model"
    );

    let out = root.join("sft2");
    ok(&kiln(&[
        "sft",
        "--model",
        s(base),
        "--adapter",
        s(adapter),
        "--data",
        s(data),
        "--out",
        s(&out),
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--lr",
        "1e-2",
        "--eval-fraction",
        "0",
    ]));
    let second = summary(&out);
    assert_eq!(second["lora"], first["lora"], "the adapter's own settings");
    let loss = |v: &Value, k: &str| v[k].as_f64().unwrap();
    assert!(
        loss(&second, "first_loss") < loss(first, "first_loss") - 0.05,
        "continued from the trained adapter: {} vs a fresh start at {}",
        loss(&second, "first_loss"),
        loss(first, "first_loss")
    );
    assert_ne!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap(),
        "the continued adapter trained further"
    );

    // The adapter carries its own rank: naming one too is refused.
    let o = kiln(&[
        "sft",
        "--model",
        s(base),
        "--adapter",
        s(adapter),
        "--lora-rank",
        "8",
        "--data",
        s(data),
        "--out",
        s(&root.join("sft3")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lora-rank"));
}

fn have_peft() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, transformers, peft"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// PEFT on kiln's adapter and transformers on the merged directory give
/// kiln's logits (within 1e-4 of max-abs: f32, different kernels).
fn check_with_peft(base: &Path, adapter: &Path, merged: &Path, ids: &[u32], want: &[f32]) {
    if !have_peft() {
        eprintln!("skipped: python3 with torch, transformers and peft is not available (pip install peft)");
        return;
    }
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, merged, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
x = torch.tensor([ids])
m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
a = m(input_ids=x).logits[0].flatten().tolist()
b = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(input_ids=x).logits[0].flatten().tolist()
print(json.dumps({"peft": a, "merged": b}))
"#;
    let o = Command::new("python3")
        .args([
            "-c",
            script,
            s(base),
            s(adapter),
            s(merged),
            &serde_json::to_string(ids).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for key in ["peft", "merged"] {
        let got: Vec<f32> = v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), want.len(), "{key}");
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "{key} vs kiln: {worst} of {scale}");
        eprintln!(
            "{key} vs kiln: worst |diff| / max_abs = {:.2e}",
            worst / scale
        );
    }
}

#[test]
fn lora_dpo_and_reward_write_adapters_and_gpt2_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_llama_dir(dir.path());
    let prefs = dir.path().join("prefs.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| {
            pref_line(
                &format!("Say {i} things."),
                "Hello there, friend!",
                "An apple.",
            )
        })
        .collect();
    write_lines(&prefs, &lines);
    let dpo = dir.path().join("dpo");
    ok(&kiln(&[
        "dpo",
        "--model",
        s(&base),
        "--data",
        s(&prefs),
        "--out",
        s(&dpo),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--lora-rank",
        "2",
    ]));
    assert!(dpo.join("adapter/adapter_model.safetensors").is_file());
    let sm = summary(&dpo);
    assert_eq!(sm["lora"]["rank"], 2);
    // Step 0: the policy is its reference (a fresh adapter is the base).
    assert!(
        (sm["first_loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6,
        "{sm}"
    );

    let reward = dir.path().join("reward");
    ok(&kiln(&[
        "reward",
        "--model",
        s(&base),
        "--data",
        s(&prefs),
        "--out",
        s(&reward),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--eval-fraction",
        "0",
        "--lora-rank",
        "2",
    ]));
    assert!(reward.join("adapter/adapter_config.json").is_file());
    let mut be = kiln_tensor::cpu_backend(Some(1));
    kiln_align::reward::RewardModel::load(&mut be, &reward.join("model"), None).unwrap();

    let gpt2 = tiny_model_dir(&dir.path().join("g"));
    let data = chats(dir.path());
    let o = kiln(&[
        "sft",
        "--model",
        s(&gpt2),
        "--data",
        s(&data),
        "--out",
        s(&dir.path().join("x")),
        "--lora-rank",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--lora-rank") && err.contains("GPT-2"),
        "{err}"
    );
}
