//! Packed batches: several documents in one row, positions restarting per
//! document and no attention across documents. A packed batch must give each
//! document the losses and gradients it gets when run alone.

use kiln_model::{Gpt, GptConfig, ModelError, Packing, Rng};

use crate::{backend, perturbed_model, tiny_config, tiny_llama_config, tokens};

/// Largest |a - b| over all entries, relative to the largest |b|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max(x.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn packed_batch_equals_its_documents_run_alone() {
    let (cfg, packed_grads) = packed_batch_equals_documents(tiny_config());
    // wpe rows 5..8 are used by no document: no gradient either way.
    let wpe = 1;
    let c = cfg.n_embd;
    assert!(packed_grads[wpe][5 * c..].iter().all(|&g| g == 0.0));
}

/// Llama family: per-token rotary positions (forward and the inverse
/// rotation in backward), grouped-query attention within segments.
#[test]
fn llama_packed_batch_equals_its_documents_run_alone() {
    packed_batch_equals_documents(tiny_llama_config());
}

/// Runs a packed batch and each of its documents alone, asserting equal
/// losses and gradients; returns the config and the packed gradients.
fn packed_batch_equals_documents(cfg: GptConfig) -> (GptConfig, Vec<Vec<f32>>) {
    let mut be = backend();
    assert_eq!(cfg.max_seq_len, 8);
    let t = cfg.max_seq_len;
    // Row 0: documents of 3 and 5 tokens; row 1: 4 and 2, then 2 padding
    // tokens (their own segment, targets ignored).
    let rows: [&[usize]; 2] = [&[3, 5], &[4, 2]];
    let b = rows.len();
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 41);
    let mut weights_rng = Rng::new(42);

    let (mut x, mut y, mut seg, mut w) = (vec![], vec![], vec![], vec![]);
    let mut docs = Vec::new(); // (tokens, targets, weights, offset in the batch)
    let mut seed = 100;
    for lens in rows {
        let mut used = 0;
        for (d, &n) in lens.iter().enumerate() {
            let doc_x = tokens(n, cfg.vocab_size, seed);
            let mut doc_y = tokens(n, cfg.vocab_size, seed + 1);
            seed += 2;
            doc_y[n - 1] = u32::MAX; // the last target would cross documents
            let doc_w: Vec<f32> = (0..n).map(|_| weights_rng.normal()).collect();
            docs.push((doc_x.clone(), doc_y.clone(), doc_w.clone(), x.len()));
            x.extend(doc_x);
            y.extend(doc_y);
            w.extend(doc_w);
            seg.extend(std::iter::repeat_n(d as u32, n));
            used += n;
        }
        let pad = t - used;
        x.extend(std::iter::repeat_n(0, pad));
        y.extend(std::iter::repeat_n(u32::MAX, pad));
        w.extend(std::iter::repeat_n(0.0, pad));
        seg.extend(std::iter::repeat_n(u32::MAX, pad));
    }
    let packing = Packing::from_segments(seg, t);
    assert_eq!(
        packing.positions,
        vec![0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 0, 1]
    );

    gpt.zero_grad(&mut be).unwrap();
    let packed = gpt
        .forward_token_losses_packed(&mut be, &x, &y, &packing, b, t)
        .unwrap();
    gpt.backward_weighted(&mut be, &w).unwrap();
    let packed_grads = gpt.read_grads(&mut be).unwrap();

    gpt.zero_grad(&mut be).unwrap();
    let mut alone = vec![0f32; b * t];
    for (dx, dy, dw, off) in &docs {
        let l = gpt
            .forward_token_losses(&mut be, dx, dy, 1, dx.len())
            .unwrap();
        alone[*off..off + l.len()].copy_from_slice(&l);
        gpt.backward_weighted(&mut be, dw).unwrap();
    }
    let alone_grads = gpt.read_grads(&mut be).unwrap();

    let loss_diff = max_rel_diff(&packed, &alone);
    let mut grad_diff = 0f64;
    for (p, (g, h)) in gpt
        .params()
        .iter()
        .zip(packed_grads.iter().zip(&alone_grads))
    {
        let d = max_rel_diff(g, h);
        assert!(
            d <= 1e-5,
            "{}: packed vs alone gradients differ by {d:e}",
            p.name
        );
        grad_diff = grad_diff.max(d);
    }
    eprintln!("packed vs alone: losses {loss_diff:e}, gradients {grad_diff:e} (max relative)");
    assert!(loss_diff <= 1e-5, "losses differ by {loss_diff:e}");
    assert!(packed.iter().all(|l| l.is_finite()));
    assert_eq!(
        gpt.params()[1].name == "transformer.wpe.weight",
        cfg.llama.is_none()
    );
    (cfg, packed_grads)
}

#[test]
fn one_document_per_row_is_the_unpacked_forward_bit_for_bit() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (2, cfg.max_seq_len);
    let mut gpt: Gpt = perturbed_model(&mut be, cfg.clone(), 43);
    let x = tokens(b * t, cfg.vocab_size, 7);
    let y = tokens(b * t, cfg.vocab_size, 8);
    let w: Vec<f32> = (0..b * t).map(|i| 0.1 * i as f32 - 0.5).collect();
    gpt.zero_grad(&mut be).unwrap();
    let plain = gpt.forward_token_losses(&mut be, &x, &y, b, t).unwrap();
    gpt.backward_weighted(&mut be, &w).unwrap();
    let plain_grads = gpt.read_grads(&mut be).unwrap();
    gpt.zero_grad(&mut be).unwrap();
    let packing = Packing::from_segments(vec![5; b * t], t);
    let packed = gpt
        .forward_token_losses_packed(&mut be, &x, &y, &packing, b, t)
        .unwrap();
    gpt.backward_weighted(&mut be, &w).unwrap();
    let packed_grads = gpt.read_grads(&mut be).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&plain), bits(&packed));
    for (g, h) in plain_grads.iter().zip(&packed_grads) {
        assert_eq!(bits(g), bits(h));
    }
}

#[test]
fn bad_packing_is_an_input_error() {
    let mut be = backend();
    let cfg = tiny_config();
    let (b, t) = (1, 4);
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 44);
    let x = tokens(b * t, cfg.vocab_size, 9);
    let short = Packing {
        positions: vec![0, 1, 2],
        segments: vec![0; 4],
    };
    let r = gpt.forward_token_losses_packed(&mut be, &x, &x, &short, b, t);
    assert!(
        matches!(r, Err(ModelError::Input(ref m)) if m.contains("3 positions")),
        "{r:?}"
    );
    let far = Packing {
        positions: vec![0, 1, 2, cfg.max_seq_len as u32],
        segments: vec![0; 4],
    };
    let r = gpt.forward_token_losses_packed(&mut be, &x, &x, &far, b, t);
    assert!(
        matches!(r, Err(ModelError::Input(ref m)) if m.contains("max_seq_len")),
        "{r:?}"
    );
    // A failed forward leaves nothing to backward.
    assert!(gpt.backward_weighted(&mut be, &[0.0; 4]).is_err());
}
