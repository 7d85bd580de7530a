//! `mpirun -np N kiln pretrain ...` (built with `--features mpi`): N
//! processes at per-rank batch B against one process at batch N*B, resume
//! across launch sizes, a rank killed outright, a rank that stalls, and the
//! commands that cannot join a launch. Every run here is a real Open MPI
//! launch of the `kiln` binary (oversubscribed: CI has 2 cores).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_parallel::launch::test_mpirun;
use kiln_train::checkpoint::latest_checkpoint;
use kiln_train::metrics::{read_metrics, StepRecord};

use crate::cli::{kiln, kiln_bin, s};
use crate::data_parallel::{max_rel_diff, TOL};
use crate::train::byte_shards;

/// No test here waits longer for a launch: a hang fails, it never blocks CI.
const DEADLINE: Duration = Duration::from_secs(180);

/// The flags every run shares (the tiny model, one compute thread a rank).
fn pretrain_args<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--data",
        data,
        "--out",
        out,
        "--model",
        "tiny",
        "--steps",
        steps,
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
    ]
}

/// `mpirun -np np kiln args...`, or `None` (with a note) without Open MPI.
fn launch(np: usize, args: &[&str]) -> Option<Command> {
    let Some(mut cmd) = test_mpirun(np) else {
        eprintln!("skipped: no Open MPI mpirun on PATH (apt install openmpi-bin)");
        return None;
    };
    cmd.arg(kiln_bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Some(cmd)
}

/// Waits for `child` at most `DEADLINE`, killing it (and failing) past it.
fn finish(mut child: Child, what: &str) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {DEADLINE:?}; stderr:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs the launch to its end; panics (with its stderr) unless it succeeded.
fn run_ok(np: usize, args: &[&str]) -> Option<Output> {
    let child = launch(np, args)?.spawn().unwrap();
    let o = finish(child, &format!("mpirun -np {np}"));
    assert!(
        o.status.success(),
        "mpirun -np {np} kiln {}: {}\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Some(o)
}

fn metrics(run: &Path) -> Vec<StepRecord> {
    read_metrics(&run.join("metrics.jsonl")).unwrap()
}

/// One process at `batch`: the reference every launch is held to.
fn single(data: &str, out: &Path, steps: &str, batch: &str) -> Vec<StepRecord> {
    let mut args = pretrain_args(data, s(out), steps);
    args.extend(["--batch-size", batch]);
    let o = kiln(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    metrics(out)
}

#[test]
fn n_processes_at_batch_b_match_one_process_at_batch_n_b() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let data = s(&data);
    for (np, zero) in [(2usize, "0"), (2, "1"), (4, "0")] {
        let want = single(
            data,
            &dir.path().join(format!("single_{np}_{zero}")),
            "4",
            &(2 * np).to_string(),
        );
        let out = dir.path().join(format!("np{np}_zero{zero}"));
        let mut args = pretrain_args(data, s(&out), "4");
        args.extend([
            "--batch-size",
            "2",
            "--zero",
            zero,
            "--comm-timeout-s",
            "60",
        ]);
        let Some(o) = run_ok(np, &args) else { return };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        // rank 0 alone reports and writes: one summary, one run directory
        assert_eq!(stdout.matches("done: 4 steps").count(), 1, "{stdout}");
        assert!(
            stderr.contains(&format!(
                "parallel over MPI: {np} ranks (dp {np} x tp 1 x pp 1), batch 2"
            )),
            "{stderr}"
        );
        let got = metrics(&out);
        let diff = max_rel_diff(&got, &want);
        eprintln!("mpirun -np {np} --zero {zero}: max relative difference {diff:e}");
        assert!(diff <= TOL, "np {np} zero {zero}: {diff:e}");
        assert_eq!(latest_checkpoint(&out).unwrap().unwrap().0, 4);
    }
}

/// Model parallel across processes: `-np 2 --tp 2`, `-np 2 --pp 2` and
/// `-np 4 --dp 2 --pp 2` (oversubscribed) against one process at the same
/// global batch, within the 1e-5.
#[test]
fn tensor_and_pipeline_parallel_launches_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let data = s(&data);
    let mut want_args = pretrain_args(data, "", "3");
    let one = dir.path().join("one");
    want_args[4] = s(&one);
    want_args.extend(["--batch-size", "4", "--grad-accum", "2"]);
    let o = kiln(&want_args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = metrics(&one);
    for (np, layout, batch) in [
        (2usize, ["--tp", "2"], "4"),
        (2, ["--pp", "2"], "4"),
        (4, ["--pp", "2"], "2"),
    ] {
        let out = dir.path().join(format!("np{np}{}", layout.join("")));
        let mut args = pretrain_args(data, s(&out), "3");
        args.extend(["--batch-size", batch, "--grad-accum", "2"]);
        args.extend(layout);
        args.extend(["--comm-timeout-s", "60"]);
        let Some(o) = run_ok(np, &args) else { return };
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.matches("done: 3 steps").count(), 1, "{stdout}");
        let diff = max_rel_diff(&metrics(&out), &want);
        eprintln!(
            "mpirun -np {np} {}: max relative difference {diff:e}",
            layout.join(" ")
        );
        assert!(diff <= 1e-5, "np {np} {layout:?}: {diff:e}");
        assert_eq!(latest_checkpoint(&out).unwrap().unwrap().0, 3);
    }
}

/// A checkpoint written by one launch size resumes under another: 2
/// processes (ZeRO-1) then 1, and 1 then 4, each against the straight run.
#[test]
fn resume_across_launch_sizes_continues_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let data = s(&data);
    let straight = single(data, &dir.path().join("straight"), "8", "8");
    // The first leg runs all 8 steps (the schedule is the 8-step one) with a
    // checkpoint at 4; dropping the step-8 checkpoint leaves the run as a
    // kill after step 4 would (resume drops the metrics past its step).
    let first_leg = |np: usize, out: &Path, zero: &str| -> bool {
        let mut args = pretrain_args(data, s(out), "8");
        let batch = (8 / np).to_string();
        args.extend(["--batch-size", &batch, "--checkpoint-every", "4"]);
        args.extend(["--zero", zero]);
        if np == 1 {
            let o = kiln(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        } else if run_ok(np, &args).is_none() {
            return false;
        }
        let (step, last) = latest_checkpoint(out).unwrap().unwrap();
        assert_eq!(step, 8);
        std::fs::remove_dir_all(last).unwrap();
        assert_eq!(latest_checkpoint(out).unwrap().unwrap().0, 4);
        true
    };
    for (from, to, zero) in [(2usize, 1usize, "1"), (1, 4, "0")] {
        let out = dir.path().join(format!("{from}_then_{to}"));
        if !first_leg(from, &out, zero) {
            return;
        }
        // no --batch-size: the checkpoint's global batch 8, split over `to`
        let mut args = pretrain_args(data, s(&out), "8");
        args.push("--resume");
        if to == 1 {
            let o = kiln(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        } else if run_ok(to, &args).is_none() {
            return;
        }
        let got = metrics(&out);
        let diff = max_rel_diff(&got, &straight);
        eprintln!("resume {from} -> {to} processes: max relative difference {diff:e}");
        assert!(diff <= TOL, "{from} -> {to}: {diff:e}");
    }
}

/// The pid of launch `tag`'s rank `rank`: the process whose environment
/// holds both (Open MPI hands each rank `OMPI_COMM_WORLD_RANK`).
fn rank_pid(tag: &str, rank: usize) -> Option<u32> {
    let want_tag = format!("KILN_TEST_LAUNCH={tag}");
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |v: &str| vars.contains(&v.as_bytes());
        (has(&want_tag) && has(&want_rank)).then_some(pid)
    })
}

