//! Pretraining through kiln-train's API: determinism, learning real text,
//! the non-finite guard. Helpers here are shared with `resume` and `cli`.

use std::path::{Path, PathBuf};

use kiln_train::metrics::{read_metrics, StepRecord};
use kiln_train::{Init, Quiet, TrainConfig, TrainError, Trainer};

/// The public-domain English text the tests train on (byte-level tokens).
pub fn fixture_text() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/text/kjv_excerpt.txt");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Writes an llm.c token shard (v1, u16 tokens) by hand, independent of
/// kiln-data's writer.
pub fn write_shard(path: &Path, tokens: &[u32]) {
    let mut bytes = Vec::with_capacity(1024 + 2 * tokens.len());
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = tokens.len() as i32;
    for h in header {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    for &t in tokens {
        bytes.extend_from_slice(&(t as u16).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// `dir/train.bin` (first 90% of the text) and `dir/val.bin` (the rest).
pub fn byte_shards(dir: &Path) -> (PathBuf, PathBuf) {
    let text = fixture_text();
    let cut = text.len() * 9 / 10;
    let tokens: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    let (train, val) = (dir.join("train.bin"), dir.join("val.bin"));
    write_shard(&train, &tokens[..cut]);
    write_shard(&val, &tokens[cut..]);
    (train, val)
}

/// A tiny-model config for fast tests.
pub fn tiny_config(steps: u64) -> TrainConfig {
    let mut c = TrainConfig::with_model("tiny", 256, 32);
    c.steps = steps;
    c.batch_size = 4;
    c.lr = 3e-3;
    c.min_lr = 3e-4;
    c.warmup = 3;
    c.seed = 42;
    c
}

pub fn train(config: TrainConfig, data: &Path, run: &Path) -> Vec<StepRecord> {
    let be = kiln_tensor::cpu_backend(Some(2));
    let mut t = Trainer::start(be, config, data, run, Init::Preset).unwrap();
    t.run(&mut Quiet).unwrap();
    read_metrics(&run.join("metrics.jsonl")).unwrap()
}

pub fn loss_bits(records: &[StepRecord]) -> Vec<(u64, u32, u32)> {
    records
        .iter()
        .map(|r| (r.step, r.loss.to_bits(), r.grad_norm.to_bits()))
        .collect()
}

#[test]
fn same_seed_gives_identical_losses_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let mut c = tiny_config(6);
    c.grad_accum = 2;
    let a = train(c.clone(), &data, &dir.path().join("a"));
    let b = train(c.clone(), &data, &dir.path().join("b"));
    assert_eq!(a.len(), 6);
    assert_eq!(loss_bits(&a), loss_bits(&b));
    // and the seed matters
    c.seed = 43;
    let other = train(c, &data, &dir.path().join("c"));
    assert_ne!(loss_bits(&a), loss_bits(&other));
    // a checkpoint at the end, named by its 8-digit step
    let ck = dir.path().join("a/checkpoints/step_00000006");
    for f in [
        "model.safetensors",
        "config.json",
        "training_state.safetensors",
    ] {
        assert!(ck.join(f).is_file(), "{f} missing in {}", ck.display());
    }
}

/// Unigram entropy of the bytes, in nats: the loss of the best model that
/// ignores context.
fn unigram_entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

#[test]
fn tiny_model_learns_text_well_below_unigram_entropy() {
    let dir = tempfile::tempdir().unwrap();
    let (data, val) = byte_shards(dir.path());
    let text = fixture_text();
    let unigram = unigram_entropy(&text[..text.len() * 9 / 10]);
    let mut c = tiny_config(300);
    c.seq_len = 64;
    c.batch_size = 8;
    c.warmup = 20;
    c.lr = 4e-3;
    c.min_lr = 4e-4;
    let be = kiln_tensor::cpu_backend(Some(2));
    let run = dir.path().join("run");
    let mut t = Trainer::start(be, c, &data, &run, Init::Preset).unwrap();
    t.run(&mut Quiet).unwrap();
    let (model, be) = t.model_mut().expect("one process holds the whole model");
    let r = kiln_train::eval::evaluate(be, model, &val, 64, 16).unwrap();
    eprintln!(
        "unigram entropy {unigram:.3} nats, held-out loss {:.3}",
        r.loss
    );
    assert!(
        r.loss < unigram - 0.5,
        "held-out loss {} not well below the unigram entropy {unigram}",
        r.loss
    );
    assert_eq!(r.tokens, ((val_len(&text) - 1) / 64 * 64) as u64);
    assert!((r.ppl - r.loss.exp()).abs() < 1e-9);
}

fn val_len(text: &[u8]) -> usize {
    text.len() - text.len() * 9 / 10
}

#[test]
fn diverging_run_skips_then_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let mut c = tiny_config(40);
    // A learning rate this large blows the weights up within a few steps.
    c.lr = 1e30;
    c.min_lr = 1e30;
    c.warmup = 0;
    c.grad_clip = None;
    c.max_bad_steps = 3;
    let be = kiln_tensor::cpu_backend(Some(2));
    let run = dir.path().join("run");
    let mut t = Trainer::start(be, c, &data, &run, Init::Preset).unwrap();
    let err = t.run(&mut Quiet).unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { limit: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("lower --lr"), "{err}");
    let recs = read_metrics(&run.join("metrics.jsonl")).unwrap();
    // the two skipped steps before the stop are logged as skipped
    let skipped: Vec<u64> = recs.iter().filter(|r| r.skipped).map(|r| r.step).collect();
    assert_eq!(skipped.len(), 2, "{recs:?}");
}
