//! Refuses a multi-process launch (`mpirun -np 4 kiln ...`, `srun -n 4
//! kiln ...`) that this build cannot join into one run.

use anyhow::bail;

/// An error when a launcher started this process as one rank of several:
/// the copies would each run the whole job alone and overwrite each
/// other's `--out`. A world of one (`mpirun -np 1`) is a single process.
pub fn refuse_multi_process() -> anyhow::Result<()> {
    let launch = kiln_parallel::launch::detect()
        .map_err(|e| anyhow::anyhow!("reading the launcher's environment: {e}"))?;
    match launch {
        Some(l) if l.world > 1 => bail!(
            "this process is {l}, but kiln cannot join several processes into one run yet \
             (multi-process MPI training is still open work): each of the {} copies would \
             run the whole job alone and overwrite the others' --out. Start one process \
             instead; `kiln pretrain --dp N` trains N data-parallel ranks as threads of it",
            l.world
        ),
        _ => Ok(()),
    }
}
