//! The post-training loops on Llama-family policies (kiln-model's
//! `GptConfig::llama`): SFT overfits a few chats and the saved policy
//! directory loads back as the same model; GRPO raises a verifiable
//! reward; PPO with a Llama value model runs with finite figures; DPO
//! separates chosen from rejected; transformers scores a kiln Llama reward
//! model as kiln does.

use kiln_abi::BackendBox;
use kiln_align::grpo::{train_grpo, GrpoConfig};
use kiln_align::metrics::{Progress, Record};
use kiln_align::policy::Policy;
use kiln_align::ppo::{train_ppo, PpoConfig, PpoModels, SamplingConfig};
use kiln_align::reward::RewardModel;
use kiln_align::rollout::Scorer;
use kiln_align::sft::{train_sft, SftConfig};
use kiln_model::{Gpt, GptConfig, LlamaFamily};
use kiln_tokenizer::{chat, Message, Pattern, Tokenizer};

fn tokenizer() -> Tokenizer {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let corpus = [
        "What is the capital of France? Paris is the capital of France.",
        "Name a red fruit. An apple is a red fruit. Say hello. Hello there, friend!",
        "say some letters please, letters and more letters",
    ];
    kiln_tokenizer::train(&corpus, 300, Pattern::Gpt2, &refs, 0).unwrap()
}

/// A 2-layer Llama (grouped-query, untied) or Qwen2 (q/k/v biases, tied).
fn policy(be: &mut BackendBox, family: LlamaFamily, seed: u64, t: usize) -> Policy {
    let tok = tokenizer();
    let tied = family == LlamaFamily::Qwen2;
    let cfg = GptConfig::new_llama(family, tok.vocab_size(), t, 2, 4, 2, 32, 48, tied);
    Policy::new(Gpt::new(be, cfg, seed).unwrap(), tok).unwrap()
}

#[test]
fn sft_overfits_chats_on_llama_policies_and_the_saved_directory_loads_back() {
    let mut be = kiln_tensor::cpu_backend(Some(2));
    for family in [LlamaFamily::Llama, LlamaFamily::Qwen2] {
        let mut p = policy(&mut be, family, 3, 64);
        let convs = [
            ("What is the capital of France?", "Paris is the capital."),
            ("Name a red fruit.", "An apple."),
            ("Say hello.", "Hello there, friend!"),
        ];
        let chats: Vec<_> = convs
            .iter()
            .map(|(q, a)| {
                p.template
                    .encode(&p.tokenizer, &[Message::user(*q), Message::assistant(*a)])
                    .unwrap()
            })
            .collect();
        let config = SftConfig {
            epochs: 60,
            batch_size: 3,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 5,
            eval_fraction: 0.0,
            ..SftConfig::default()
        };
        let s = train_sft(
            &mut be,
            &mut p,
            &chats,
            &[],
            &config,
            None,
            &Progress::hidden("sft", 60),
        )
        .unwrap();
        eprintln!("{family:?}: SFT loss {} -> {}", s.first_loss, s.last_loss);
        assert!(
            s.last_loss.is_finite() && s.last_loss < 0.2 * s.first_loss,
            "{family:?}: {} -> {}",
            s.first_loss,
            s.last_loss
        );

        let dir = tempfile::tempdir().unwrap();
        p.save(&mut be, &dir.path().join("policy")).unwrap();
        let mut again = Policy::load(&mut be, &dir.path().join("policy"), None).unwrap();
        assert_eq!(again.model.config, p.model.config);
        let ids = &chats[0].ids;
        let n = ids.len();
        p.model.forward(&mut be, ids, None, 1, n).unwrap();
        again.model.forward(&mut be, ids, None, 1, n).unwrap();
        assert_eq!(
            p.model.logits(&mut be).unwrap(),
            again.model.logits(&mut be).unwrap(),
            "{family:?}"
        );
    }
}

