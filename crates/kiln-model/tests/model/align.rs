//! The calls post-training builds on (per-token losses, weighted backward,
//! entropies, hidden states, streaming and batched generation), checked
//! against finite differences, host computations and the plain calls.

use kiln_model::{Gpt, GptConfig, ModelError, Rng, SampleOptions};

use crate::{backend, perturbed_model, tiny_config, tokens};

/// Central finite differences of `objective` for two entries (the
/// largest-gradient one and a pseudo-random one) of every parameter,
/// against the analytic gradients `grads`.
fn check_against_finite_differences(
    be: &mut kiln_abi::BackendBox,
    gpt: &mut Gpt,
    grads: &[Vec<f32>],
    mut objective: impl FnMut(&mut kiln_abi::BackendBox, &mut Gpt) -> f64,
) {
    let cfg = gpt.config.clone();
    let mut values = gpt.read_params(be).unwrap();
    let h = 1e-2f32;
    let mut checked = 0;
    for pi in 0..values.len() {
        let name = gpt.params()[pi].name.clone();
        let used = if name == "transformer.wte.weight" {
            cfg.vocab_size * cfg.n_embd
        } else {
            values[pi].len()
        };
        let largest = (0..used)
            .max_by(|&a, &b| grads[pi][a].abs().total_cmp(&grads[pi][b].abs()))
            .unwrap();
        let other = (pi * 7919 + 13) % used;
        for idx in [largest, other] {
            let orig = values[pi][idx];
            let mut at = |v: f32| {
                values[pi][idx] = v;
                gpt.write_params(be, &values).unwrap();
                objective(be, gpt)
            };
            let fd = (at(orig + h) - at(orig - h)) / (2.0 * h as f64);
            values[pi][idx] = orig;
            let an = grads[pi][idx] as f64;
            let tol = 2e-2 * an.abs() + 3e-4;
            assert!(
                (fd - an).abs() <= tol,
                "{name}[{idx}]: finite difference {fd:.6e} vs analytic {an:.6e}"
            );
            checked += 1;
        }
    }
    gpt.write_params(be, &values).unwrap();
    assert_eq!(checked, 2 * (2 + 12 * cfg.n_layer + 2));
}

fn normals(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| scale * rng.normal()).collect()
}

fn assert_input_error<T: std::fmt::Debug>(r: Result<T, ModelError>, needle: &str) {
    match r {
        Err(ModelError::Input(msg)) => {
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}")
        }
        other => panic!("expected ModelError::Input containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn token_losses_average_to_forwards_loss_and_match_the_logits() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (2, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 31);
    let x = tokens(b * t, cfg.vocab_size, 1);
    let mut y = tokens(b * t, cfg.vocab_size, 2);
    y[3] = u32::MAX;
    y[12] = cfg.vocab_size as u32; // also ignored

    let mean = gpt.forward(&mut be, &x, Some(&y), b, t).unwrap().unwrap();
    let losses = gpt.forward_token_losses(&mut be, &x, &y, b, t).unwrap();
    assert_eq!(losses.len(), b * t);
    assert_eq!((losses[3], losses[12]), (0.0, 0.0));
    let counted: f64 = losses.iter().map(|&l| l as f64).sum::<f64>() / 14.0;
    assert!((counted - mean as f64).abs() < 1e-6, "{counted} vs {mean}");

    // Each loss is -log softmax of its logits row at the target.
    let logits = gpt.logits(&mut be).unwrap();
    let v = cfg.vocab_size;
    for (r, &tgt) in y.iter().enumerate() {
        if tgt as usize >= v {
            continue;
        }
        let row = &logits[r * v..(r + 1) * v];
        let top = row.iter().fold(f64::MIN, |m, &z| m.max(z as f64));
        let lse = top
            + row
                .iter()
                .map(|&z| (z as f64 - top).exp())
                .sum::<f64>()
                .ln();
        let want = lse - row[tgt as usize] as f64;
        assert!(
            (losses[r] as f64 - want).abs() < 1e-4 * (1.0 + want),
            "row {r}"
        );
    }
}

#[test]
fn backward_is_backward_weighted_with_scale_over_counted() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (2, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 32);
    let x = tokens(b * t, cfg.vocab_size, 3);
    let mut y = tokens(b * t, cfg.vocab_size, 4);
    y[0] = u32::MAX;
    y[9] = u32::MAX;
    let scale = 0.7f32;

    gpt.zero_grad(&mut be).unwrap();
    gpt.forward(&mut be, &x, Some(&y), b, t).unwrap();
    gpt.backward(&mut be, scale).unwrap();
    let plain = gpt.read_grads(&mut be).unwrap();

    gpt.zero_grad(&mut be).unwrap();
    gpt.forward_token_losses(&mut be, &x, &y, b, t).unwrap();
    // A weight on an ignored position must not matter.
    let mut w = vec![scale / 14.0; b * t];
    w[0] = 123.0;
    gpt.backward_weighted(&mut be, &w).unwrap();
    let weighted = gpt.read_grads(&mut be).unwrap();
    for (pi, (a, bb)) in plain.iter().zip(&weighted).enumerate() {
        for (x, y) in a.iter().zip(bb) {
            assert!(
                (x - y).abs() <= 1e-6 * (1.0 + x.abs()),
                "param {pi}: {x} vs {y}"
            );
        }
    }
    assert!(plain[0].iter().any(|&g| g != 0.0));
}

