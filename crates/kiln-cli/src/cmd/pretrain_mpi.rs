//! `mpirun -np N kiln pretrain ...` (or `srun`): this process is one
//! data-parallel rank of N, talking to the others over MPI
//! (`kiln_parallel::comm::MpiComm`). The same trainer as `--dp N` threads;
//! only the communicator differs.
//!
//! - `--batch-size` is per rank; the global batch is N times it.
//! - Rank 0 alone prints progress and writes metrics and checkpoints (one
//!   plain run directory, whatever N); under ZeRO-1 it gathers the
//!   optimizer shards before each checkpoint.
//! - A failing rank prints its error, poisons the others (they fail at
//!   their next collective, naming it) and, after a short grace for their
//!   messages, ends the launch with `MPI_Abort`: no rank is left waiting
//!   in `MPI_Finalize`. A rank killed outright is noticed by the launcher,
//!   which ends the others.

use std::path::PathBuf;
use std::time::Duration;

use kiln_parallel::comm::{MpiRuntime, ProcessGrid};
use kiln_parallel::data_parallel::{DataParallel, Zero};
use kiln_parallel::launch::Launch;
use kiln_train::{Quiet, Ranks, TrainConfig};

use super::pretrain::{open_trainer, ranks_of, train_and_report, Args};

/// How long a failing rank waits for the others to print before it ends
/// the launch.
const GRACE: Duration = Duration::from_secs(2);

/// Runs this rank to the end; on any error, ends every rank of the launch.
pub fn run(
    config: TrainConfig,
    args: &Args,
    resume_from: &Option<(u64, PathBuf)>,
    threads: Option<usize>,
    zero: Zero,
    launch: &Launch,
) -> anyhow::Result<()> {
    let rt = MpiRuntime::init().map_err(anyhow::Error::msg)?;
    let timeout = Duration::from_secs(args.comm_timeout_s.max(1));
    let rank = launch.rank;
    let grid = ProcessGrid {
        tp: args.tp,
        dp: launch.world / (args.tp * args.pp),
        pp: args.pp,
    };
    let threads = threads.unwrap_or_else(super::launch::threads_per_rank);
    if rank == 0 {
        eprintln!(
            "parallel over MPI: {} ranks (dp {} x tp {} x pp {}), batch {} per data-parallel \
             rank (global batch {}), zero {}, {threads} compute thread(s) per rank, collective \
             timeout {}s",
            launch.world,
            grid.dp,
            grid.tp,
            grid.pp,
            config.batch_size,
            config.batch_size * grid.dp,
            args.zero,
            timeout.as_secs()
        );
    }
    let result = (|| {
        let ranks = if grid.tp * grid.pp == 1 {
            // Data parallel alone: the world communicator, whose timeouts
            // name the ranks that did not arrive (a split one's list came
            // out empty in the stalled-rank test; not yet understood).
            Ranks {
                dp: Some(DataParallel::new(Box::new(rt.world(timeout)), zero)),
                ..Ranks::default()
            }
        } else {
            ranks_of(rt.grid(grid, timeout).map_err(anyhow::Error::msg)?, zero)
        };
        let be = crate::backend::open(&args.backend, Some(threads))?;
        let mut trainer = open_trainer(be, config, args, resume_from, ranks)?;
        if rank == 0 {
            train_and_report(trainer, args)
        } else {
            trainer.run(&mut Quiet)?;
            Ok(())
        }
    })();
    match result {
        Ok(()) => Ok(()), // every rank finishes the same steps; MPI finalises on drop
        Err(err) => {
            eprintln!("error: MPI rank {rank} of {}: {err}", launch.world);
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::thread::sleep(GRACE);
            rt.abort(2)
        }
    }
}
