//! Exactness of tensor parallelism against the single-process model, on
//! CPU backends, one thread per rank over `ThreadComm`.

use std::time::Duration;

use kiln_abi::{BackendBox, BackendExt, IntoBResult};
use kiln_model::{Gpt, GptConfig, Rng};

use super::*;
use crate::comm::ThreadComm;

const B: usize = 2;
const T: usize = 8;

fn backend() -> BackendBox {
    kiln_tensor::cpu_backend(Some(1))
}

/// 2 layers, C = 32, 4 heads, V = 65 (padded to 128): with tp = 4 rank 2
/// holds one real vocabulary row and rank 3 only padding, the edge cases
/// of the vocab split.
fn config() -> GptConfig {
    GptConfig::new(65, T, 2, 4, 32)
}

/// Gpt-2 init from `seed`, then noise on every element, so biases and
/// LayerNorms are not at their special starting values.
fn full_values(cfg: &GptConfig, seed: u64) -> Vec<Vec<f32>> {
    let mut be = backend();
    let gpt = Gpt::new(&mut be, cfg.clone(), seed).unwrap();
    let mut v = gpt.read_params(&mut be).unwrap();
    gpt.release(&mut be).unwrap();
    let mut rng = Rng::new(seed ^ 0x5eed);
    for x in v.iter_mut().flatten() {
        *x += 0.05 * rng.normal();
    }
    v
}

fn random_ids(n: usize, below: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_u64() % below as u64) as u32)
        .collect()
}

/// Two batches; the second ignores some targets (`u32::MAX` and `>= V`).
fn batches(cfg: &GptConfig) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(7);
    let v = cfg.vocab_size;
    let first = (
        random_ids(B * T, v, &mut rng),
        random_ids(B * T, v, &mut rng),
    );
    let (tokens, mut targets) = (
        random_ids(B * T, v, &mut rng),
        random_ids(B * T, v, &mut rng),
    );
    targets[3] = u32::MAX;
    targets[B * T - 1] = v as u32;
    // Tokens and targets in the last real row (owned by rank 2 of 4).
    targets[5] = v as u32 - 1;
    let mut tokens = tokens;
    tokens[6] = v as u32 - 1;
    vec![first, (tokens, targets)]
}

/// (loss, gradients) after each batch; gradients accumulate (no zero_grad).
type Steps = Vec<(f32, Vec<Vec<f32>>)>;

fn single_process(cfg: &GptConfig, full: &[Vec<f32>]) -> Steps {
    let mut be = backend();
    let mut gpt = Gpt::new(&mut be, cfg.clone(), 0).unwrap();
    gpt.write_params(&mut be, full).unwrap();
    let out = batches(cfg)
        .iter()
        .map(|(tok, tgt)| {
            let loss = gpt.forward(&mut be, tok, Some(tgt), B, T).unwrap().unwrap();
            gpt.backward(&mut be, 1.0).unwrap();
            (loss, gpt.read_grads(&mut be).unwrap())
        })
        .collect();
    gpt.release(&mut be).unwrap();
    out
}