#[test]
fn backward_weighted_matches_central_differences() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (2, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 33);
    let x = tokens(b * t, cfg.vocab_size, 5);
    let mut y = tokens(b * t, cfg.vocab_size, 6);
    y[6] = u32::MAX;
    // Signed weights, as policy-gradient advantages are.
    let w = normals(b * t, 0.2, 7);

    gpt.zero_grad(&mut be).unwrap();
    gpt.forward_token_losses(&mut be, &x, &y, b, t).unwrap();
    gpt.backward_weighted(&mut be, &w).unwrap();
    let grads = gpt.read_grads(&mut be).unwrap();
    check_against_finite_differences(&mut be, &mut gpt, &grads, |be, gpt| {
        let losses = gpt.forward_token_losses(be, &x, &y, b, t).unwrap();
        losses
            .iter()
            .zip(&w)
            .map(|(&l, &wi)| l as f64 * wi as f64)
            .sum()
    });
}

#[test]
fn backward_hidden_matches_central_differences() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (2, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 34);
    let x = tokens(b * t, cfg.vocab_size, 8);
    // The gradient of a linear head sum(dh * hidden).
    let dh = normals(b * t * cfg.n_embd, 0.05, 9);

    gpt.zero_grad(&mut be).unwrap();
    let hidden = gpt.forward_hidden(&mut be, &x, b, t).unwrap();
    assert_eq!(hidden.len(), b * t * cfg.n_embd);
    gpt.backward_hidden(&mut be, &dh).unwrap();
    let grads = gpt.read_grads(&mut be).unwrap();
    // No lm_head in this objective: wte only gets the encoder's gradient,
    // i.e. nothing on rows of tokens that never occur.
    let absent = (0..cfg.vocab_size as u32).find(|v| !x.contains(v)).unwrap() as usize;
    let c = cfg.n_embd;
    assert!(grads[0][absent * c..(absent + 1) * c]
        .iter()
        .all(|&g| g == 0.0));
    check_against_finite_differences(&mut be, &mut gpt, &grads, |be, gpt| {
        let h = gpt.forward_hidden(be, &x, b, t).unwrap();
        h.iter().zip(&dh).map(|(&a, &d)| a as f64 * d as f64).sum()
    });
}

#[test]
fn hidden_states_times_wte_are_the_logits() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (1, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 35);
    let x = tokens(b * t, cfg.vocab_size, 10);
    let hidden = gpt.forward_hidden(&mut be, &x, b, t).unwrap();
    assert_input_error(gpt.logits(&mut be), "forward");
    gpt.forward(&mut be, &x, None, b, t).unwrap();
    let logits = gpt.logits(&mut be).unwrap();
    let wte = &gpt.read_params(&mut be).unwrap()[0];
    let (c, v) = (cfg.n_embd, cfg.vocab_size);
    for r in 0..b * t {
        for j in 0..v {
            let dot: f64 = (0..c)
                .map(|k| hidden[r * c + k] as f64 * wte[j * c + k] as f64)
                .sum();
            assert!((dot - logits[r * v + j] as f64).abs() < 1e-4, "({r}, {j})");
        }
    }
}

