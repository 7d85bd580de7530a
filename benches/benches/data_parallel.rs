//! Data parallelism on this machine (issue 11's benchmarks), three parts:
//!
//! 1. **Collectives**: `all_reduce` (average) of 4 KiB, 1 MiB and 25 MiB
//!    (one gradient bucket) on `ThreadComm` and, with the `mpi` feature and
//!    Open MPI's `mpirun`, on `MpiComm` (this binary relaunches itself under
//!    `mpirun -np 2|4`), against the ring model
//!    `2(N-1)·α + 2(N-1)/N · S/β` with β this machine's measured one-thread
//!    copy bandwidth and α the measured 4 KiB time over `2(N-1)`.
//!    criterion times the 25 MiB `ThreadComm` all-reduce on 2 ranks.
//! 2. **Step time** of `kiln pretrain` (the release binary; `small`, vocab
//!    8192, T=256, global batch 8, one compute thread per rank) on 1 rank,
//!    `--dp 2|4` (threads) and `mpirun -np 2|4`, ZeRO 0 and 1, with the
//!    scaling efficiency against one rank on one core and the peak RSS per
//!    process (`/usr/bin/time`).
//! 3. **The peer**: PyTorch DDP over gloo at the same global batch, 1 and 2
//!    processes (benches/peers/train_step_ddp_torch.py), when python3 has
//!    torch.
//!
//! Environment: KILN_BENCH_STEPS (logged steps per kiln run, default 10;
//! the first 2 are warm-up), KILN_BENCH_NO_PEER=1, KILN_BENCH_NO_STEPS=1
//! (the collectives alone).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use kiln_parallel::comm::{Communicator, ReduceOp, ThreadComm};

const RANK_VAR: &str = "KILN_BENCH_MPI_RANK";
/// 4 KiB, 1 MiB, 25 MiB of f32.
const SIZES: [usize; 3] = [1 << 10, 1 << 18, 25 << 18];
const TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    if std::env::var_os(RANK_VAR).is_some() {
        mpi_rank_main();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    let beta = copy_bandwidth();
    println!("\n== all_reduce (average), median of 20; ring model with beta = {:.2} GB/s (one-thread copy)", beta / 1e9);
    let mut rows = Vec::new();
    for n in [2usize, 4] {
        rows.extend(
            SIZES
                .iter()
                .map(|&f| ("thread", n, f, thread_all_reduce_s(n, f))),
        );
    }
    rows.extend(mpi_all_reduce_rows());
    print_collectives(&rows, beta);
    if std::env::var_os("KILN_BENCH_NO_STEPS").is_none() {
        step_times();
    }
}