/// Every rank's steps (local gradients), ranks as threads.
fn tensor_parallel(cfg: &GptConfig, full: &[Vec<f32>], tp: usize) -> Vec<Steps> {
    let comms = ThreadComm::group(tp, Duration::from_secs(120));
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                s.spawn(move || {
                    let mut be = backend();
                    let mut m = TpGpt::from_full(&mut be, cfg.clone(), tp, rank, full).unwrap();
                    let out = batches(cfg)
                        .iter()
                        .map(|(tok, tgt)| {
                            let loss = m.forward(&mut be, &mut comm, tok, tgt, B, T).unwrap();
                            m.backward(&mut be, &mut comm, 1.0).unwrap();
                            (loss, m.read_grads(&mut be).unwrap())
                        })
                        .collect::<Steps>();
                    m.release(&mut be).unwrap();
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `max |a - b| / max |b|` (0 when both are all zero).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn check_exact(tp: usize) {
    let cfg = config();
    let full = full_values(&cfg, 42);
    let reference = single_process(&cfg, &full);
    let ranks = tensor_parallel(&cfg, &full, tp);
    let layouts = param_layouts(&cfg);
    let (mut worst_loss, mut worst_grad) = (0f32, 0f32);
    for (step, (ref_loss, ref_grads)) in reference.iter().enumerate() {
        let loss = ranks[0][step].0;
        for r in &ranks {
            assert_eq!(
                r[step].0.to_bits(),
                loss.to_bits(),
                "ranks disagree on the loss"
            );
        }
        let e = (loss - ref_loss).abs() / ref_loss.abs();
        assert!(e <= 1e-5, "tp={tp} step {step}: loss {loss} vs {ref_loss}");
        worst_loss = worst_loss.max(e);

        // Replicated parameters: bit-identical gradients on every rank.
        for (i, l) in layouts.iter().enumerate() {
            if l.split == Split::Replicated {
                for (rank, r) in ranks.iter().enumerate() {
                    let same = r[step].1[i]
                        .iter()
                        .zip(&ranks[0][step].1[i])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "tp={tp}: rank {rank}'s grad of {} differs", l.name);
                }
            }
        }
        let shards: Vec<Vec<Vec<f32>>> = ranks.iter().map(|r| r[step].1.clone()).collect();
        let gathered = gather_params(&cfg, &shards).unwrap();
        for ((l, got), want) in layouts.iter().zip(&gathered).zip(ref_grads) {
            assert!(want.iter().any(|&x| x != 0.0), "{} has no gradient", l.name);
            let e = rel_err(got, want);
            assert!(
                e <= 1e-5,
                "tp={tp} step {step}: grad of {} off by {e:e}",
                l.name
            );
            worst_grad = worst_grad.max(e);
        }
    }
    println!("tp={tp}: max relative error loss {worst_loss:e}, gradients {worst_grad:e}");
}

#[test]
fn tp1_matches_single_process() {
    check_exact(1);
}

#[test]
fn tp2_matches_single_process() {
    check_exact(2);
}

#[test]
fn tp4_matches_single_process() {
    check_exact(4);
}

#[test]
fn param_layouts_match_the_model() {
    let cfg = config();
    let mut be = backend();
    let gpt = Gpt::new(&mut be, cfg.clone(), 1).unwrap();
    let layouts = param_layouts(&cfg);
    assert_eq!(layouts.len(), gpt.params().len());
    for (l, p) in layouts.iter().zip(gpt.params()) {
        assert_eq!((&l.name, &l.shape), (&p.name, &p.shape));
    }
    gpt.release(&mut be).unwrap();
}

#[test]
fn shard_gather_round_trip_is_bitwise() {
    let cfg = config();
    let (c, layouts) = (cfg.n_embd, param_layouts(&cfg));
    let mut rng = Rng::new(3);
    let full: Vec<Vec<f32>> = layouts
        .iter()
        .map(|l| (0..l.full_len()).map(|_| rng.normal()).collect())
        .collect();
    let qkv = layouts
        .iter()
        .position(|l| l.name == "transformer.h.1.attn.c_attn.weight")
        .unwrap();
    let proj = layouts
        .iter()
        .position(|l| l.name == "transformer.h.1.mlp.c_proj.weight")
        .unwrap();
    for tp in [1, 2, 4] {
        let shards = shard_params(&cfg, tp, &full).unwrap();
        for (rank, s) in shards.iter().enumerate() {
            for (l, v) in layouts.iter().zip(s) {
                assert_eq!(v.len(), l.local_shape(tp).iter().product::<usize>());
            }
            // Local q|k|v: this rank's heads of q, then of k, then of v.
            let n = c / tp;
            for blk in 0..3 {
                for i in 0..n {
                    let local = &s[qkv][(blk * n + i) * c..(blk * n + i + 1) * c];
                    let row = blk * c + rank * n + i;
                    assert_eq!(local, &full[qkv][row * c..(row + 1) * c]);
                }
            }
            // c_proj (row-parallel): this rank's columns of every row.
            let w = 4 * c / tp;
            for row in 0..c {
                let local = &s[proj][row * w..(row + 1) * w];
                let cols = row * 4 * c + rank * w;
                assert_eq!(local, &full[proj][cols..cols + w]);
            }
        }
        let back = gather_params(&cfg, &shards).unwrap();
        for ((l, a), b) in layouts.iter().zip(&back).zip(&full) {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "tp={tp}: {} does not round-trip", l.name);
        }
    }
}

/// The vocab-parallel loss and gradient against the backend's fused
/// cross-entropy on the whole `[rows, Vp]`.
#[test]
fn vocab_parallel_ce_matches_dense() {
    let (v, vp, tp) = (37usize, 64usize, 4usize);
    let mut rng = Rng::new(11);
    // Targets across the shards (33 and 36 on rank 2, whose real rows are
    // 32..37; rank 3 holds padding only) and ignored ones.
    let targets: Vec<u32> = vec![0, 15, 16, 33, 36, u32::MAX, v as u32, 63, 20];
    let rows = targets.len();
    let logits: Vec<f32> = (0..rows * vp).map(|_| 3.0 * rng.normal()).collect();
    let weights: Vec<f32> = (0..rows).map(|_| rng.next_f32() + 0.5).collect();

    let mut be = backend();
    let (lg, tg) = (
        be.from_f32(&logits).unwrap(),
        be.from_u32(&targets).unwrap(),
    );
    let (losses, lse) = (
        be.from_f32(&vec![0.0; rows]).unwrap(),
        be.from_f32(&vec![0.0; rows]).unwrap(),
    );
    let dl = be.from_f32(&weights).unwrap();
    let dlogits = be.from_f32(&vec![0.0; rows * vp]).unwrap();
    be.crossentropy_forward(losses, lse, lg, tg, rows, v, vp)
        .ok_or_err()
        .unwrap();
    be.crossentropy_backward(dlogits, lg, lse, tg, dl, rows, v, vp)
        .ok_or_err()
        .unwrap();
    let dense_losses = be.download_f32(losses).unwrap();
    let dense_d = be.download_f32(dlogits).unwrap();

    let comms = ThreadComm::group(tp, Duration::from_secs(60));
    let results: Vec<(VocabShard, VocabCe, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                let (logits, targets, weights) = (&logits, &targets, &weights);
                s.spawn(move || {
                    let shard = VocabShard::new(v, vp, tp, rank);
                    let local: Vec<f32> = logits
                        .chunks(vp)
                        .flat_map(|row| &row[shard.start..shard.start + shard.len])
                        .copied()
                        .collect();
                    let ce =
                        vocab_parallel_ce_forward(&mut comm, shard, &local, targets, v).unwrap();
                    let d = vocab_parallel_ce_backward(shard, &local, &ce.lse, targets, weights, v);
                    (shard, ce, d)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[3].0.real, 0);
    for (shard, ce, d) in &results {
        assert_eq!(ce, &results[0].1, "every rank gets the same losses");
        for (i, (a, b)) in ce.losses.iter().zip(&dense_losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "row {i}: {a} vs {b}"
            );
            if targets[i] as usize >= v {
                assert_eq!(*a, 0.0, "ignored row {i}");
            }
        }
        for r in 0..rows {
            for j in 0..shard.len {
                let (a, b) = (d[r * shard.len + j], dense_d[r * vp + shard.start + j]);
                assert!(
                    (a - b).abs() <= 1e-6,
                    "dlogits[{r}, {}]: {a} vs {b}",
                    shard.start + j
                );
            }
        }
    }
}

#[test]
fn layouts_that_do_not_split_are_refused() {
    let cfg = config();
    let msg = |r: Result<(), TpError>| r.unwrap_err().to_string();
    assert!(msg(check_layout(&cfg, 3)).contains("n_head (4) is not divisible by tp (3)"));
    assert!(msg(check_layout(&cfg, 0)).contains("tp must be at least 1"));
    let mut odd_vocab = cfg.clone();
    odd_vocab.padded_vocab_size = 66;
    assert!(msg(check_layout(&odd_vocab, 4)).contains("padded_vocab_size (66)"));
    let llama = GptConfig::new_llama(kiln_model::LlamaFamily::Llama, 64, 8, 1, 4, 4, 32, 64, true);
    assert!(msg(check_layout(&llama, 2)).contains("only GPT-2"));

    // The constructors and shard_params refuse them too.
    let full = full_values(&cfg, 1);
    assert!(matches!(
        shard_params(&cfg, 3, &full),
        Err(TpError::Layout(_))
    ));
    let mut be = backend();
    let e = TpGpt::from_full(&mut be, cfg.clone(), 3, 0, &full)
        .err()
        .unwrap();
    assert!(e.to_string().contains("n_head"), "{e}");
    // A shard of the wrong size.
    let mut shards = shard_params(&cfg, 2, &full).unwrap().remove(0);
    shards[4].pop(); // transformer.h.0.attn.c_attn.weight
    let e = TpGpt::new(&mut be, cfg.clone(), 2, 0, &shards)
        .err()
        .unwrap();
    assert!(e.to_string().contains("attn.c_attn.weight"), "{e}");
}

#[test]
fn a_communicator_of_the_wrong_group_is_refused() {
    let cfg = config();
    let full = full_values(&cfg, 1);
    let mut be = backend();
    let mut m = TpGpt::from_full(&mut be, cfg.clone(), 2, 0, &full).unwrap();
    let mut comm = ThreadComm::group(1, Duration::from_secs(1)).remove(0);
    let tokens = vec![0u32; T];
    let e = m
        .forward(&mut be, &mut comm, &tokens, &tokens, 1, T)
        .unwrap_err();
    assert!(e.to_string().contains("group of 2"), "{e}");
    let e = m.backward(
        &mut be,
        &mut ThreadComm::group(2, Duration::from_secs(1)).remove(0),
        1.0,
    );
    assert!(e.unwrap_err().to_string().contains("needs a forward()"));
    m.release(&mut be).unwrap();
}
