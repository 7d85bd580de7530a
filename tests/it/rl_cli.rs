//! `kiln ppo` and `kiln grpo`: a tiny run writes per-iteration metrics, a
//! summary and a loadable model; bad tasks / settings stop with one message
//! naming the file and line or the key.

use std::path::{Path, PathBuf};

use kiln_align::metrics::read_metrics;
use kiln_align::policy::Policy;
use kiln_align::reward::RewardModel;
use kiln_model::{Gpt, GptConfig};
use kiln_tokenizer::{chat, Pattern};

use crate::cli::{kiln, s};

const CORPUS: &[&str] = &[
    "What is 3 + 4? 7. What is 2 + 2? 4.",
    "List 3 fruits. fig, plum, pear. Describe the sea in exactly 4 words.",
];

/// A tiny policy directory and a reward model directory built from it.
fn tiny_dirs(root: &Path) -> (PathBuf, PathBuf) {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let tok = kiln_tokenizer::train(CORPUS, 300, Pattern::Gpt2, &refs, 0).unwrap();
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let cfg = GptConfig::new(tok.vocab_size(), 48, 1, 2, 32);
    let policy_dir = root.join("sft");
    let policy = Policy::new(Gpt::new(&mut be, cfg, 1).unwrap(), tok).unwrap();
    policy.save(&mut be, &policy_dir).unwrap();
    let rm_dir = root.join("rm");
    RewardModel::from_policy(&mut be, policy, 2)
        .unwrap()
        .save(&mut be, &rm_dir)
        .unwrap();
    (policy_dir, rm_dir)
}

const TASKS: &[&str] = &[
    r#"{"prompt": "What is 3 + 4?", "spec": {"kind": "arithmetic", "a": 3, "b": 4}}"#,
    r#"{"prompt": "What is 2 + 2?", "spec": {"kind": "arithmetic", "a": 2, "b": 2}}"#,
    r#"{"prompt": "List 3 fruits.", "spec": {"kind": "list", "k": 3, "category": "fruits"}}"#,
];

fn write(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const RL_KEYS: &[&str] = &[
    "reward",
    "kl",
    "entropy",
    "clip_frac",
    "response_len",
    "policy_loss",
];

fn check_run(out: &Path, iterations: usize, extra_keys: &[&str]) {
    let recs = read_metrics(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(recs.len(), iterations);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.step, i as u64 + 1);
        for k in RL_KEYS.iter().chain(extra_keys) {
            let v = r
                .get(k)
                .unwrap_or_else(|| panic!("metric {k} missing: {r:?}"));
            assert!(v.is_finite(), "{k} = {v}");
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["iterations"], iterations);
    let mut be = kiln_tensor::cpu_backend(Some(1));
    Policy::load(&mut be, &out.join("model"), None).unwrap();
}

#[test]
fn ppo_and_grpo_write_metrics_summary_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let (sft, rm) = tiny_dirs(dir.path());
    let tasks = dir.path().join("tasks.jsonl");
    write(&tasks, TASKS);
    let config = dir.path().join("ppo.toml");
    write(
        &config,
        &[
            "ppo_epochs = 2",
            "minibatch_size = 2",
            "kl_target = 6.0",
            "[sampling]",
            "top_k = 50",
        ],
    );
    let out = dir.path().join("ppo");
    #[rustfmt::skip]
    let o = kiln(&[
        "ppo", "--policy", s(&sft), "--reward", s(&rm), "--prompts", s(&tasks),
        "--out", s(&out), "--config", s(&config), "--iterations", "2", "--batch-size", "4",
        "--max-new-tokens", "4", "--threads", "1", "--gold-judge",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_run(&out, 2, &["value_loss", "kl_coef", "gold_score"]);
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"gold_last\""), "{summary}");

    let out = dir.path().join("grpo");
    #[rustfmt::skip]
    let o = kiln(&[
        "grpo", "--policy", s(&sft), "--judge", "--prompts", s(&tasks), "--out", s(&out),
        "--iterations", "2", "--group-size", "2", "--max-new-tokens", "4", "--threads", "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_run(&out, 2, &["reward_std"]);
}

#[test]
fn ppo_measures_kl_against_the_given_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (sft, rm) = tiny_dirs(dir.path());
    // Another model on the same tokenizer: a later round's starting policy.
    let other = dir.path().join("other");
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let p = Policy::load(&mut be, &sft, None).unwrap();
    let cfg = p.model.config.clone();
    Policy::new(Gpt::new(&mut be, cfg, 9).unwrap(), p.tokenizer.clone())
        .unwrap()
        .save(&mut be, &other)
        .unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    write(&tasks, TASKS);
    let first_kl = |name: &str, reference: Option<&Path>| -> f64 {
        let out = dir.path().join(name);
        #[rustfmt::skip]
        let mut args = vec![
            "ppo", "--policy", s(&other), "--reward", s(&rm), "--prompts", s(&tasks),
            "--out", s(&out), "--iterations", "1", "--batch-size", "4",
            "--max-new-tokens", "4", "--threads", "1", "--gold-judge",
        ];
        if let Some(r) = reference {
            args.extend(["--reference", s(r)]);
        }
        let o = kiln(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        read_metrics(&out.join("metrics.jsonl")).unwrap()[0]
            .get("kl")
            .unwrap()
    };
    // Rollouts come from the starting policy: against itself the KL is 0.
    assert!(first_kl("self", None).abs() < 1e-6);
    assert!(first_kl("to_sft", Some(&sft)).abs() > 1e-3);
}

#[test]
fn bad_tasks_and_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (sft, rm) = tiny_dirs(dir.path());
    let tasks = dir.path().join("tasks.jsonl");
    write(&tasks, &[TASKS[0], r#"{"prompt": "no spec"}"#]);
    let out = dir.path().join("grpo");
    #[rustfmt::skip]
    let o = kiln(&[
        "grpo", "--policy", s(&sft), "--judge", "--prompts", s(&tasks), "--out", s(&out),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("tasks.jsonl:2"), "{err}");
    assert!(!out.join("model").exists());

    let config = dir.path().join("ppo.toml");
    write(&config, &["kl_coeff = 0.1"]);
    #[rustfmt::skip]
    let o = kiln(&[
        "ppo", "--policy", s(&sft), "--reward", s(&rm), "--prompts", s(&tasks),
        "--out", s(&dir.path().join("ppo")), "--config", s(&config),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ppo.toml") && err.contains("kl_coeff"),
        "{err}"
    );
}
