//! What a failed collective reports: always the rank that saw it, the
//! operation, and (where known) the rank that caused it.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommError {
    /// Ranks that had not joined `op` when the deadline passed.
    #[error(
        "rank {rank}: {op} timed out after {timeout:?} waiting for rank(s) {missing:?} \
         (a rank died, stalled, or called another operation; raise --comm-timeout-s if it is just slow)"
    )]
    Timeout {
        rank: usize,
        op: &'static str,
        missing: Vec<usize>,
        timeout: Duration,
    },
    /// Another rank failed (error, panic, timeout) and poisoned the group.
    #[error("rank {rank}: {op} aborted: {reason}")]
    Poisoned {
        rank: usize,
        op: &'static str,
        reason: String,
    },
    /// A rank left (dropped its communicator) while this one waited for it.
    #[error("rank {rank}: {op} cannot complete: rank {peer} has left the communicator")]
    PeerLeft {
        rank: usize,
        op: &'static str,
        peer: usize,
    },
    /// Ranks called different operations or gave inconsistent lengths.
    #[error("rank {rank}: {op}: {problem}")]
    Mismatch {
        rank: usize,
        op: &'static str,
        problem: String,
    },
}