/// Starts a long 4-process run tagged `tag`; returns it once rank 0 has
/// logged a step (every rank is then inside the training loop) and `rank`'s
/// pid.
fn started_run(dir: &Path, tag: &str, rank: usize, extra: &[&str]) -> Option<(Child, u32)> {
    let (data, _) = byte_shards(dir);
    let out = dir.join(tag);
    let mut args = pretrain_args(s(&data), s(&out), "100000");
    args.extend(["--batch-size", "2", "--checkpoint-every", "0"]);
    args.extend_from_slice(extra);
    let mut child = launch(4, &args)?
        .env("KILN_TEST_LAUNCH", tag)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let log = out.join("metrics.jsonl");
    loop {
        let logged = std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 1);
        if let (true, Some(pid)) = (logged, rank_pid(tag, rank)) {
            return Some((child, pid));
        }
        if t0.elapsed() > DEADLINE || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "the 4-process run never got going ({}):\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_killed_rank_ends_the_launch_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some((child, pid)) = started_run(dir.path(), "killed", 3, &["--comm-timeout-s", "60"])
    else {
        return;
    };
    let t0 = Instant::now();
    signal(pid, "-KILL");
    let o = finish(child, "after SIGKILL of rank 3");
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("launch ended {:?} after the kill", t0.elapsed());
    assert!(!o.status.success(), "{stderr}");
    // the launcher notices at once: well inside the 60 s collective timeout
    assert!(t0.elapsed() < Duration::from_secs(45), "{stderr}");
}

#[test]
fn a_stalled_rank_times_out_the_others_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some((child, pid)) = started_run(dir.path(), "stalled", 2, &["--comm-timeout-s", "5"])
    else {
        return;
    };
    let t0 = Instant::now();
    signal(pid, "-STOP");
    let o = finish(child, "after SIGSTOP of rank 2");
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("launch ended {:?} after the stall", t0.elapsed());
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    // The ranks that time out name the ranks they waited for; a rank that
    // got rank 2's part before the stall runs one collective ahead and
    // waits for the others too, so rank 2 is among those named, not alone.
    let named_2 = stderr.split("waiting for rank(s) [").skip(1).any(|rest| {
        let list = rest.split(']').next().unwrap_or("");
        list.split(", ").any(|r| r.trim() == "2")
    });
    assert!(named_2, "the stalled rank is named: {stderr}");
    assert!(stderr.contains("--comm-timeout-s"), "{stderr}");
    // a failing rank reports itself, then ends the launch (MPI_Abort), the
    // stopped rank included
    assert!(stderr.contains("error: MPI rank "), "{stderr}");
}

/// Only `kiln pretrain` joins a launch; every other command refuses before
/// writing, and so does a `--dp` that disagrees with the launch.
#[test]
fn commands_that_cannot_join_a_launch_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "some text to train a tokenizer on\n".repeat(50)).unwrap();
    let tok = dir.path().join("tokenizer.json");
    let args = ["tokenizer", "train", "--input", s(&text)];
    let args = [&args[..], &["--vocab-size", "300", "--output", s(&tok)]].concat();
    let Some(mut cmd) = launch(2, &args) else {
        return;
    };
    let o = finish(cmd.spawn().unwrap(), "mpirun kiln tokenizer");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("only `kiln pretrain` joins a multi-process launch"),
        "{stderr}"
    );
    assert!(!tok.exists(), "a refused launch wrote {}", tok.display());

    let out = dir.path().join("dp3");
    let mut args = pretrain_args(s(&data), s(&out), "2");
    args.extend(["--dp", "3"]);
    let child = launch(2, &args).unwrap().spawn().unwrap();
    let o = finish(child, "mpirun kiln pretrain --dp 3");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("--dp 3") && stderr.contains("2 ranks"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused launch wrote {}", out.display());
}
