//! Second line of defence behind the PyTorch fixtures: central finite
//! differences of the whole model's loss against backward, for two entries
//! (the largest-gradient one and a pseudo-random one) of every parameter.

use kiln_model::GptConfig;

use crate::{backend, is_vocab_table, perturbed_model, tiny_config, tiny_llama_config, tokens};

#[test]
fn backward_matches_central_differences_for_every_parameter() {
    let cfg = tiny_config();
    let n = 2 + 12 * cfg.n_layer + 2;
    check_every_parameter(cfg, n);
}

/// A Qwen2-style model (biases, GQA, untied head) whose sliding window (5)
/// is shorter than the batch's rows (8).
#[test]
fn llama_backward_matches_central_differences_for_every_parameter() {
    let cfg = tiny_llama_config();
    let n = 1 + 12 * cfg.n_layer + 2;
    check_every_parameter(cfg, n);
}

fn check_every_parameter(cfg: GptConfig, n_params: usize) {
    let mut be = backend();
    let (b, t) = (2, 8);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 11);
    let x = tokens(b * t, cfg.vocab_size, 1);
    let mut y = tokens(b * t, cfg.vocab_size, 2);
    y[5] = u32::MAX; // an ignored target must not change anything

    gpt.zero_grad(&mut be).unwrap();
    gpt.forward(&mut be, &x, Some(&y), b, t).unwrap();
    gpt.backward(&mut be, 1.0).unwrap();
    let grads = gpt.read_grads(&mut be).unwrap();
    let mut values = gpt.read_params(&mut be).unwrap();

    let h = 1e-2f32;
    let mut checked = 0;
    for pi in 0..values.len() {
        let name = gpt.params()[pi].name.clone();
        let used = if is_vocab_table(&name) {
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
            let mut loss_at = |v: f32| {
                values[pi][idx] = v;
                gpt.write_params(&mut be, &values).unwrap();
                gpt.forward(&mut be, &x, Some(&y), b, t).unwrap().unwrap() as f64
            };
            let fd = (loss_at(orig + h) - loss_at(orig - h)) / (2.0 * h as f64);
            values[pi][idx] = orig;
            let an = grads[pi][idx] as f64;
            // f32 loss noise ~1e-6 / 2h plus O(h^2) truncation.
            let tol = 2e-2 * an.abs() + 2e-4;
            assert!(
                (fd - an).abs() <= tol,
                "{name}[{idx}]: finite difference {fd:.6e} vs backward {an:.6e}"
            );
            checked += 1;
        }
    }
    gpt.write_params(&mut be, &values).unwrap();
    assert_eq!(checked, 2 * n_params);
}

#[test]
fn padding_rows_of_wte_get_no_gradient() {
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 3);
    let x = tokens(16, cfg.vocab_size, 4);
    let y = tokens(16, cfg.vocab_size, 5);
    gpt.zero_grad(&mut be).unwrap();
    gpt.forward(&mut be, &x, Some(&y), 2, 8).unwrap();
    gpt.backward(&mut be, 1.0).unwrap();
    let dwte = &gpt.read_grads(&mut be).unwrap()[0];
    let real = cfg.vocab_size * cfg.n_embd;
    assert!(dwte[..real].iter().any(|&g| g != 0.0));
    assert!(dwte[real..].iter().all(|&g| g == 0.0));
}