fn prompts(p: &Policy) -> Vec<Vec<u32>> {
    ["say letters", "more please", "letters and", "some"]
        .iter()
        .map(|q| {
            p.template
                .encode_prompt(&p.tokenizer, &[Message::user(*q)])
                .unwrap()
        })
        .collect()
}

/// Share of the reply's characters that are lowercase ASCII letters.
fn letters(_prompt: usize, reply: &str) -> f32 {
    let total = reply.chars().count();
    if total == 0 {
        return 0.0;
    }
    reply.chars().filter(|c| c.is_ascii_lowercase()).count() as f32 / total as f32
}

fn sampling() -> SamplingConfig {
    SamplingConfig {
        max_new_tokens: 8,
        ..SamplingConfig::default()
    }
}

fn series(records: &[Record], key: &str) -> Vec<f64> {
    records.iter().map(|r| r.get(key).unwrap()).collect()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

#[test]
fn grpo_raises_a_verifiable_reward_on_a_llama_policy() {
    let mut be = kiln_tensor::cpu_backend(Some(2));
    let mut pol = policy(&mut be, LlamaFamily::Llama, 11, 40);
    let mut reference = policy(&mut be, LlamaFamily::Llama, 11, 40);
    let data = prompts(&pol);
    let cfg = GrpoConfig {
        seed: 2,
        iterations: 30,
        batch_prompts: 4,
        group_size: 4,
        minibatch_size: 8,
        epochs: 2,
        sampling: sampling(),
        beta: 0.02,
        missing_eos_penalty: None,
        lr: 3e-3,
        ..GrpoConfig::default()
    };
    let reward = letters;
    let recs = train_grpo(
        &mut be,
        &mut pol,
        &mut reference,
        Scorer::Program(&reward),
        &data,
        &cfg,
        |_| Ok(()),
    )
    .unwrap();
    let reward = series(&recs, "reward");
    let kl = series(&recs, "kl");
    eprintln!("reward {reward:.3?}\nkl {kl:.3?}");
    let (first, last) = (mean(&reward[..5]), mean(&reward[25..]));
    assert!(last > first + 0.1, "reward {first:.3} -> {last:.3}");
    assert!(kl.iter().all(|k| k.is_finite() && *k >= 0.0), "{kl:?}");
}

#[test]
fn ppo_runs_on_a_llama_policy_with_a_llama_value_model() {
    let mut be = kiln_tensor::cpu_backend(Some(2));
    let mut pol = policy(&mut be, LlamaFamily::Llama, 7, 40);
    let mut reference = policy(&mut be, LlamaFamily::Llama, 7, 40);
    let lm = policy(&mut be, LlamaFamily::Llama, 7, 40);
    let mut value = RewardModel::from_policy(&mut be, lm, 3).unwrap();
    let data = prompts(&pol);
    let cfg = PpoConfig {
        seed: 1,
        iterations: 4,
        batch_size: 16,
        minibatch_size: 8,
        ppo_epochs: 2,
        sampling: sampling(),
        kl_coef: 0.02,
        missing_eos_penalty: None,
        lr: 3e-3,
        value_lr: 3e-3,
        ..PpoConfig::default()
    };
    let reward = letters;
    let models = PpoModels {
        policy: &mut pol,
        reference: &mut reference,
        value: &mut value,
        scorer: Scorer::Program(&reward),
        gold: None,
    };
    let recs = train_ppo(&mut be, models, &data, &cfg, |_| Ok(())).unwrap();
    assert_eq!(recs.len(), 4);
    for key in ["reward", "kl", "value_loss", "policy_loss", "entropy"] {
        let s = series(&recs, key);
        assert!(s.iter().all(|x| x.is_finite()), "{key}: {s:?}");
    }
    assert!(recs[3].get("kl").unwrap() != 0.0, "the policy moved");
}

/// Scores a reward-model directory with transformers'
/// AutoModelForSequenceClassification; writes them as little-endian f32.
const HF_SCORE: &str = r#"
import sys, numpy as np, torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], attn_implementation="eager").float().eval()
assert type(model).__name__ == sys.argv[3], type(model).__name__
out = []
for seq in sys.argv[4:]:
    ids = torch.tensor([[int(x) for x in seq.split(",")]])
    with torch.no_grad():
        out.append(model(input_ids=ids).logits[0, 0].item())
