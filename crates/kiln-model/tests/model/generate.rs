//! KV-cache generation against recomputing the full forward every step.

use kiln_model::{sample::argmax, GptConfig, SampleOptions};

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
