//! The communicator: collectives between the ranks of a parallel run.
//!
//! - [`Communicator`] (this file): the contract every backend keeps.
//! - [`error`]: [`CommError`], which always names the rank and the operation.
//! - [`thread`]: [`ThreadComm`], N ranks as threads of one process.
//! - `mpi` (feature `mpi`): `MpiComm`, N ranks as processes under
//!   `mpirun`/`srun`, from MPI's non-blocking point-to-point calls.
//! - [`suite`]: the contract as per-rank checks, run on every implementation.
//! - [`grid`]: the process grid (tp innermost, then dp, then pp) and its
//!   per-axis sub-communicators.
//!
//! Buffers are host `f32` slices. A backend without device collectives
//! stages through `download`/`upload` (or `Backend::host_region`); a device
//! communicator (NCCL through `Backend::collective`) can implement the same
//! trait later, keeping the rank-ordered sum below.
//!
//! Two promises hold for every implementation:
//! - **Rank-ordered sums.** A reduction adds the contributions in rank order
//!   `0, 1, .., N-1`, whatever order they arrive in, so every rank gets the
//!   same bits and a run does not depend on timing.
//! - **No hangs.** Every blocking call has a deadline; a rank that is dead,
//!   late, or failed makes the others return a [`CommError`] naming it and
//!   the operation. A rank that fails [`Communicator::poison`]s the group so
//!   the others fail fast instead of waiting for the deadline.

mod error;
pub mod grid;
#[cfg(feature = "mpi")]
mod mpi;
#[doc(hidden)]
pub mod suite;
mod thread;

#[cfg(feature = "mpi")]
pub use self::mpi::{MpiComm, MpiRuntime};
pub use error::CommError;
pub use grid::{GridComms, ProcessGrid};
pub use thread::ThreadComm;

use std::time::Duration;

/// The default deadline of one blocking operation (`--comm-timeout-s`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The rank-ordered sum.
    Sum,
    /// The rank-ordered sum divided by the world size.
    Average,
}

/// Collectives and point-to-point messages between `world()` ranks.
///
/// Every rank calls the same collectives in the same order with matching
/// lengths; a mismatch is an error on every rank, not a hang.
pub trait Communicator: Send {
    /// This rank, `0..world()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;

    /// Every rank's `buf` combined (in rank order) into every rank's `buf`.
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError>;
    /// `input` (`world() * out.len()` values) reduced across ranks; rank r
    /// keeps chunk r in `out`.
    fn reduce_scatter(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CommError>;
    /// Every rank's `input` laid end to end, in rank order, into `out`
    /// (`world() * input.len()` values).
    fn all_gather(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), CommError>;
    /// `root`'s `buf` copied into every rank's `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// `send[d]` goes to rank d; the result's entry s came from rank s
    /// (lengths may differ per pair).
    fn all_to_all_v(&mut self, send: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, CommError>;
    /// Sends `buf` to rank `dst` (does not wait for the receiver).
    fn send(&mut self, buf: &[f32], dst: usize) -> Result<(), CommError>;
    /// Receives the next message from rank `src` into `buf` (same length).
    fn recv(&mut self, buf: &mut [f32], src: usize) -> Result<(), CommError>;
    /// Returns once every rank has reached it.
    fn barrier(&mut self) -> Result<(), CommError>;
    /// Marks the group failed: every rank's next (or current) blocking call
    /// returns an error quoting `reason`.
    fn poison(&self, reason: &str);

    /// [`Communicator::all_to_all_v`] with equal chunks: chunk d of `input`
    /// goes to rank d, chunk s of `out` came from rank s.
    fn all_to_all(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let n = self.world();
        if !input.len().is_multiple_of(n) || out.len() != input.len() {
            return Err(CommError::Mismatch {
                rank: self.rank(),
                op: "all_to_all",
                problem: format!(
                    "input of {} and output of {} values for {n} ranks (equal chunks needed)",
                    input.len(),
                    out.len()
                ),
            });
        }
        let chunk = input.len() / n;
        let send: Vec<Vec<f32>> = input.chunks(chunk.max(1)).map(<[f32]>::to_vec).collect();
        let send = if chunk == 0 {
            vec![Vec::new(); n]
        } else {
            send
        };
        for (s, part) in self.all_to_all_v(&send)?.into_iter().enumerate() {
            out[s * chunk..(s + 1) * chunk].copy_from_slice(&part);
        }
        Ok(())
    }
}

/// Adds `parts` element-wise in the order given (rank order) into `out`,
/// then divides by the count for [`ReduceOp::Average`].
pub(crate) fn rank_ordered_reduce<'a>(
    parts: impl IntoIterator<Item = &'a [f32]>,
    out: &mut [f32],
    op: ReduceOp,
) {
    let mut count = 0usize;
    for part in parts {
        if count == 0 {
            out.copy_from_slice(part);
        } else {
            for (o, x) in out.iter_mut().zip(part) {
                *o += x;
            }
        }
        count += 1;
    }
    if op == ReduceOp::Average && count > 0 {
        let n = count as f32;
        out.iter_mut().for_each(|o| *o /= n);
    }
}

#[cfg(test)]
mod tests;

/// Why a reduce_scatter's buffers do not fit (`input` must be `world`
/// outputs), for every communicator's mismatch error.
pub(crate) fn scatter_shape_problem(input: usize, out: usize, world: usize) -> Option<String> {
    (input != out * world)
        .then(|| format!("input of {input} values is not {world} ranks x output of {out}"))
}

/// Why an all_gather's buffers do not fit (`out` must be `world` inputs).
pub(crate) fn gather_shape_problem(input: usize, out: usize, world: usize) -> Option<String> {
    (out != input * world)
        .then(|| format!("output of {out} values is not {world} ranks x input of {input}"))
}
