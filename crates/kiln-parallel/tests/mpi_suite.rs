//! The communicator suite (`comm::suite`) on [`MpiComm`], a process per
//! rank: this binary relaunches itself under `mpirun -np 2` and
//! `mpirun -np 4 --oversubscribe`, and each rank runs every check on its
//! own handle. Without Open MPI's `mpirun` on PATH it says so and passes.
//!
//! Each failure check gets its own communicator (a failed one stays
//! failed), and every communicator lives to the end: Open MPI reuses a
//! freed communicator's id, and a late message could land in its successor.

use std::process::ExitCode;
use std::time::Duration;

use kiln_parallel::comm::grid::ProcessGrid;
use kiln_parallel::comm::{suite, Communicator, MpiComm, MpiRuntime, ReduceOp};
use kiln_parallel::launch::test_mpirun;

const RANK_VAR: &str = "KILN_MPI_SUITE_RANK";

fn main() -> ExitCode {
    if std::env::var_os(RANK_VAR).is_some() {
        return rank_main();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    for np in [2usize, 4] {
        let Some(mut mpirun) = test_mpirun(np) else {
            println!("skipping the MPI communicator suite: no Open MPI mpirun on PATH (Debian: openmpi-bin)");
            return ExitCode::SUCCESS;
        };
        let out = mpirun
            .arg(&exe)
            .env(RANK_VAR, "1")
            .output()
            .expect("mpirun starts");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let passed = (0..np)
            .filter(|r| stdout.contains(&format!("rank {r} of {np}: suite passed")))
            .count();
        if !out.status.success() || passed != np {
            eprintln!(
                "mpirun -np {np}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                out.status
            );
            return ExitCode::FAILURE;
        }
        println!("mpi communicator suite: {np} ranks passed");
    }
    ExitCode::SUCCESS
}

/// One rank: every check of the suite, then a report line.
fn rank_main() -> ExitCode {
    let rt = MpiRuntime::init().expect("MPI initialises");
    let timeout = Duration::from_secs(60);
    let mut keep: Vec<MpiComm> = Vec::new();
    let mut world = rt.world(timeout);
    let (me, n) = (world.rank(), world.world());
    let mut failures: Vec<String> = Vec::new();
    let mut record = |what: &str, r: suite::Check| {
        if let Err(e) = r {
            failures.push(format!("{what}: {e}"));
        }
    };

    record("healthy", suite::healthy(&mut world));
    if n == 4 {
        record("grid", grid_axes(&rt, timeout));
    }

    // Failures, each on a fresh communicator.
    let mut stalled = rt.world(Duration::from_millis(1500));
    record(
        "stalled rank",
        suite::stalled_rank(&mut stalled, n - 1, Duration::from_secs(4)),
    );
    keep.push(stalled);
    let mut poisoned = rt.world(timeout);
    record("poisoned", suite::poisoned_by(&mut poisoned, 1));
    keep.push(poisoned);
    let mut mismatched = rt.world(timeout);
    record("mismatch", suite::mismatched_operations(&mut mismatched));
    keep.push(mismatched);

    // Healthy again: a failed communicator does not affect another.
    record(
        "after failures",
        suite::all_reduce(&mut world, 9, 33, ReduceOp::Sum),
    );
    let code = if failures.is_empty() {
        println!("rank {me} of {n}: suite passed");
        ExitCode::SUCCESS
    } else {
        println!("rank {me} of {n}: FAILED\n{}", failures.join("\n"));
        ExitCode::FAILURE
    };
    drop(world);
    drop(keep);
    drop(rt);
    code
}

/// On a tp 2 x dp 2 grid, each axis's all_reduce sums the global ranks of
/// exactly the ranks that differ from this one along that axis.
fn grid_axes(rt: &MpiRuntime, timeout: Duration) -> suite::Check {
    let grid = ProcessGrid {
        tp: 2,
        dp: 2,
        pp: 1,
    };
    let mut g = rt.grid(grid, timeout)?;
    let me = grid.rank(g.coord);
    let c = g.coord;
    let peers = |same: &dyn Fn(usize) -> bool| -> f32 {
        (0..grid.world())
            .filter(|&r| same(r))
            .map(|r| r as f32)
            .sum()
    };
    let want = [
        peers(&|r| grid.coord(r).dp == c.dp && grid.coord(r).pp == c.pp),
        peers(&|r| grid.coord(r).tp == c.tp && grid.coord(r).pp == c.pp),
        peers(&|r| grid.coord(r).tp == c.tp && grid.coord(r).dp == c.dp),
    ];
    for (i, comm) in [&mut g.tp, &mut g.dp, &mut g.pp].into_iter().enumerate() {
        let mut v = [me as f32];
        comm.all_reduce(&mut v, ReduceOp::Sum)
            .map_err(|e| e.to_string())?;
        if v[0] != want[i] {
            return Err(format!(
                "rank {me}: axis {i} summed {} (want {})",
                v[0], want[i]
            ));
        }
    }
    if g.tp.rank() != c.tp || g.dp.rank() != c.dp {
        return Err(format!(
            "rank {me}: axis ranks {} {} for {c:?}",
            g.tp.rank(),
            g.dp.rank()
        ));
    }
    // kept alive to the end of the run (see the module docs)
    std::mem::forget(g);
    Ok(())
}
