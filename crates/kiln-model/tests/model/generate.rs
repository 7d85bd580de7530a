//! KV-cache generation against recomputing the full forward every step.

use kiln_model::{sample::argmax, GptConfig, LlamaFamily, SampleOptions};

use crate::{backend, perturbed_model, tokens};

fn greedy(max_new_tokens: usize) -> SampleOptions {
    SampleOptions {
        max_new_tokens,
        temperature: 0.0,
        ..SampleOptions::default()
    }
}

#[test]
fn kv_cache_greedy_equals_full_forward_argmax() {
    let mut be = backend();
    let cfg = GptConfig::new(57, 24, 2, 4, 32);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 21);
    let prompt = tokens(5, cfg.vocab_size, 9);
    let generated = gpt.generate(&mut be, &prompt, &greedy(12)).unwrap();
    assert_eq!(generated.len(), 12);

    let mut context = prompt.clone();
    for (step, &tok) in generated.iter().enumerate() {
        let t = context.len();
        gpt.forward(&mut be, &context, None, 1, t).unwrap();
        let logits = gpt.logits(&mut be).unwrap();
        let last = &logits[(t - 1) * cfg.vocab_size..];
        assert_eq!(argmax(last), tok, "step {step}");
        context.push(tok);
    }
    // A second call reuses the caches and gives the same tokens.
    assert_eq!(
        gpt.generate(&mut be, &prompt, &greedy(12)).unwrap(),
        generated
    );
}

#[test]
fn generation_stops_at_the_context_limit_and_at_the_stop_token() {
    let mut be = backend();
    let cfg = GptConfig::new(57, 12, 1, 2, 16);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 2);
    // A context of 12 positions predicts up to the 13th token.
    let prompt = tokens(10, cfg.vocab_size, 1);
    assert_eq!(
        gpt.generate(&mut be, &prompt, &greedy(50)).unwrap().len(),
        3
    );

    let free = gpt.generate(&mut be, &prompt[..2], &greedy(8)).unwrap();
    let stop = free[3];
    let first = free.iter().position(|&x| x == stop).unwrap();
    let opts = SampleOptions {
        stop_token: Some(stop),
        ..greedy(8)
    };
    assert_eq!(
        gpt.generate(&mut be, &prompt[..2], &opts).unwrap(),
        free[..=first].to_vec()
    );
}

#[test]
fn sampling_is_seed_deterministic() {
    let mut be = backend();
    let cfg = GptConfig::new(57, 32, 1, 2, 16);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 4);
    let opts = |seed| SampleOptions {
        max_new_tokens: 20,
        temperature: 1.0,
        top_k: Some(20),
        top_p: Some(0.95),
        seed,
        stop_token: None,
    };
    let a = gpt.generate(&mut be, &[1, 2, 3], &opts(7)).unwrap();
    let b = gpt.generate(&mut be, &[1, 2, 3], &opts(7)).unwrap();
    let c = gpt.generate(&mut be, &[1, 2, 3], &opts(8)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(gpt.generate(&mut be, &[], &opts(1)).is_err());
    assert!(gpt.generate(&mut be, &[57], &opts(1)).is_err());
}

/// Reference sampler: recompute the whole forward for every new token and
/// sample from its last row with the same rule and seed.
fn sample_by_full_forward(
    gpt: &mut kiln_model::Gpt,
    be: &mut kiln_abi::BackendBox,
    prompt: &[u32],
    opts: &SampleOptions,
) -> Vec<u32> {
    let (v, t_max) = (gpt.config.vocab_size, gpt.config.max_seq_len);
    let mut rng = kiln_model::Rng::new(opts.seed);
    let mut context = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < opts.max_new_tokens {
        let t = context.len();
        gpt.forward(be, &context, None, 1, t).unwrap();
        let logits = gpt.logits(be).unwrap();
        let next = kiln_model::sample_token(&logits[(t - 1) * v..], opts, &mut rng);
        out.push(next);
        if Some(next) == opts.stop_token || t == t_max {
            break;
        }
        context.push(next);
    }
    out
}

#[test]
fn batched_sampling_equals_full_forward_sampling_with_long_prompts() {
    batched_sampling_with_long_prompts(GptConfig::new(57, 150, 2, 2, 16));
}

/// Llama family: rotary positions continue across prefill chunks and
/// steps, grouped-query caches, and a sliding window (40) far shorter than
/// the prompts.
#[test]
fn llama_batched_sampling_equals_full_forward_sampling_with_long_prompts() {
    let mut cfg = GptConfig::new_llama(LlamaFamily::Mistral, 57, 150, 2, 4, 2, 16, 24, false);
    cfg.llama.as_mut().unwrap().sliding_window = Some(40);
    batched_sampling_with_long_prompts(cfg);
}

fn batched_sampling_with_long_prompts(cfg: GptConfig) {
    let mut be = backend();
    // Prompts longer than one prefill chunk (64 positions), of different
    // lengths; the longest reaches max_seq_len before max_new_tokens.
    assert_eq!(cfg.max_seq_len, 150);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 6);
    let prompts: Vec<Vec<u32>> = [70usize, 131, 66, 145]
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(n, cfg.vocab_size, 60 + i as u64))
        .collect();
    let opts = SampleOptions {
        max_new_tokens: 10,
        temperature: 1.0,
        top_k: Some(20),
        top_p: Some(0.95),
        seed: 11,
        stop_token: None,
    };
    let batch = gpt.generate_batch(&mut be, &prompts, &opts).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let one = SampleOptions {
            seed: 11 + i as u64,
            ..opts.clone()
        };
        let want = sample_by_full_forward(&mut gpt, &mut be, prompt, &one);
        assert_eq!(batch[i], want, "prompt {i}");
    }
    assert_eq!(
        batch.iter().map(Vec::len).collect::<Vec<_>>(),
        [10, 10, 10, 6]
    );
}
