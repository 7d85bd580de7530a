//! PPO and GRPO end to end on a tiny random model with a programmatic
//! reward: the mean reward rises, the KL to the reference stays finite, the
//! value loss falls, and a run is a function of its seed.

use kiln_abi::BackendBox;
use kiln_align::grpo::{train_grpo, GrpoConfig};
use kiln_align::metrics::Record;
use kiln_align::policy::Policy;
use kiln_align::ppo::{train_ppo, PpoConfig, PpoModels, SamplingConfig};
use kiln_align::reward::RewardModel;
use kiln_align::rollout::Scorer;
use kiln_model::{Gpt, GptConfig};
use kiln_tokenizer::{chat, Message, Pattern, Tokenizer};

fn tokenizer() -> Tokenizer {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let corpus = ["say some letters please", "letters and more letters"];
    kiln_tokenizer::train(&corpus, 256 + refs.len() + 16, Pattern::Cl100k, &refs, 0).unwrap()
}

fn policy(be: &mut BackendBox, seed: u64) -> Policy {
    let tok = tokenizer();
    let cfg = GptConfig::new(tok.vocab_size(), 40, 1, 2, 32);
    Policy::new(Gpt::new(be, cfg, seed).unwrap(), tok).unwrap()
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

/// Share of the reply's characters that are lowercase ASCII letters: a
/// dense, bounded, verifiable reward (low by chance for a random model).
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

fn ppo_run(seed: u64, iterations: u64) -> Vec<Record> {
    ppo_run_with(seed, iterations, |_| {})
}

fn ppo_run_with(seed: u64, iterations: u64, tweak: impl FnOnce(&mut PpoConfig)) -> Vec<Record> {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let mut pol = policy(&mut be, 7);
    let mut reference = policy(&mut be, 7);
    let lm = policy(&mut be, 7);
    let mut value = RewardModel::from_policy(&mut be, lm, 3).unwrap();
    let data = prompts(&pol);
    let mut cfg = PpoConfig {
        seed,
        iterations,
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
    tweak(&mut cfg);
    let reward = letters;
    let models = PpoModels {
        policy: &mut pol,
        reference: &mut reference,
        value: &mut value,
        scorer: Scorer::Program(&reward),
        gold: Some(&reward),
    };
    train_ppo(&mut be, models, &data, &cfg, |_| Ok(())).unwrap()
}

fn series(records: &[Record], key: &str) -> Vec<f64> {
    records.iter().map(|r| r.get(key).unwrap()).collect()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

#[test]
fn ppo_raises_the_reward_with_finite_kl_and_a_falling_value_loss() {
    let recs = ppo_run(1, 30);
    let reward = series(&recs, "reward");
    let kl = series(&recs, "kl");
    let vloss = series(&recs, "value_loss");
    eprintln!("reward {reward:.3?}\nkl {kl:.3?}\nvalue_loss {vloss:.4?}");
    let (first, last) = (mean(&reward[..3]), mean(&reward[9..]));
    assert!(last > first + 0.1, "reward {first:.3} -> {last:.3}");
    assert!(kl.iter().all(|k| k.is_finite()), "{kl:?}");
    assert!(
        kl[11] > 0.0,
        "the policy moved away from the reference: {kl:?}"
    );
    assert!(
        mean(&vloss[9..]) < vloss[0],
        "value loss {:.4} -> {:.4}",
        vloss[0],
        mean(&vloss[9..])
    );
    for key in ["entropy", "clip_frac", "response_len", "policy_loss"] {
        assert!(series(&recs, key).iter().all(|x| x.is_finite()), "{key}");
    }
    // The gold score is the optimised one here, so it is the reward itself.
    let gold = series(&recs, "gold_score");
    for (g, r) in gold.iter().zip(&reward) {
        assert!((g - r).abs() < 1e-6, "{gold:?} {reward:?}");
    }
}

#[test]
fn value_warmup_trains_the_value_model_with_the_policy_frozen() {
    let recs = ppo_run_with(3, 2, |c| {
        c.value_warmup = 6;
        c.value_lambda = Some(1.0);
    });
    assert_eq!(recs.len(), 8);
    let warm = series(&recs, "value_warmup");
    assert_eq!(warm, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    // A frozen policy is still the reference: no KL, no policy figures.
    for r in &recs[..6] {
        assert_eq!(r.get("kl"), Some(0.0), "{r:?}");
        assert!(r.get("policy_loss").is_none() && r.get("clip_frac").is_none());
    }
    // The value model learns meanwhile; then PPO moves the policy.
    let vloss = series(&recs, "value_loss");
    assert!(mean(&vloss[3..6]) < vloss[0], "{vloss:?}");
    assert!(recs[7].get("kl").unwrap() != 0.0, "{:?}", recs[7]);
    assert!(recs[7].get("policy_loss").unwrap().is_finite());
}

#[test]
fn ppo_is_a_function_of_its_seed() {
    let a = ppo_run(5, 2);
    let b = ppo_run(5, 2);
    assert_eq!(a, b);
    let c = ppo_run(6, 2);
    assert_ne!(series(&a, "reward"), series(&c, "reward"));
}

fn grpo_run(seed: u64, iterations: u64) -> Vec<Record> {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let mut pol = policy(&mut be, 11);
    let mut reference = policy(&mut be, 11);
    let data = prompts(&pol);
    let cfg = GrpoConfig {
        seed,
        iterations,
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
    train_grpo(
        &mut be,
        &mut pol,
        &mut reference,
        Scorer::Program(&reward),
        &data,
        &cfg,
        |_| Ok(()),
    )
    .unwrap()
}

#[test]
fn grpo_raises_a_verifiable_reward_with_finite_kl() {
    let recs = grpo_run(2, 30);
    let reward = series(&recs, "reward");
    let kl = series(&recs, "kl");
    eprintln!("reward {reward:.3?}\nkl {kl:.3?}");
    let (first, last) = (mean(&reward[..5]), mean(&reward[25..]));
    assert!(last > first + 0.15, "reward {first:.3} -> {last:.3}");
    assert!(kl.iter().all(|k| k.is_finite() && *k >= 0.0), "{kl:?}");
    assert_eq!(grpo_run(3, 2), grpo_run(3, 2));
}
