//! Contracts of forward/backward the training loop relies on.

use kiln_model::{Gpt, GptConfig};

use crate::{backend, perturbed_model, tiny_config, tokens};

#[test]
fn gradient_accumulation_adds_up() {
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 5);
    let x = tokens(16, cfg.vocab_size, 6);
    let y = tokens(16, cfg.vocab_size, 7);

    gpt.zero_grad(&mut be).unwrap();
    gpt.forward(&mut be, &x, Some(&y), 2, 8).unwrap();
    gpt.backward(&mut be, 1.0).unwrap();
    let once = gpt.read_grads(&mut be).unwrap();

    gpt.zero_grad(&mut be).unwrap();
    for _ in 0..2 {
        gpt.forward(&mut be, &x, Some(&y), 2, 8).unwrap();
        gpt.backward(&mut be, 0.5).unwrap();
    }
    let twice = gpt.read_grads(&mut be).unwrap();
    for (a, b) in once.iter().zip(&twice) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn batch_shape_changes_reuse_or_grow_buffers_without_changing_results() {
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 8);
    let small = tokens(4, cfg.vocab_size, 1);
    let small_y = tokens(4, cfg.vocab_size, 2);
    let big = tokens(3 * 8, cfg.vocab_size, 3);
    let big_y = tokens(3 * 8, cfg.vocab_size, 4);

    let first = gpt.forward(&mut be, &small, Some(&small_y), 1, 4).unwrap();
    let logits_first = gpt.logits(&mut be).unwrap();
    assert_eq!(logits_first.len(), 4 * cfg.vocab_size);
    gpt.forward(&mut be, &big, Some(&big_y), 3, 8).unwrap();
    assert_eq!(gpt.logits(&mut be).unwrap().len(), 24 * cfg.vocab_size);
    // back to the small shape inside the grown buffers: same numbers
    let again = gpt.forward(&mut be, &small, Some(&small_y), 1, 4).unwrap();
    assert_eq!(first, again);
    assert_eq!(logits_first, gpt.logits(&mut be).unwrap());
}