fn thread_all_reduce_25mib(c: &mut Criterion) {
    let floats = SIZES[2];
    let mut g = c.benchmark_group("data_parallel");
    g.throughput(Throughput::Bytes(4 * floats as u64));
    g.sample_size(10);
    g.bench_function("thread_all_reduce_25MiB_2_ranks", |b| {
        b.iter_custom(|iters| {
            let comms = ThreadComm::group(2, TIMEOUT);
            let times: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|mut c| {
                        s.spawn(move || {
                            let mut buf = vec![1.0f32; floats];
                            c.barrier().unwrap();
                            let t0 = Instant::now();
                            for _ in 0..iters {
                                c.all_reduce(&mut buf, ReduceOp::Average).unwrap();
                            }
                            t0.elapsed()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            times[0]
        })
    });
    g.finish();
}

criterion_group!(benches, thread_all_reduce_25mib);

/// Rank 0's median all-reduce time of `floats` f32 on `comm`.
fn time_all_reduce(comm: &mut dyn Communicator, floats: usize) -> f64 {
    let mut buf = vec![1.0f32; floats];
    comm.all_reduce(&mut buf, ReduceOp::Average).unwrap(); // warm-up
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            comm.barrier().unwrap();
            let t0 = Instant::now();
            comm.all_reduce(&mut buf, ReduceOp::Average).unwrap();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn thread_all_reduce_s(n: usize, floats: usize) -> f64 {
    let comms = ThreadComm::group(n, TIMEOUT);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|mut c| s.spawn(move || time_all_reduce(&mut c, floats)))
            .collect();
        let times: Vec<f64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        times[0]
    })
}

/// Bytes per second of one thread copying a 25 MiB buffer (median of 10).
fn copy_bandwidth() -> f64 {
    let src = vec![1.0f32; SIZES[2]];
    let mut dst = vec![0.0f32; SIZES[2]];
    let mut times: Vec<f64> = (0..10)
        .map(|_| {
            let t0 = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (4 * SIZES[2]) as f64 / times[5]
}

fn print_collectives(rows: &[(&str, usize, usize, f64)], beta: f64) {
    println!(
        "{:<8} {:>5} {:>9} {:>11} {:>11} {:>7}",
        "comm", "ranks", "bytes", "measured", "ring model", "ratio"
    );
    for &(kind, n, floats, t) in rows {
        // alpha from this communicator's own 4 KiB time at this size
        let small = rows
            .iter()
            .find(|r| r.0 == kind && r.1 == n && r.2 == SIZES[0])
            .map_or(0.0, |r| r.3);
        let steps = 2.0 * (n as f64 - 1.0);
        let alpha = small / steps;
        let bytes = 4.0 * floats as f64;
        let model = steps * alpha + steps / n as f64 * bytes / beta;
        println!(
            "{kind:<8} {n:>5} {:>9} {:>9.3}ms {:>9.3}ms {:>6.2}x",
            human_bytes(bytes),
            t * 1e3,
            model * 1e3,
            t / model
        );
    }
}

fn human_bytes(b: f64) -> String {
    if b >= (1 << 20) as f64 {
        format!("{:.0} MiB", b / (1 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

#[cfg(feature = "mpi")]
fn mpi_rank_main() {
    let rt = kiln_parallel::comm::MpiRuntime::init().expect("MPI initialises");
    let mut comm = rt.world(TIMEOUT);
    for floats in SIZES {
        let t = time_all_reduce(&mut comm, floats);
        if comm.rank() == 0 {
            println!("all_reduce {} {floats} {t}", comm.world());
        }
    }
    comm.barrier().unwrap();
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank_main() {
    unreachable!("only an MPI build relaunches itself")
}

/// `MpiComm` rows: this binary under `mpirun -np 2|4`.
fn mpi_all_reduce_rows() -> Vec<(&'static str, usize, usize, f64)> {
    if !cfg!(feature = "mpi") {
        println!("(MpiComm rows skipped: built without the mpi feature; `cargo xtask bench` turns it on when Open MPI is installed)");
        return Vec::new();
    }
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for n in [2usize, 4] {
        let Some(mut mpirun) = kiln_parallel::launch::test_mpirun(n) else {
            println!("(MpiComm rows skipped: no Open MPI mpirun on PATH)");
            return rows;
        };
        let out = mpirun.arg(&exe).env(RANK_VAR, "1").output().unwrap();
        assert!(
            out.status.success(),
            "mpirun -np {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["all_reduce", n, floats, t] = f[..] {
                rows.push((
                    "mpi",
                    n.parse().unwrap(),
                    floats.parse().unwrap(),
                    t.parse().unwrap(),
                ));
            }
        }
    }
    rows
}

// ---- step time of the kiln binary ----

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The release `kiln` binary, built with MPI when this bench was.
fn kiln_release() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "-p", "kiln-cli"])
        .current_dir(root());
    if cfg!(feature = "mpi") {
        cmd.args(["--features", "mpi"]);
    }
    assert!(cmd.status().unwrap().success(), "building kiln failed");
    root().join("target/release/kiln")
}

/// An llm.c token shard of the test fixture's bytes.
fn byte_shard(dir: &Path) -> PathBuf {
    let text = std::fs::read(root().join("tests/fixtures/text/kjv_excerpt.txt")).unwrap();
    let mut bytes = Vec::new();
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = text.len() as i32;
    header
        .iter()
        .for_each(|h| bytes.extend_from_slice(&h.to_le_bytes()));
    text.iter()
        .for_each(|&t| bytes.extend_from_slice(&(t as u16).to_le_bytes()));
    let path = dir.join("train.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

struct Layout {
    name: &'static str,
    ranks: usize,
    mpi: bool,
    zero: &'static str,
    threads: usize,
}

/// Median step seconds after the 2 warm-up steps (from metrics.jsonl's
/// cumulative `elapsed_s`) and the largest per-process peak RSS in MiB.
fn run_layout(kiln: &Path, data: &Path, out: &Path, l: &Layout, steps: u64) -> (f64, f64) {
    let batch = (8 / l.ranks).to_string();
    let threads = l.threads.to_string();
    let steps_s = steps.to_string();
    let mut args: Vec<&str> = vec!["pretrain", "--data", data.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap(), "--model", "small"]);
    args.extend([
        "--vocab-size",
        "8192",
        "--seq-len",
        "256",
        "--batch-size",
        &batch,
    ]);
    args.extend(["--steps", &steps_s, "--threads", &threads, "--zero", l.zero]);
    args.extend(["--checkpoint-every", "0", "--comm-timeout-s", "600"]);
    let ranks = l.ranks.to_string();
    if !l.mpi {
        args.extend(["--dp", &ranks]);
    }
    let mut cmd = if l.mpi {
        let mut c = kiln_parallel::launch::test_mpirun(l.ranks).expect("mpirun");
        c.arg("/usr/bin/time");
        c
    } else {
        Command::new("/usr/bin/time")
    };
    cmd.args(["-f", "peak_rss_kib %M"]).arg(kiln).args(&args);
    cmd.env("RAYON_NUM_THREADS", &threads);
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}: {stderr}", l.name);
    let peak_kib = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("peak_rss_kib ")?.trim().parse::<f64>().ok())
        .fold(0.0, f64::max);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let elapsed: Vec<f64> = metrics
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["elapsed_s"].as_f64().unwrap()
        })
        .collect();
    let mut per_step: Vec<f64> = elapsed.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
    per_step.sort_by(f64::total_cmp);
    (per_step[per_step.len() / 2], peak_kib / 1024.0)
}

fn step_times() {
    let steps: u64 = std::env::var("KILN_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(4);
    let kiln = kiln_release();
    let dir = tempfile::tempdir().unwrap();
    let data = byte_shard(dir.path());
    let mpi = cfg!(feature = "mpi") && kiln_parallel::launch::test_mpirun(1).is_some();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let layout = |name, ranks, mpi, zero, threads| Layout {
        name,
        ranks,
        mpi,
        zero,
        threads,
    };
    let mut layouts = vec![
        layout("1 rank, 1 thread", 1, false, "0", 1),
        layout("1 rank, 2 threads", 1, false, "0", 2),
        layout("--dp 2 (threads)", 2, false, "0", 1),
        layout("--dp 2 --zero 1", 2, false, "1", 1),
        layout("--dp 4 (threads)", 4, false, "0", 1),
    ];
    if mpi {
        layouts.extend([
            layout("mpirun -np 2", 2, true, "0", 1),
            layout("mpirun -np 2 --zero 1", 2, true, "1", 1),
            layout("mpirun -np 4", 4, true, "0", 1),
            layout("mpirun -np 4 --zero 1", 4, true, "1", 1),
        ]);
    } else {
        println!("(mpirun rows skipped: no MPI build or no Open MPI mpirun)");
    }
    println!(
        "\n== kiln pretrain, small (vocab 8192, T=256), global batch 8, {cores} cores; median of {} steps",
        steps - 2
    );
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>13}",
        "layout", "step", "tok/s", "vs 1 rank", "peak RSS/proc"
    );
    let mut base = None;
    for (i, l) in layouts.iter().enumerate() {
        let (step, rss) = run_layout(&kiln, &data, &dir.path().join(format!("run{i}")), l, steps);
        let base = *base.get_or_insert(step);
        let note = if l.ranks * l.threads > cores {
            " (oversubscribed)"
        } else {
            ""
        };
        println!(
            "{:<24} {:>7.3}s {:>9.0} {:>9.2}x {:>9.0} MiB{note}",
            l.name,
            step,
            8.0 * 256.0 / step,
            base / step,
            rss
        );
    }
    peer();
}

fn peer() {
    if std::env::var_os("KILN_BENCH_NO_PEER").is_some() {
        return;
    }
    let script = root().join("benches/peers/train_step_ddp_torch.py");
    let o = Command::new("python3")
        .arg(&script)
        .args(["--worlds", "1,2", "--threads", "1", "--global-batch", "8"])
        .output();
    match o {
        Ok(o) if o.status.success() => {
            println!("\n== PyTorch DDP (gloo), same model and global batch, 1 thread per rank");
            let mut base = None;
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let step = v["step_s"].as_f64().unwrap();
                let base = *base.get_or_insert(step);
                println!(
                    "torch {} DDP rank(s) {:>7.3}s {:>9.0} tok/s {:>6.2}x {:>6.0} MiB/proc (torch {})",
                    v["world"],
                    step,
                    v["tokens_per_s"].as_f64().unwrap(),
                    base / step,
                    v["peak_rss_mib_per_rank"].as_f64().unwrap(),
                    v["torch"].as_str().unwrap_or("?")
                );
            }
        }
        Ok(o) => println!(
            "(PyTorch DDP peer skipped: {})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("(PyTorch DDP peer skipped: no python3: {e})"),
    }
}
