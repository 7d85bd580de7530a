//! Data parallelism through kiln-train's API: N thread ranks at per-rank
//! batch B against one rank at batch N*B (same tokens, same losses up to
//! the order of the f32 sums), resume across world sizes, and ranks that
//! die or stall.

use std::path::Path;
use std::time::Duration;

use kiln_parallel::comm::ThreadComm;
use kiln_parallel::data_parallel::{DataParallel, Zero};
use kiln_train::checkpoint::latest_checkpoint;
use kiln_train::metrics::{read_metrics, StepRecord};
use kiln_train::{Init, Quiet, TrainConfig, TrainError, Trainer};

use crate::train::{byte_shards, tiny_config, train};

/// f32 sums in another order: 1e-6 relative, as the issue asks.
pub(crate) const TOL: f64 = 1e-6;

const TIMEOUT: Duration = Duration::from_secs(120);

fn config(steps: u64, batch: usize) -> TrainConfig {
    let mut c = tiny_config(steps);
    c.batch_size = batch;
    c.checkpoint_every = 0;
    c
}

/// Runs `body` on `n` thread ranks (rank 0's result first).
fn on_ranks<R: Send>(
    n: usize,
    zero: Zero,
    timeout: Duration,
    body: impl Fn(DataParallel) -> R + Sync,
) -> Vec<R> {
    std::thread::scope(|s| {
        let hs: Vec<_> = ThreadComm::group(n, timeout)
            .into_iter()
            .map(|c| {
                let body = &body;
                // small buckets: several per step even on the tiny model
                s.spawn(move || {
                    body(DataParallel::new(Box::new(c), zero).with_bucket_bytes(64 << 10))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A fresh data-parallel run of `c` (per-rank batch) to its end.
fn train_dp(n: usize, zero: Zero, c: &TrainConfig, data: &Path, run: &Path) -> Vec<StepRecord> {
    on_ranks(n, zero, TIMEOUT, |dp| {
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t = Trainer::start_parallel(be, c.clone(), data, run, Init::Preset, dp).unwrap();
        t.run(&mut Quiet).unwrap();
    });
    read_metrics(&run.join("metrics.jsonl")).unwrap()
}

/// The largest relative difference of the losses and grad norms, after
/// checking both runs logged the same steps.
pub(crate) fn max_rel_diff(a: &[StepRecord], b: &[StepRecord]) -> f64 {
    assert_eq!(
        a.iter().map(|r| r.step).collect::<Vec<_>>(),
        b.iter().map(|r| r.step).collect::<Vec<_>>()
    );
    let rel = |x: f32, y: f32| (x as f64 - y as f64).abs() / (y as f64).abs().max(1e-30);
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| [rel(x.loss, y.loss), rel(x.grad_norm, y.grad_norm)])
        .fold(0.0, f64::max)
}

#[test]
fn n_ranks_at_batch_b_match_one_rank_at_batch_n_b() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    for n in [2usize, 4] {
        let mut single = config(6, 2 * n);
        single.grad_accum = 2;
        let want = train(single.clone(), &data, &dir.path().join(format!("one_{n}")));
        let per_rank = TrainConfig {
            batch_size: 2,
            ..single
        };
        for zero in [Zero::Off, Zero::Stage1] {
            let run = dir.path().join(format!("dp{n}_{zero:?}"));
            let got = train_dp(n, zero, &per_rank, &data, &run);
            let diff = max_rel_diff(&got, &want);
            eprintln!("dp {n} {zero:?}: max relative loss/grad-norm difference {diff:e}");
            assert!(diff <= TOL, "dp {n} {zero:?}: {diff:e} > {TOL:e}");
            // rank 0 alone wrote: one metrics line per step, one checkpoint
            assert_eq!(got.len(), 6);
            assert_eq!(latest_checkpoint(&run).unwrap().unwrap().0, 6);
        }
    }
}

#[test]
fn resume_across_world_sizes_continues_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let straight = train(config(8, 8), &data, &dir.path().join("straight"));

    // 2 ranks (zero 1) for 4 steps, then 1 rank for the other 4
    let run = dir.path().join("two_then_one");
    on_ranks(2, Zero::Stage1, TIMEOUT, |dp| {
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t =
            Trainer::start_parallel(be, config(8, 4), &data, &run, Init::Preset, dp).unwrap();
        for _ in 0..4 {
            t.train_step(&mut Quiet).unwrap();
        }
        t.save_checkpoint(&mut Quiet).unwrap();
    });
    let (step, ck) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!(step, 4);
    let be = kiln_tensor::cpu_backend(Some(2));
    Trainer::resume(be, config(8, 8), &data, &run, &ck)
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let two_then_one = read_metrics(&run.join("metrics.jsonl")).unwrap();
    let diff = max_rel_diff(&two_then_one, &straight);
    eprintln!("resume 2 -> 1: max relative difference {diff:e}");
    assert!(diff <= TOL, "2 -> 1: {diff:e}");

    // 1 rank for 4 steps, then 4 ranks (zero 0) for the other 4
    let run = dir.path().join("one_then_four");
    {
        let be = kiln_tensor::cpu_backend(Some(2));
        let mut t = Trainer::start(be, config(8, 8), &data, &run, Init::Preset).unwrap();
        for _ in 0..4 {
            t.train_step(&mut Quiet).unwrap();
        }
        t.save_checkpoint(&mut Quiet).unwrap();
    }
    let (_, ck) = latest_checkpoint(&run).unwrap().unwrap();
    on_ranks(4, Zero::Off, TIMEOUT, |dp| {
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t = Trainer::resume_parallel(be, config(8, 2), &data, &run, &ck, dp).unwrap();
        t.run(&mut Quiet).unwrap();
    });
    let one_then_four = read_metrics(&run.join("metrics.jsonl")).unwrap();
    // steps 1..4 are the single rank's, bit for bit
    assert_eq!(
        one_then_four[..4]
            .iter()
            .map(|r| r.loss.to_bits())
            .collect::<Vec<_>>(),
        straight[..4]
            .iter()
            .map(|r| r.loss.to_bits())
            .collect::<Vec<_>>()
    );
    let diff = max_rel_diff(&one_then_four, &straight);
    eprintln!("resume 1 -> 4: max relative difference {diff:e}");
    assert!(diff <= TOL, "1 -> 4: {diff:e}");
}

#[test]
fn a_rank_that_dies_ends_the_others_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    let errors = on_ranks(3, Zero::Off, TIMEOUT, |dp| {
        let rank = dp.rank();
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t =
            Trainer::start_parallel(be, config(4, 2), &data, &run, Init::Preset, dp).unwrap();
        t.train_step(&mut Quiet).unwrap();
        if rank == 2 {
            return None; // dies: drops its trainer and communicator
        }
        Some(t.train_step(&mut Quiet).unwrap_err())
    });
    for err in errors.into_iter().flatten() {
        let msg = err.to_string();
        assert!(matches!(err, TrainError::Parallel(_)), "{msg}");
        assert!(
            msg.contains("all_reduce") && msg.contains("rank 2"),
            "{msg}"
        );
    }
}

#[test]
fn a_rank_that_stalls_times_out_the_others_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    let errors = on_ranks(2, Zero::Stage1, Duration::from_millis(500), |dp| {
        let rank = dp.rank();
        let be = kiln_tensor::cpu_backend(Some(1));
        let mut t =
            Trainer::start_parallel(be, config(4, 2), &data, &run, Init::Preset, dp).unwrap();
        if rank == 1 {
            // stalls past the deadline before its first collective
            std::thread::sleep(Duration::from_secs(3));
        }
        t.train_step(&mut Quiet).err().map(|e| e.to_string())
    });
    let msg = errors[0].as_deref().expect("rank 0 fails");
    assert!(
        msg.contains("reduce_scatter") && msg.contains("timed out"),
        "{msg}"
    );
    assert!(msg.contains("rank(s) [1]"), "{msg}");
    // the stalled rank finds the group poisoned when it arrives
    assert!(
        errors[1].as_deref().is_some_and(|m| m.contains("rank 0")),
        "{errors:?}"
    );
}

#[test]
fn cli_dp_2_matches_dp_1_at_twice_the_batch() {
    use crate::cli::{kiln, s};
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let pretrain = |out: &Path, batch: &str, extra: &[&str]| {
        let mut args = vec![
            "pretrain",
            "--data",
            s(&data),
            "--out",
            s(out),
            "--model",
            "tiny",
            "--steps",
            "4",
            "--batch-size",
            batch,
            "--seq-len",
            "32",
            "--lr",
            "3e-3",
            "--warmup",
            "2",
            "--seed",
            "7",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let one = dir.path().join("one");
    pretrain(&one, "4", &[]);
    let want = read_metrics(&one.join("metrics.jsonl")).unwrap();
    for zero in ["0", "1"] {
        let two = dir.path().join(format!("two_{zero}"));
        let o = pretrain(
            &two,
            "2",
            &["--dp", "2", "--zero", zero, "--comm-timeout-s", "60"],
        );
        // rank 0 alone reports: one summary line
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.matches("done: 4 steps").count(), 1, "{stdout}");
        let got = read_metrics(&two.join("metrics.jsonl")).unwrap();
        let diff = max_rel_diff(&got, &want);
        eprintln!("cli --dp 2 --zero {zero}: max relative difference {diff:e}");
        assert!(diff <= TOL, "--zero {zero}: {diff:e}");
        assert_eq!(latest_checkpoint(&two).unwrap().unwrap().0, 4);
    }
    // a bad --zero is refused up front
    let o = kiln(&[
        "pretrain",
        "--data",
        s(&data),
        "--out",
        s(&dir.path().join("bad")),
        "--dp",
        "2",
        "--zero",
        "3",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--zero 3"));
}

/// `mpirun -np 2 kiln pretrain ...` on a build that cannot join processes:
/// refused before anything is written, naming the launcher's variable;
/// `mpirun -np 1` is one process and runs. (An MPI build joins the launch:
/// tests/it/mpi.rs.)
#[cfg(not(feature = "mpi"))]
#[test]
fn a_multi_process_launch_is_refused_not_run_twice() {
    use crate::cli::{kiln_bin, s};
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let run = |out: &Path, env: &[(&str, &str)]| {
        std::process::Command::new(kiln_bin())
            .args(["pretrain", "--data", s(&data), "--out", s(out)])
            .args(["--model", "tiny", "--steps", "1", "--batch-size", "2"])
            .args(["--seq-len", "16", "--threads", "1"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    for (env, var) in [
        (
            [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")],
            "OMPI_COMM_WORLD_SIZE=2",
        ),
        (
            [("SLURM_PROCID", "1"), ("SLURM_STEP_NUM_TASKS", "2")],
            "SLURM_STEP_NUM_TASKS=2",
        ),
    ] {
        let out = dir.path().join(var);
        let o = run(&out, &env);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("rank 1 of 2") && stderr.contains(var),
            "{stderr}"
        );
        assert!(stderr.contains("--dp N"), "{stderr}");
        assert!(!out.exists(), "a refused launch wrote {}", out.display());
    }
    let one = dir.path().join("one");
    let o = run(
        &one,
        &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "1")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(latest_checkpoint(&one).unwrap().unwrap().0, 1);
}
