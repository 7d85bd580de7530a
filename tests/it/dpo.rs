//! Preference optimisation (kiln-align::dpo, `kiln dpo`):
//! - loss, summed completion log-probs and parameter gradients against
//!   PyTorch + transformers on the tiny GPT-2 (tests/fixtures/dpo,
//!   scripts/make_dpo_fixtures.py), tolerance as in gpt2_reference.rs:
//!   `|kiln - torch| <= 1e-5 * max_abs(torch)` per tensor;
//! - step 0 (policy == reference): loss ln 2, rewards 0; a few steps raise
//!   accuracies and margins on the training pairs;
//!
//! The CLI is tested in dpo_cli.rs.

use std::path::{Path, PathBuf};

use kiln_abi::BackendBox;
use kiln_align::data::EncodedPair;
use kiln_align::dpo::{accumulate_gradients, pair_logps, train, DpoConfig, PairRef};
use kiln_align::loss::dpo::PreferenceLoss;
use kiln_align::metrics::{read_metrics, Progress};
use kiln_model::{Gpt, Param};
use safetensors::{Dtype, SafeTensors};

const TOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn backend() -> BackendBox {
    kiln_tensor::cpu_backend(Some(2))
}

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Self {
        let path = fixtures().join("dpo/model.safetensors");
        Fixture(std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run scripts/make_dpo_fixtures.py", path.display())
        }))
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture lacks {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }
    fn names(&self) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.names().into_iter().map(String::from).collect()
    }
    fn pairs(&self) -> Vec<EncodedPair> {
        (0..2)
            .map(|i| EncodedPair {
                prompt: self.ids(&format!("pair{i}.prompt")),
                chosen: self.ids(&format!("pair{i}.chosen")),
                rejected: self.ids(&format!("pair{i}.rejected")),
            })
            .collect()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let mut worst = (0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        if d > worst.0 || d.is_nan() {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 <= TOL * scale,
        "{what}: element {} differs by {:.3e} (kiln {}, torch {}), allowed {:.3e}",
        worst.1,
        worst.0,
        got[worst.1],
        want[worst.1],
        TOL * scale
    );
    worst.0 / scale
}

/// A kiln tensor in the HF layout: Conv1D weights transposed, wte cut to the real vocabulary.
fn to_hf_layout(p: &Param, v: &[f32], vocab: usize) -> Vec<f32> {
    let conv1d = ["c_attn.weight", "c_proj.weight", "c_fc.weight"];
    if conv1d.iter().any(|s| p.name.ends_with(s)) {
        let (rows, cols) = (p.shape[0], p.shape[1]);
        let mut out = vec![0.0; v.len()];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = v[r * cols + c];
            }
        }
        out
    } else if p.name == "transformer.wte.weight" {
        v[..vocab * p.shape[1]].to_vec()
    } else {
        v.to_vec()
    }
}

fn load_tiny(be: &mut BackendBox) -> Gpt {
    Gpt::load_pretrained(be, &fixtures().join("gpt2_tiny/model")).unwrap()
}