#[test]
fn loss_is_mean_over_counted_targets_and_near_ln_v_at_init() {
    let mut be = backend();
    let cfg = GptConfig::new(101, 16, 2, 2, 16);
    let mut gpt = Gpt::new(&mut be, cfg.clone(), 1).unwrap();
    let x = tokens(32, cfg.vocab_size, 1);
    let y = tokens(32, cfg.vocab_size, 2);
    let loss = gpt.forward(&mut be, &x, Some(&y), 2, 16).unwrap().unwrap();
    // GPT-2 init gives near-uniform predictions.
    assert!((loss - (101f32).ln()).abs() < 0.05, "{loss}");

    // Loss recomputed from the logits, skipping ignored targets.
    let mut y_masked = y.clone();
    for i in (0..32).step_by(3) {
        y_masked[i] = u32::MAX;
    }
    let masked = gpt
        .forward(&mut be, &x, Some(&y_masked), 2, 16)
        .unwrap()
        .unwrap();
    let logits = gpt.logits(&mut be).unwrap();
    let (mut sum, mut n) = (0f64, 0);
    for (r, &tgt) in y_masked.iter().enumerate() {
        if tgt == u32::MAX {
            continue;
        }
        let row = &logits[r * 101..(r + 1) * 101];
        let mx = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = row.iter().map(|&z| (z as f64 - mx).exp()).sum::<f64>().ln() + mx;
        sum += lse - row[tgt as usize] as f64;
        n += 1;
    }
    assert!((masked as f64 - sum / n as f64).abs() < 1e-5);

    // Everything ignored: loss 0, and backward adds nothing.
    let none = vec![u32::MAX; 32];
    assert_eq!(
        gpt.forward(&mut be, &x, Some(&none), 2, 16).unwrap(),
        Some(0.0)
    );
    gpt.zero_grad(&mut be).unwrap();
    gpt.backward(&mut be, 1.0).unwrap();
    assert!(gpt
        .read_grads(&mut be)
        .unwrap()
        .iter()
        .all(|g| g.iter().all(|&x| x == 0.0)));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = Gpt::new(&mut be, cfg.clone(), 1).unwrap();
    let e = gpt.backward(&mut be, 1.0).unwrap_err().to_string();
    assert!(e.contains("forward"), "{e}");
    let e = gpt
        .forward(&mut be, &[0, 1, 29, 2], None, 1, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("29") && e.contains("vocabulary"), "{e}");
    let e = gpt
        .forward(&mut be, &[0; 9], None, 1, 9)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_seq_len"), "{e}");
    let e = gpt
        .forward(&mut be, &[0; 3], None, 1, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 tokens"), "{e}");
    gpt.forward(&mut be, &[0; 4], None, 1, 4).unwrap();
    let e = gpt.backward(&mut be, 1.0).unwrap_err().to_string();
    assert!(e.contains("targets"), "{e}");
    // backward reuses the logits buffer: logits() afterwards is refused
    gpt.forward(&mut be, &[0; 4], Some(&[1; 4]), 1, 4).unwrap();
    assert_eq!(gpt.logits(&mut be).unwrap().len(), 4 * cfg.vocab_size);
    gpt.backward(&mut be, 1.0).unwrap();
    let e = gpt.logits(&mut be).unwrap_err().to_string();
    assert!(e.contains("before backward"), "{e}");
}

#[test]
fn init_is_deterministic_and_follows_gpt2() {
    let mut be = backend();
    let cfg = GptConfig::new(200, 64, 4, 4, 64);
    let a = Gpt::new(&mut be, cfg.clone(), 42).unwrap();
    let b = Gpt::new(&mut be, cfg.clone(), 42).unwrap();
    let c = Gpt::new(&mut be, cfg.clone(), 43).unwrap();
    let (va, vb, vc) = (
        a.read_params(&mut be).unwrap(),
        b.read_params(&mut be).unwrap(),
        c.read_params(&mut be).unwrap(),
    );
    assert_eq!(va, vb);
    assert_ne!(va, vc);
    let std = |v: &[f32]| (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
    for (p, v) in a.params().iter().zip(&va) {
        if p.name.ends_with("c_proj.weight") {
            let want = 0.02 / (8f64).sqrt();
            assert!((std(v) - want).abs() < 0.1 * want, "{} {}", p.name, std(v));
        } else if p.name == "transformer.wte.weight" {
            let real = 200 * 64;
            assert!((std(&v[..real]) - 0.02).abs() < 0.002);
            assert!(v[real..].iter().all(|&x| x == 0.0), "padding rows are zero");
        } else if p.shape.len() == 2 {
            assert!((std(v) - 0.02).abs() < 0.002, "{}", p.name);
        } else if p.name.contains("ln_") && p.name.ends_with("weight") {
            assert!(v.iter().all(|&x| x == 1.0));
        } else {
            assert!(v.iter().all(|&x| x == 0.0), "{}", p.name);
        }
        assert_eq!(p.decay, p.shape.len() == 2, "{}", p.name);
    }
    assert_eq!(
        a.params().iter().map(|p| p.len()).sum::<usize>() - (256 - 200) * 64,
        cfg.num_params()
    );
}

#[test]
fn release_frees_every_buffer() {
    use kiln_abi::IntoBResult;
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = Gpt::new(&mut be, cfg.clone(), 1).unwrap();
    gpt.forward(&mut be, &[1; 8], Some(&[2; 8]), 1, 8).unwrap();
    gpt.generate(&mut be, &[1, 2], &kiln_model::SampleOptions::default())
        .unwrap();
    let ids: Vec<_> = gpt
        .params()
        .iter()
        .flat_map(|p| [Some(p.value), p.grad].into_iter().flatten())
        .collect();
    gpt.release(&mut be).unwrap();
    for id in ids {
        assert!(
            be.buffer_info(id).ok_or_err().is_err(),
            "{id:?} still alive"
        );
    }
}