np.asarray(out, dtype="<f4").tofile(sys.argv[2])
"#;

fn have_transformers() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import torch, transformers, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A kiln Llama-family reward model loads in transformers as its family's
/// sequence classifier and scores as kiln does (head bias 0 here; a bias
/// would shift transformers' scores by that constant). Live: skipped
/// without python3 + torch + transformers + numpy.
#[test]
fn transformers_scores_a_kiln_llama_reward_model_as_kiln_does() {
    if !have_transformers() {
        eprintln!("skipped: python3 with torch, transformers and numpy is not available");
        return;
    }
    let mut be = kiln_tensor::cpu_backend(Some(2));
    for family in [LlamaFamily::Llama, LlamaFamily::Qwen2] {
        let lm = policy(&mut be, family, 5, 40);
        let mut rm = RewardModel::from_policy(&mut be, lm, 6).unwrap();
        let texts = ["Paris is the capital.", "An apple, please."];
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| rm.lm.tokenizer.encode_ordinary(t))
            .collect();
        let kiln: Vec<f32> = seqs
            .iter()
            .map(|s| {
                let batch = kiln_align::batch::TokenBatch::whole(&[s], 0).unwrap();
                rm.scores(&mut be, &batch).unwrap()[0]
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm");
        rm.save(&mut be, &path).unwrap();
        let out = dir.path().join("scores.f32");
        let run = std::process::Command::new("python3")
            .args(["-c", HF_SCORE])
            .arg(&path)
            .arg(&out)
            .arg(family.sequence_classifier())
            .args(
                seqs.iter()
                    .map(|s| s.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
            )
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{family:?}: transformers could not load the reward model:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let hf: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        for (k, h) in kiln.iter().zip(&hf) {
            assert!(
                (k - h).abs() <= 1e-4 * k.abs().max(1.0),
                "{family:?}: kiln {kiln:?} vs transformers {hf:?}"
            );
        }
    }
}

/// DPO on a Llama policy: step 0 is ln 2 (the policy is its reference)
/// and training separates chosen from rejected replies.
#[test]
fn dpo_raises_margins_on_a_llama_policy() {
    use kiln_align::data::EncodedPair;
    use kiln_align::dpo::{pair_logps, train, DpoConfig};
    let mut be = kiln_tensor::cpu_backend(Some(2));
    let pairs: Vec<EncodedPair> = (0..6u32)
        .map(|i| EncodedPair {
            prompt: vec![1 + i, 40 + 3 * i, 90 + i],
            chosen: vec![7, 7 + i, 0],
            rejected: vec![200 + i, 150, 120 + 2 * i, 0],
        })
        .collect();
    let mut reference = policy(&mut be, LlamaFamily::Llama, 13, 16).model;
    let refs = pair_logps(&mut reference, &mut be, &pairs, 0, 1).unwrap();
    let mut model = policy(&mut be, LlamaFamily::Llama, 13, 16).model;
    let cfg = DpoConfig {
        steps: Some(8),
        batch_size: 6,
        micro_batch: 3,
        lr: 3e-3,
        min_lr: 3e-3,
        ..DpoConfig::default()
    };
    let s = train(
        &mut be,
        &mut model,
        &pairs,
        &refs,
        0,
        &cfg,
        None,
        &Progress::hidden("dpo", 8),
    )
    .unwrap();
    let ln2 = std::f64::consts::LN_2;
    assert!((s.first_loss - ln2).abs() < 1e-6, "{}", s.first_loss);
    assert!(s.after.rewards_accuracies >= 5.0 / 6.0, "{:?}", s.after);
    assert!(s.last_loss < ln2 - 0.02, "{}", s.last_loss);
}