#[test]
fn dpo_loss_logps_and_gradients_match_pytorch() {
    let mut be = backend();
    let fx = Fixture::load();
    let pairs = fx.pairs();

    // The reference: the tiny GPT-2 with the fixture's perturbed tensors.
    let mut reference = load_tiny(&mut be);
    let mut values = reference.read_params(&mut be).unwrap();
    let mut perturbed = 0;
    for (p, v) in reference.params().iter().zip(values.iter_mut()) {
        let key = format!("ref.{}", p.name);
        if fx.names().contains(&key) {
            *v = fx.f32s(&key);
            perturbed += 1;
        }
    }
    assert_eq!(perturbed, 3);
    reference.write_params(&mut be, &values).unwrap();
    let refs: Vec<PairRef> = pair_logps(&mut reference, &mut be, &pairs, 0, 8).unwrap();
    let flat = |v: &[PairRef]| v.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>();
    let e_ref = assert_close("reference log-probs", &flat(&refs), &fx.f32s("ref_logps"));

    // Reference log-probs from torch, as a cache would hold them; policy
    // log-probs, loss and gradients from kiln.
    let mut policy = load_tiny(&mut be);
    policy.zero_grad(&mut be).unwrap();
    let torch_refs: Vec<PairRef> = fx
        .f32s("ref_logps")
        .chunks(2)
        .map(|c| [c[0] as f64, c[1] as f64])
        .collect();
    let views: Vec<&EncodedPair> = pairs.iter().collect();
    let (out, logps) = accumulate_gradients(
        &mut policy,
        &mut be,
        &views,
        &torch_refs,
        PreferenceLoss::Sigmoid,
        0.5,
        0.0,
        0,
        1.0,
    )
    .unwrap();
    let logps: Vec<f32> = logps.iter().map(|&x| x as f32).collect();
    let e_pol = assert_close("policy log-probs", &logps, &fx.f32s("policy_logps"));
    let want_loss = fx.f32s("loss")[0] as f64;
    let e_loss = (out.loss - want_loss).abs() / want_loss;
    assert!(e_loss <= TOL, "loss {} vs torch {want_loss}", out.loss);

    let grads = policy.read_grads(&mut be).unwrap();
    let mut checked = 0;
    let mut e_grad = 0f64;
    for (p, g) in policy.params().iter().zip(&grads) {
        let key = format!("grad.{}", p.name);
        if fx.names().contains(&key) {
            let e = assert_close(&key, &to_hf_layout(p, g, 301), &fx.f32s(&key));
            e_grad = e_grad.max(e);
            checked += 1;
        }
    }
    assert_eq!(checked, 9, "every gradient in the fixture was compared");
    eprintln!(
        "dpo vs torch (x max_abs): ref logps {e_ref:.1e}, policy logps {e_pol:.1e}, \
         loss {e_loss:.1e} (relative), grads {e_grad:.1e}"
    );
}

/// Pairs over the tiny GPT-2's vocabulary: the chosen completions repeat
/// the prompt's last token, the rejected ones are other tokens.
fn synthetic_pairs(n: usize) -> Vec<EncodedPair> {
    (0..n as u32)
        .map(|i| {
            let prompt = vec![1 + i, 40 + 3 * i, 90 + i];
            EncodedPair {
                chosen: vec![7, 7 + i, 0],
                rejected: vec![200 + i, 150, 120 + 2 * i, 0],
                prompt,
            }
        })
        .collect()
}

#[test]
fn step_zero_loss_is_ln2_and_training_raises_accuracy_and_margins() {
    let mut be = backend();
    let pairs = synthetic_pairs(6);
    let mut reference = load_tiny(&mut be);
    // Reference computed one pair per forward, training uses 3: padding and
    // batch composition must not move the step-0 loss off ln 2.
    let refs = pair_logps(&mut reference, &mut be, &pairs, 0, 1).unwrap();
    reference.release(&mut be).unwrap();
    let mut policy = load_tiny(&mut be);
    let cfg = DpoConfig {
        steps: Some(8),
        batch_size: 6,
        micro_batch: 3,
        lr: 3e-3,
        min_lr: 3e-3,
        ..DpoConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut log = kiln_align::metrics::MetricsLog::create(&dir.path().join("m.jsonl")).unwrap();
    let summary = train(
        &mut be,
        &mut policy,
        &pairs,
        &refs,
        0,
        &cfg,
        Some(&mut log),
        &Progress::hidden("dpo", 8),
    )
    .unwrap();
    let ln2 = std::f64::consts::LN_2;
    assert!(
        (summary.first_loss - ln2).abs() < 1e-6,
        "{}",
        summary.first_loss
    );
    assert!((summary.before.loss - ln2).abs() < 1e-6);
    assert!(summary.before.rewards_chosen.abs() < 1e-6);
    assert!(summary.before.rewards_margins.abs() < 1e-6);
    assert_eq!(summary.before.rewards_accuracies, 0.0);
    assert!(
        summary.after.rewards_accuracies >= 5.0 / 6.0,
        "{:?}",
        summary.after
    );
    assert!(summary.after.rewards_margins > 0.05, "{:?}", summary.after);
    assert!(summary.last_loss < ln2 - 0.02, "{}", summary.last_loss);

    let records = read_metrics(&dir.path().join("m.jsonl")).unwrap();
    let train_records: Vec<_> = records.iter().filter(|r| r.split == "train").collect();
    assert_eq!(train_records.len(), 8);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "grad_norm",
        "lr",
    ] {
        assert!(train_records[0].get(key).is_some(), "metrics lack {key}");
    }
    assert!((train_records[0].get("loss").unwrap() - ln2).abs() < 1e-6);
}
