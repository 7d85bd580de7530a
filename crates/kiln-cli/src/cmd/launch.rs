//! What `kiln` does when a launcher (`mpirun -np 4 kiln ...`, `srun -n 4
//! kiln ...`) started it as one rank of several.
//!
//! Built with `--features mpi`, `kiln pretrain` joins the launch as one
//! data-parallel rank (cmd/pretrain.rs); every other command, and every
//! command of a build without MPI, refuses before writing anything: the
//! copies would each run the whole job alone and overwrite each other's
//! `--out`. A world of one (`mpirun -np 1`) is a single process.

use anyhow::bail;
use kiln_parallel::launch::Launch;

/// The launch this process is part of, when it has more than one rank.
pub fn multi_process() -> anyhow::Result<Option<Launch>> {
    let launch = kiln_parallel::launch::detect()
        .map_err(|e| anyhow::anyhow!("reading the launcher's environment: {e}"))?;
    Ok(launch.filter(|l| l.world > 1))
}

/// An error unless this process may run `command` under its launch:
/// `joins_mpi` says whether the command can join the others as a rank.
pub fn check(command: &str, joins_mpi: bool) -> anyhow::Result<()> {
    let Some(l) = multi_process()? else {
        return Ok(());
    };
    if !cfg!(feature = "mpi") {
        bail!(
            "this process is {l}, but this kiln was built without MPI, so it cannot join \
             the other {} processes into one run: each would run the whole job alone and \
             overwrite the others' --out. Rebuild with `cargo build --release -p kiln-cli \
             --features mpi` (needs an MPI: Debian's libopenmpi-dev openmpi-bin libclang-dev), \
             or start one process: `kiln pretrain --dp N` trains N data-parallel ranks as \
             threads of it",
            l.world - 1
        );
    }
    if !joins_mpi {
        bail!(
            "this process is {l}, but `kiln {command}` runs as one process; only `kiln \
             pretrain` joins a multi-process launch. Start `kiln {command}` without \
             mpirun/srun"
        );
    }
    Ok(())
}

/// Compute threads per rank when the user gave none: the cores shared by
/// the ranks this launcher put on this node.
#[cfg(feature = "mpi")]
pub fn threads_per_rank() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    (cores / kiln_parallel::launch::local_ranks()).max(1)
}
