//! Data-parallel exactness of the alignment stages: N thread ranks at batch
//! B log the same losses (every step, and the held-out ones) as one process
//! at batch N·B (SFT and DPO within 1e-6 relative; reward within 1e-4
//! absolute: f32 summation order amplified by AdamW, measured at
//! `reward_on_2_ranks_matches_one_process_at_the_global_batch`) and end
//! with the same weights.

use std::time::Duration;

use kiln_abi::BackendBox;
use kiln_parallel::comm::{Communicator, ThreadComm};
use kiln_parallel::data_parallel::{DataParallel, Zero};
use kiln_tokenizer::chat::Message;
use kiln_tokenizer::EncodedChat;

use crate::data::EncodedPair;
use crate::dpo::{pair_logps, DpoConfig};
use crate::metrics::{read_metrics, MetricsLog, Progress, Record};
use crate::policy::Policy;
use crate::replicas::Replicas;
use crate::reward::{RewardConfig, RewardExample, RewardModel};
use crate::sft::SftConfig;
use crate::testutil::tiny_policy;

/// What a run logged (rank 0's records) and its final weights.
struct Run {
    records: Vec<Record>,
    weights: Vec<f32>,
}

/// Runs `train` on `world` thread ranks (one backend and one copy of the
/// model each; world 1 is a plain single process) and returns rank 0's.
fn run(
    world: usize,
    train: impl Fn(&mut BackendBox, Replicas, Option<&mut MetricsLog>) -> Vec<f32> + Sync,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let weights: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = ThreadComm::group(world, Duration::from_secs(60))
            .into_iter()
            .map(|comm| {
                let (train, path) = (&train, &path);
                s.spawn(move || {
                    let rank = comm.rank();
                    let mut be = kiln_tensor::cpu_backend(Some(1));
                    let replicas = if world == 1 {
                        Replicas::single()
                    } else {
                        Replicas::of(
                            DataParallel::new(Box::new(comm), Zero::Off).with_bucket_bytes(4096),
                        )
                        .unwrap()
                    };
                    let mut log = (rank == 0).then(|| MetricsLog::create(path).unwrap());
                    train(&mut be, replicas, log.as_mut())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every rank ends with the same weights.
    assert!(weights.iter().all(|w| w == &weights[0]), "ranks diverged");
    Run {
        records: read_metrics(&path).unwrap(),
        weights: weights.into_iter().next().unwrap(),
    }
}

/// Absolute bound on the `differences` figures. The reward run drifts to
/// 1.3e-5 by step 4 (its first steps agree to 1e-7): summation order, not a
/// data-parallel difference; see the measurements at the reward test.
const DIFF_TOL: f64 = 1e-4;

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

/// The N-rank run logged the single process's figures: same steps, every
/// `keys` value within 1e-6 relative, every `differences` value (margins:
/// differences of rewards, where rounding cancels less) within
/// [`DIFF_TOL`] absolute; the weights within 1e-4 of their largest.
fn assert_same(single: &Run, parallel: &Run, keys: &[&str], differences: &[&str]) {
    assert_eq!(single.records.len(), parallel.records.len());
    assert!(single.records.len() >= 4, "too short a run to compare");
    for (a, b) in single.records.iter().zip(&parallel.records) {
        assert_eq!((a.step, &a.split), (b.step, &b.split));
        for k in keys {
            if let (Some(x), Some(y)) = (a.get(k), b.get(k)) {
                assert!(
                    rel(x, y) < 1e-6,
                    "step {} {} {k}: one process {x}, data parallel {y}",
                    a.step,
                    a.split
                );
            }
        }
        for k in differences {
            if let (Some(x), Some(y)) = (a.get(k), b.get(k)) {
                assert!((x - y).abs() < DIFF_TOL, "step {} {k}: {x} vs {y}", a.step);
            }
        }
    }
    crate::testutil::close(&single.weights, &parallel.weights, 1e-4).unwrap();
}

fn policy(be: &mut BackendBox) -> Policy {
    tiny_policy(be, 11, 48)
}

fn weights(be: &mut BackendBox, policy: &Policy) -> Vec<f32> {
    policy.model.read_params(be).unwrap().concat()
}

const QA: [(&str, &str, &str); 7] = [
    ("What is the capital of France?", "Paris.", "Rome, I think."),
    ("Name a red fruit.", "An apple.", "A banana is red."),
    ("How many legs does a cat have?", "Four legs.", "Two."),
    ("Say hello.", "Hello there, friend!", "No."),
    ("Count to three.", "One, two, three.", "One, three."),
    (
        "Is the sun warm?",
        "Yes, the sun is warm.",
        "The sun is cold.",
    ),
    ("Is rain cold?", "Rain is cold.", "Rain is bright and good."),
];

fn chats(p: &Policy) -> Vec<EncodedChat> {
    QA.iter()
        .map(|(q, a, _)| {
            p.template
                .encode(&p.tokenizer, &[Message::user(*q), Message::assistant(*a)])
                .unwrap()
        })
        .collect()
}

fn pairs(p: &Policy) -> Vec<EncodedPair> {
    let ids = |s: &str| p.tokenizer.encode_ordinary(s);
    QA.iter()
        .map(|(q, a, b)| EncodedPair {
            prompt: ids(q),
            chosen: ids(a),
            rejected: ids(b),
        })
        .collect()
}

#[test]
fn sft_on_2_and_4_ranks_matches_one_process_at_the_global_batch() {
    let sft = |world: usize| {
        run(world, |be, replicas, log| {
            let mut p = policy(be);
            let all = chats(&p);
            // 7 chats, 5 train: steps of 4 then 1 (a rank with no chat).
            let (train, eval) = (&all[..5], &all[5..]);
            let config = SftConfig {
                epochs: 3,
                batch_size: 4 / world,
                lr: 3e-3,
                warmup: 1,
                eval_every: 2,
                ..SftConfig::default()
            };
            let progress = Progress::hidden("sft", 6);
            crate::sft::train_sft_across(
                be, &mut p, train, eval, &config, log, &progress, replicas,
            )
            .unwrap();
            weights(be, &p)
        })
    };
    let single = sft(1);
    for world in [2, 4] {
        assert_same(
            &single,
            &sft(world),
            &["loss", "grad_norm", "tokens", "rows"],
            &[],
        );
    }
}

#[test]
fn reward_on_2_ranks_matches_one_process_at_the_global_batch() {
    let reward = |world: usize| {
        run(world, |be, replicas, log| {
            let p = policy(be);
            let examples: Vec<RewardExample> = pairs(&p)
                .into_iter()
                .enumerate()
                .map(|(i, pair)| RewardExample {
                    pair,
                    margin: (i % 2 == 0).then_some(0.25),
                })
                .collect();
            let mut rm = RewardModel::from_policy(be, p, 5).unwrap();
            let config = RewardConfig {
                epochs: 3,
                batch_size: 4 / world,
                lr: 1e-3,
                warmup: 1,
                center_coef: 0.01,
                eval_every: 2,
                ..RewardConfig::default()
            };
            let progress = Progress::hidden("reward", 6);
            let (train, eval) = examples.split_at(5);
            crate::reward::train_reward_across(
                be, &mut rm, train, eval, &config, log, &progress, replicas,
            )
            .unwrap();
            let mut w = rm.model().read_params(be).unwrap().concat();
            w.extend(rm.head(be).unwrap().0);
            w
        })
    };
    // Not the 1e-6 relative of SFT and DPO: loss, margin and rewards/chosen
    // are held to DIFF_TOL (1e-4) absolute, grad_norm only through the
    // weights. The drift is f32 summation order amplified by AdamW, not a
    // difference in what the ranks compute. Measured (2 ranks at 2 vs one
    // process at 4):
    // - The forward is bit-identical (a pair scores the same bits alone, in
    //   2 or in 4; padding changes nothing): step 1's loss and grad norm
    //   agree exactly.
    // - Step 1's summed gradients: 2.8e-7 relative over all parameters;
    //   head.w 3.9e-8, head.b bit-identical, wte 7.6e-8 (norms of the
    //   difference over the norm). The worst tensors (max difference over
    //   max element) are ln_f.bias 1.9e-6 (7.5e-9 absolute: the chosen and
    //   rejected terms nearly cancel), h.0.mlp.c_proj.bias 1.8e-6 and
    //   h.0.attn.c_proj.bias 1.2e-6; 13 of 123,713 elements flip sign.
    // - The amplifier: step 1's grad norm is 25.9 against a clip of 1, so
    //   many clipped elements are near AdamW's eps (1e-8), where the first
    //   update lr·g/(|g| + eps) follows small relative changes of g.
    //   h.0.mlp.c_proj.weight[5182] has -3.494e-7 vs -3.353e-7 (1.4e-8
    //   absolute, 2e-8 of that tensor's largest): its weight differs by
    //   1.0e-5 after step 1, the run's largest weight difference (1.01e-5
    //   at the end).
    // - Step 2 is one pair, all on rank 0: the same computation as the one
    //   process, so its differences (loss 1.7e-7, margin 3.9e-6 relative;
    //   grad norm 67.6) come from step 1's weights alone.
    // - Growth, relative loss / grad_norm per step: 0/0, 1.7e-7/0,
    //   2.1e-6/2.1e-6, 5.1e-6/2.5e-6, 2.7e-6/1.1e-5, 3.8e-6/2.2e-6; held-out
    //   rewards/chosen absolute at steps 0/2/4/6: 2.2e-8, 3.2e-6, 1.3e-5,
    //   5.0e-6.
    // - One process at batch 2 with grad_accum 2 (no data parallelism)
    //   drifts from one process at batch 4 just as much (rewards/chosen
    //   5.0e-5 relative, grad_norm 1.1e-5, weights 1.0e-5), while 2 ranks
    //   stay within 1.3e-6 relative of it (weights 2.5e-6): the ranks
    //   compute what gradient accumulation does.
    // - With eps 1e-6 the 2 ranks match one process within 5.1e-7 (loss,
    //   grad_norm) and 3.9e-6 (rewards/chosen), weights 5.3e-7.
    // SFT and DPO do not show it: SFT's grad norms are 2.5-5.6 (clip factors
    // of at least 1/5.6), and DPO's test runs micro-batches of one pair, the
    // same micro-batches on one process and on the ranks.
    let keys = ["accuracy"];
    assert_same(
        &reward(1),
        &reward(2),
        &keys,
        &["loss", "margin", "rewards/chosen"],
    );
}

#[test]
fn dpo_on_2_and_4_ranks_matches_one_process_at_the_global_batch() {
    let dpo = |world: usize| {
        run(world, |be, replicas, log| {
            let mut p = policy(be);
            let ps = pairs(&p);
            let pad = p.pad_id();
            // The reference is the policy as it starts.
            let refs = pair_logps(&mut p.model, be, &ps, pad, 3).unwrap();
            let cfg = DpoConfig {
                batch_size: 4 / world,
                micro_batch: 1,
                steps: Some(5),
                lr: 3e-3,
                warmup: 1,
                nll_weight: 0.1,
                ..DpoConfig::default()
            };
            let progress = Progress::hidden("dpo", 5);
            crate::dpo::train_across(
                be,
                &mut p.model,
                &ps,
                &refs,
                pad,
                &cfg,
                log,
                &progress,
                replicas,
            )
            .unwrap();
            weights(be, &p)
        })
    };
    let single = dpo(1);
    let keys = [
        "loss",
        "grad_norm",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ];
    for world in [2, 4] {
        assert_same(&single, &dpo(world), &keys, &["rewards/margins"]);
    }
}
