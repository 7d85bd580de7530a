//! Megatron's conjugate collectives `f` and `g`, and the host-staged
//! all-reduces they use.
//!
//! A tensor-parallel region starts where every rank holds the same tensor
//! and each multiplies it by its own slice of a weight (column-parallel),
//! and ends where each rank holds a partial sum that must be added up
//! (row-parallel). `f` marks the start, `g` the end; each is the other's
//! transpose, so the backward swaps what they do.

use kiln_abi::{BackendBox, BackendExt, BufId};

use super::TpError;
use crate::comm::{Communicator, ReduceOp};

/// Which direction of the pass a collective is called in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
}

/// `f`, entering a tensor-parallel region: identity forward (every rank
/// already holds the whole input), all-reduce backward (each rank only has
/// the part of the input's gradient that flows through its weight slice).
pub fn f(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    buf: BufId,
    pass: Pass,
) -> Result<(), TpError> {
    match pass {
        Pass::Forward => Ok(()),
        Pass::Backward => all_reduce_sum(be, comm, buf),
    }
}

/// `g`, leaving a tensor-parallel region: all-reduce forward (partial sums
/// of a row-parallel product), identity backward (the output's gradient is
/// the same on every rank and is what each partial sum receives).
pub fn g(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    buf: BufId,
    pass: Pass,
) -> Result<(), TpError> {
    match pass {
        Pass::Forward => all_reduce_sum(be, comm, buf),
        Pass::Backward => Ok(()),
    }
}

/// `buf` (all of it) summed over the ranks in place, through the host.
pub fn all_reduce_sum(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    buf: BufId,
) -> Result<(), TpError> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut host = be.download_f32(buf)?;
    comm.all_reduce(&mut host, ReduceOp::Sum)?;
    be.upload_f32(buf, &host)?;
    Ok(())
}

/// Element-wise maximum over the ranks. The communicator only sums, so
/// this gathers every rank's values and takes the max locally (the same
/// on every rank: every rank sees the same gathered values).
pub fn all_reduce_max(comm: &mut dyn Communicator, buf: &mut [f32]) -> Result<(), TpError> {
    let (n, world) = (buf.len(), comm.world());
    if world == 1 {
        return Ok(());
    }
    let mut all = vec![0f32; n * world];
    comm.all_gather(buf, &mut all)?;
    for (i, x) in buf.iter_mut().enumerate() {
        *x = (0..world)
            .map(|r| all[r * n + i])
            .fold(f32::NEG_INFINITY, f32::max);
    }
    Ok(())
}
