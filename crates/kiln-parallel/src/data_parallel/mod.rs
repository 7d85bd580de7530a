//! Data parallelism: every rank holds the whole model, reads its own slice
//! of the global batch, and the ranks agree on one update per step.
//!
//! The trainer (kiln-train) runs the step; this module supplies the parts
//! that talk to the other ranks:
//!
//! - [`buckets`]: gradients averaged in flat ~25 MB buckets, last
//!   parameter first (the order backward produces them).
//! - [`zero`]: ZeRO-1, the optimizer state and master weights sharded
//!   over the ranks (reduce-scatter, AdamW on the shard, all-gather).
//! - [`agree`]: the loss and the gradient sum of squares combined across
//!   ranks, so the clip factor and the skip decision are the same everywhere.
//!
//! Every collective sums in rank order, so the ranks stay bit-identical.

pub mod agree;
pub mod buckets;
pub mod zero;

use kiln_abi::BackendError;
use kiln_optim::OptimError;

use crate::comm::{CommError, Communicator};

pub use buckets::{plan_buckets, reduce_grads, DEFAULT_BUCKET_BYTES};
pub use zero::Shard;

/// Which ZeRO stage a data-parallel run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// Every rank holds the whole optimizer state and does the whole update.
    Off,
    /// Optimizer state and master weights sharded across the ranks.
    Stage1,
}

impl Zero {
    /// `--zero 0|1`.
    pub fn from_level(level: u8) -> Result<Zero, String> {
        match level {
            0 => Ok(Zero::Off),
            1 => Ok(Zero::Stage1),
            n => Err(format!(
                "--zero {n}: only 0 (off) and 1 (sharded optimizer state) exist"
            )),
        }
    }
}

/// Why a data-parallel step failed.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
}

/// One rank's share of a data-parallel run.
pub struct DataParallel {
    comm: Box<dyn Communicator>,
    zero: Zero,
    bucket_bytes: usize,
}

impl DataParallel {
    pub fn new(comm: Box<dyn Communicator>, zero: Zero) -> Self {
        DataParallel {
            comm,
            zero,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// Smaller buckets (tests exercise several buckets on a tiny model).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world(&self) -> usize {
        self.comm.world()
    }

    /// Rank 0 prints, writes metrics and checkpoints.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    pub fn zero(&self) -> Zero {
        self.zero
    }

    pub fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }

    pub fn comm(&mut self) -> &mut dyn Communicator {
        self.comm.as_mut()
    }

    /// Tells the other ranks this one failed, so they stop waiting for it.
    pub fn poison(&self, reason: &str) {
        self.comm.poison(reason);
    }
}