#[test]
fn token_entropies_match_a_host_softmax() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (2, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 36);
    let x = tokens(b * t, cfg.vocab_size, 11);
    let y = tokens(b * t, cfg.vocab_size, 12);
    gpt.forward_token_losses(&mut be, &x, &y, b, t).unwrap();
    let ent = gpt.token_entropies(&mut be).unwrap();
    let logits = gpt.logits(&mut be).unwrap();
    let v = cfg.vocab_size;
    assert_eq!(ent.len(), b * t);
    for (r, &h) in ent.iter().enumerate() {
        let row = &logits[r * v..(r + 1) * v];
        let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        let want: f64 = row
            .iter()
            .map(|&l| {
                let p = (l as f64).exp() / z;
                -p * p.ln()
            })
            .sum();
        assert!((h as f64 - want).abs() < 1e-5, "row {r}: {h} vs {want}");
        assert!(h > 0.0 && (h as f64) < (v as f64).ln());
    }
    // Without targets as well; never after backward (logits buffer reused).
    gpt.forward(&mut be, &x, None, b, t).unwrap();
    assert_eq!(gpt.token_entropies(&mut be).unwrap(), ent);
    gpt.forward(&mut be, &x, Some(&y), b, t).unwrap();
    gpt.backward(&mut be, 1.0).unwrap();
    assert_input_error(gpt.token_entropies(&mut be), "before backward");
}

fn sampled(max_new_tokens: usize, seed: u64) -> SampleOptions {
    SampleOptions {
        max_new_tokens,
        temperature: 0.9,
        top_k: Some(30),
        top_p: Some(0.97),
        seed,
        stop_token: None,
    }
}

#[test]
fn a_batch_larger_than_one_lockstep_group_runs_in_groups_with_the_same_ids() {
    let mut be = backend();
    // A long context makes each sequence's cache large: 256 per group.
    let cfg = GptConfig::new(57, 4096, 1, 2, 64);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 11);
    let group = gpt.lockstep_group();
    assert_eq!(group, 256);
    let prompts: Vec<Vec<u32>> = (0..group + 44)
        .map(|i| tokens(1 + i % 5, cfg.vocab_size, 900 + i as u64))
        .collect();
    let opts = sampled(4, 77);
    let batch = gpt.generate_batch(&mut be, &prompts, &opts).unwrap();
    assert_eq!(batch.len(), prompts.len());
    for i in [0, group - 1, group, group + 1, prompts.len() - 1] {
        let one = SampleOptions {
            seed: opts.seed.wrapping_add(i as u64),
            ..opts.clone()
        };
        let want = gpt.generate(&mut be, &prompts[i], &one).unwrap();
        assert_eq!(batch[i], want, "prompt {i}");
    }
}

#[test]
fn generate_batch_equals_a_loop_of_generate_with_seeds_seed_plus_i() {
    let mut be = backend();
    let cfg = GptConfig::new(57, 20, 2, 4, 32);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 37);
    // Different lengths; the 17-token prompt hits max_seq_len after 4 new tokens.
    let prompts: Vec<Vec<u32>> = [3usize, 1, 7, 17, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(n, cfg.vocab_size, 40 + i as u64))
        .collect();
    let greedy = SampleOptions {
        max_new_tokens: 9,
        temperature: 0.0,
        ..SampleOptions::default()
    };
    for opts in [greedy, sampled(9, u64::MAX - 2)] {
        let batch = gpt.generate_batch(&mut be, &prompts, &opts).unwrap();
        assert_eq!(batch.len(), prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let one = SampleOptions {
                seed: opts.seed.wrapping_add(i as u64),
                ..opts.clone()
            };
            let want = gpt.generate(&mut be, prompt, &one).unwrap();
            assert_eq!(batch[i], want, "prompt {i} with {opts:?}");
        }
        assert_eq!(batch[3].len(), 4);
    }
    // Sampling differs between the sequences' seeds (same prompt twice).
    let same = vec![prompts[0].clone(), prompts[0].clone()];
    let two = gpt.generate_batch(&mut be, &same, &sampled(12, 5)).unwrap();
    assert_ne!(two[0], two[1]);
    // A stop token ends each sequence on its own.
    let free = gpt
        .generate_batch(&mut be, &prompts, &sampled(9, 3))
        .unwrap();
    let stop = free[0][2];
    let opts = SampleOptions {
        stop_token: Some(stop),
        ..sampled(9, 3)
    };
    let stopped = gpt.generate_batch(&mut be, &prompts, &opts).unwrap();
    for (f, s) in free.iter().zip(&stopped) {
        let end = f.iter().position(|&x| x == stop).map_or(f.len(), |p| p + 1);
        assert_eq!(s, &f[..end]);
    }
    assert!(gpt
        .generate_batch(&mut be, &Vec::<Vec<u32>>::new(), &opts)
        .unwrap()
        .is_empty());
}

