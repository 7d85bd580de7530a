//! Tensor parallelism through kiln-train's trainer (torchtitan-style: the
//! N-D run against the 1-D control with the same tokens per step): TP=2
//! and 4, and dp x tp = 2 x 2, match one process's losses and gradient
//! norms; checkpoints are whole and resume on any layout; the CLI's
//! `--tp` runs and refuses what it cannot split.

use std::path::Path;
use std::time::Duration;

use kiln_parallel::comm::{Communicator, ProcessGrid, ThreadComm};
use kiln_parallel::data_parallel::{DataParallel, Zero};
use kiln_train::checkpoint::latest_checkpoint;
use kiln_train::metrics::{read_metrics, StepRecord};
use kiln_train::{Init, Quiet, Ranks, TrainConfig, Trainer};

use crate::data_parallel::max_rel_diff;
use crate::train::{byte_shards, tiny_config, train};

/// The bound for tensor and pipeline layouts against one process.
const TOL: f64 = 1e-5;

const TIMEOUT: Duration = Duration::from_secs(120);

fn config(steps: u64, batch: usize) -> TrainConfig {
    let mut c = tiny_config(steps);
    c.batch_size = batch;
    c.checkpoint_every = 0;
    c
}

/// Runs `body` on every rank of a dp x tp thread grid (global rank order).
fn on_grid<R: Send>(dp: usize, tp: usize, body: impl Fn(Ranks) -> R + Sync) -> Vec<R> {
    let grid = ProcessGrid { tp, dp, pp: 1 };
    std::thread::scope(|s| {
        let hs: Vec<_> = ThreadComm::grid(grid, TIMEOUT)
            .into_iter()
            .map(|g| {
                let body = &body;
                s.spawn(move || {
                    let ranks = Ranks {
                        dp: (dp > 1).then(|| DataParallel::new(Box::new(g.dp), Zero::Off)),
                        tp: Some(Box::new(g.tp) as Box<dyn Communicator>),
                    };
                    body(ranks)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A fresh run of `c` (per data-parallel rank batch) on a dp x tp grid.
fn train_grid(dp: usize, tp: usize, c: &TrainConfig, data: &Path, run: &Path) -> Vec<StepRecord> {
    on_grid(dp, tp, |ranks| {
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t = Trainer::start_ranks(be, c.clone(), data, run, Init::Preset, ranks).unwrap();
        t.run(&mut Quiet).unwrap();
    });
    read_metrics(&run.join("metrics.jsonl")).unwrap()
}

#[test]
fn tp_2_and_4_and_dp2_x_tp2_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let mut single = config(6, 4);
    single.grad_accum = 2;
    let want = train(single.clone(), &data, &dir.path().join("one"));
    for (dp, tp) in [(1, 2), (1, 4), (2, 2)] {
        let per_rank = TrainConfig {
            batch_size: 4 / dp,
            ..single.clone()
        };
        let run = dir.path().join(format!("dp{dp}_tp{tp}"));
        let got = train_grid(dp, tp, &per_rank, &data, &run);
        let diff = max_rel_diff(&got, &want);
        eprintln!("dp {dp} x tp {tp}: max relative loss/grad-norm difference {diff:e}");
        assert!(diff <= TOL, "dp {dp} x tp {tp}: {diff:e} > {TOL:e}");
        // one writer: a line per step and a whole checkpoint
        assert_eq!(got.len(), 6);
        let (step, ck) = latest_checkpoint(&run).unwrap().unwrap();
        assert_eq!(step, 6);
        // the checkpoint is a plain HF directory that one process loads
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let model = kiln_model::Gpt::load_pretrained(&mut be, &ck).unwrap();
        assert_eq!(model.config.n_layer, 2);
    }
}

#[test]
fn checkpoints_resume_across_tp_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let straight = train(config(8, 4), &data, &dir.path().join("straight"));

    // tp 2 for 4 steps, one process for 2, tp 4 for the last 2: every hop
    // through a whole checkpoint, resharded on load.
    let run = dir.path().join("hops");
    on_grid(1, 2, |ranks| {
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t =
            Trainer::start_ranks(be, config(8, 4), &data, &run, Init::Preset, ranks).unwrap();
        for _ in 0..4 {
            t.train_step(&mut Quiet).unwrap();
        }
        t.save_checkpoint(&mut Quiet).unwrap();
    });
    let (step, ck) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!(step, 4);
    let be = kiln_tensor::cpu_backend(Some(2));
    let mut t = Trainer::resume(be, config(8, 4), &data, &run, &ck).unwrap();
    for _ in 0..2 {
        t.train_step(&mut Quiet).unwrap();
    }
    t.save_checkpoint(&mut Quiet).unwrap();
    drop(t);
    let (step, ck) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!(step, 6);
    on_grid(1, 4, |ranks| {
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t = Trainer::resume_ranks(be, config(8, 4), &data, &run, &ck, ranks).unwrap();
        t.run(&mut Quiet).unwrap();
    });
    let hopped = read_metrics(&run.join("metrics.jsonl")).unwrap();
    let diff = max_rel_diff(&hopped, &straight);
    eprintln!("tp 2 -> 1 -> tp 4 resumed: max relative difference {diff:e}");
    assert!(diff <= TOL, "{diff:e}");
}

#[test]
fn cli_tp_2_matches_one_process_and_refuses_what_does_not_split() {
    use crate::cli::{kiln, s};
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let pretrain = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "pretrain",
            "--data",
            s(&data),
            "--out",
            s(out),
            "--model",
            "tiny",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--seed",
            "7",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let one = dir.path().join("one");
    let o = pretrain(&one, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let two = dir.path().join("tp2");
    let o = pretrain(&two, &["--tp", "2", "--comm-timeout-s", "60"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("done: 3 steps").count(), 1, "{stdout}");
    // the whole model is read back from the checkpoint for the samples
    assert!(stdout.contains("sample (greedy)"), "{stdout}");
    let diff = max_rel_diff(
        &read_metrics(&two.join("metrics.jsonl")).unwrap(),
        &read_metrics(&one.join("metrics.jsonl")).unwrap(),
    );
    eprintln!("cli --tp 2: max relative difference {diff:e}");
    assert!(diff <= TOL, "{diff:e}");

    // 4 heads do not split over 3 ranks: refused, naming the dimension
    let o = pretrain(&dir.path().join("tp3"), &["--tp", "3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("n_head (4) is not divisible by tp (3)"),
        "{err}"
    );
    // 16-bit is not offered under --tp yet: said, not silently run in f32
    let o = pretrain(
        &dir.path().join("bf16"),
        &["--tp", "2", "--precision", "bf16"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--tp trains in f32"), "{err}");
}
