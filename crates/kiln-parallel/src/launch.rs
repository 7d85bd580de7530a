//! Which launcher started this process, and as which rank of how many.
//!
//! `mpirun -np 4 kiln pretrain ...` or `srun -n 4 kiln pretrain ...` start
//! four copies of the binary; each learns its rank and the world size only
//! from the environment its launcher sets. A build that cannot join them in
//! one run must notice, or the four copies would each train the whole run
//! and overwrite each other's checkpoints in the same `--out`.
//!
//! Read, in this order (the first launcher found wins):
//! - Open MPI's `mpirun`/`mpiexec`: `OMPI_COMM_WORLD_RANK` / `_SIZE`;
//! - MPICH, Intel MPI and other Hydra/PMI launchers: `PMI_RANK` / `PMI_SIZE`;
//! - Slurm's `srun`: `SLURM_PROCID` / `SLURM_STEP_NUM_TASKS`. The step's
//!   task count, not the allocation's `SLURM_NTASKS`: a batch script that
//!   asked for 4 tasks but runs `kiln` without `srun` is one process.

use std::fmt;

/// This process's place in a multi-process launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The launcher, as the user would name it.
    pub launcher: &'static str,
    /// The environment variable that gave the world size (for messages).
    pub size_var: &'static str,
    pub rank: usize,
    pub world: usize,
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} of {} started by {} ({}={})",
            self.rank, self.world, self.launcher, self.size_var, self.world
        )
    }
}

/// (launcher, rank variable, size variable), in detection order.
const LAUNCHERS: [(&str, &str, &str); 3] = [
    (
        "mpirun (Open MPI)",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
    ),
    ("an MPI launcher (PMI)", "PMI_RANK", "PMI_SIZE"),
    ("srun (Slurm)", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
];

/// The launch this process is part of, read through `var` (the process
/// environment in [`detect`]); `None` when no launcher set both variables.
/// A malformed value is an error naming the variable, not a guess.
pub fn detect_with(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, String> {
    for (launcher, rank_var, size_var) in LAUNCHERS {
        let (Some(rank), Some(world)) = (var(rank_var), var(size_var)) else {
            continue;
        };
        let parse = |name: &str, value: &str| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("{name}={value:?} (set by {launcher}) is not a whole number"))
        };
        let (rank, world) = (parse(rank_var, &rank)?, parse(size_var, &world)?);
        if world == 0 || rank >= world {
            return Err(format!(
                "{rank_var}={rank} and {size_var}={world} (set by {launcher}) do not \
                 describe a rank of a world: the rank must be below the size"
            ));
        }
        return Ok(Some(Launch {
            launcher,
            size_var,
            rank,
            world,
        }));
    }
    Ok(None)
}

/// [`detect_with`] on this process's environment.
pub fn detect() -> Result<Option<Launch>, String> {
    detect_with(|name| std::env::var(name).ok())
}

/// How many ranks of the launch share this node (Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, Hydra's `MPI_LOCALNRANKS`, Slurm's
/// `SLURM_NTASKS_PER_NODE` when it is one number); 1 when no launcher says.
pub fn local_ranks() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
    .filter(|&n| n > 0)
    .unwrap_or(1)
}

/// An `mpirun` that starts `np` copies of a test program on this machine:
/// Open MPI's, oversubscribed (more ranks than cores is fine for tests) and
/// allowed to run as root (CI containers); `None` when no Open MPI
/// `mpirun` is on PATH (the multi-process tests then skip, saying so).
pub fn test_mpirun(np: usize) -> Option<std::process::Command> {
    let version = std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&version.stdout).into_owned()
        + &String::from_utf8_lossy(&version.stderr);
    if !text.contains("Open MPI") && !text.contains("OpenRTE") {
        return None;
    }
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args(["--oversubscribe", "--allow-run-as-root", "-np"])
        .arg(np.to_string())
        // no shared-memory segment warnings in containers with a small /dev/shm
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    Some(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, String> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect_with(|name| env.get(name).cloned())
    }

    #[test]
    fn no_launcher_is_a_single_process() {
        assert_eq!(launch(&[]), Ok(None));
        // A batch script's allocation alone is not a launch.
        assert_eq!(
            launch(&[("SLURM_NTASKS", "4"), ("SLURM_PROCID", "0")]),
            Ok(None)
        );
        // One variable of a pair is not enough.
        assert_eq!(launch(&[("OMPI_COMM_WORLD_SIZE", "4")]), Ok(None));
    }

    #[test]
    fn each_launcher_gives_rank_and_world() {
        let ompi = launch(&[("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (ompi.rank, ompi.world, ompi.size_var),
            (3, 4, "OMPI_COMM_WORLD_SIZE")
        );
        let pmi = launch(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")])
            .unwrap()
            .unwrap();
        assert_eq!((pmi.rank, pmi.world), (1, 2));
        let slurm = launch(&[("SLURM_PROCID", "5"), ("SLURM_STEP_NUM_TASKS", "8")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (slurm.rank, slurm.world, slurm.launcher),
            (5, 8, "srun (Slurm)")
        );
        assert_eq!(
            slurm.to_string(),
            "rank 5 of 8 started by srun (Slurm) (SLURM_STEP_NUM_TASKS=8)"
        );
    }

    #[test]
    fn mpirun_inside_a_slurm_job_is_the_mpi_launch() {
        // mpirun under an allocation: Open MPI's own variables describe the job.
        let l = launch(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world), (2, 4));
    }

    #[test]
    fn malformed_values_are_named() {
        let err = launch(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")]).unwrap_err();
        assert!(err.contains("PMI_RANK=\"x\""), "{err}");
        let err =
            launch(&[("OMPI_COMM_WORLD_RANK", "4"), ("OMPI_COMM_WORLD_SIZE", "4")]).unwrap_err();
        assert!(err.contains("below the size"), "{err}");
        let err = launch(&[("PMI_RANK", "0"), ("PMI_SIZE", "0")]).unwrap_err();
        assert!(err.contains("PMI_SIZE=0"), "{err}");
    }
}