#[test]
fn generate_with_streams_the_tokens_and_stops_on_request() {
    let mut be = backend();
    let cfg = GptConfig::new(57, 32, 2, 2, 16);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 38);
    let prompt = tokens(4, cfg.vocab_size, 13);
    let opts = sampled(15, 77);
    let want = gpt.generate(&mut be, &prompt, &opts).unwrap();
    let mut streamed = Vec::new();
    let got = gpt
        .generate_with(&mut be, &prompt, &opts, |tok| {
            streamed.push(tok);
            true
        })
        .unwrap();
    assert_eq!((&got, &streamed), (&want, &want));

    let mut seen = 0;
    let short = gpt
        .generate_with(&mut be, &prompt, &opts, |_| {
            seen += 1;
            seen < 5
        })
        .unwrap();
    assert_eq!((short.as_slice(), seen), (&want[..5], 5));
}

#[test]
fn calls_in_the_wrong_order_are_input_errors() {
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 39);
    let x = tokens(8, cfg.vocab_size, 14);
    let y = tokens(8, cfg.vocab_size, 15);
    assert_input_error(gpt.backward_weighted(&mut be, &[1.0; 8]), "first");
    assert_input_error(gpt.backward_hidden(&mut be, &[0.0; 8 * 16]), "first");
    assert_input_error(gpt.token_entropies(&mut be), "forward");

    gpt.forward(&mut be, &x, None, 1, 8).unwrap();
    assert_input_error(gpt.backward_weighted(&mut be, &[1.0; 8]), "targets");
    gpt.forward_hidden(&mut be, &x, 1, 8).unwrap();
    assert_input_error(gpt.backward_weighted(&mut be, &[1.0; 8]), "targets");
    assert_input_error(gpt.backward(&mut be, 1.0), "targets");
    assert_input_error(gpt.token_entropies(&mut be), "forward_hidden");

    gpt.forward_token_losses(&mut be, &x, &y, 1, 8).unwrap();
    let mut w = vec![1.0; 8];
    w[2] = f32::NAN;
    assert_input_error(gpt.backward_weighted(&mut be, &w), "weight 2");
    // A failed forward leaves nothing to backward.
    assert_input_error(
        gpt.forward_token_losses(&mut be, &x, &y[..7], 1, 8),
        "targets",
    );
    assert_input_error(gpt.backward_weighted(&mut be, &[1.0; 8]), "first");

    let bad = vec![vec![1u32, 2], vec![], vec![3]];
    assert_input_error(
        gpt.generate_batch(&mut be, &bad, &SampleOptions::default()),
        "prompt 1 is empty",
    );
    let bad = vec![vec![1u32, 2], vec![3, 99]];
    assert_input_error(
        gpt.generate_batch(&mut be, &bad, &SampleOptions::default()),
        "prompt 1: token 99 at position 1",
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Whatever lengths the caller passes, the calls either succeed (exactly
    /// when the lengths fit the contract) or return ModelError::Input.
    #[test]
    fn length_contracts_hold_without_panics(
        b in 0usize..4,
        t in 0usize..11,
        n_tok in 0usize..30,
        n_tgt in 0usize..30,
        n_w in 0usize..30,
        n_dh in 0usize..500,
    ) {
        let mut be = backend();
        let cfg = tiny_config(); // max_seq_len 8, n_embd 16
        let mut gpt = Gpt::new(&mut be, cfg.clone(), 1).unwrap();
        let x = tokens(n_tok, cfg.vocab_size, 1);
        let y = tokens(n_tgt, cfg.vocab_size, 2);
        let shape_ok = b > 0 && t > 0 && t <= cfg.max_seq_len && n_tok == b * t;

        let r = gpt.forward_token_losses(&mut be, &x, &y, b, t);
        let fits = shape_ok && n_tgt == n_tok;
        match &r {
            Ok(l) => proptest::prop_assert!(fits && l.len() == b * t),
            Err(ModelError::Input(_)) => proptest::prop_assert!(!fits),
            Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
        }
        let r = gpt.backward_weighted(&mut be, &vec![0.5; n_w]);
        match &r {
            Ok(()) => proptest::prop_assert!(fits && n_w == b * t),
            Err(ModelError::Input(_)) => proptest::prop_assert!(!(fits && n_w == b * t)),
            Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
        }

        let r = gpt.forward_hidden(&mut be, &x, b, t);
        match &r {
            Ok(h) => proptest::prop_assert!(shape_ok && h.len() == b * t * cfg.n_embd),
            Err(ModelError::Input(_)) => proptest::prop_assert!(!shape_ok),
            Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
        }
        let r = gpt.backward_hidden(&mut be, &vec![0.1; n_dh]);
        let dh_ok = shape_ok && n_dh == b * t * cfg.n_embd;
        match &r {
            Ok(()) => proptest::prop_assert!(dh_ok),
            Err(ModelError::Input(_)) => proptest::prop_assert!(!dh_ok),
            Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
        }
    }
}
