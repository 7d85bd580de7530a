//! The step's statistics agreed across ranks: the loss is averaged and
//! (under ZeRO-1) the gradient sum of squares summed, in the step-stats
//! block (`kiln_abi::stats`) before `step_control` turns them into the clip
//! factor and the skip flag. Every rank then sees the same numbers, so no
//! rank steps while another skips.

use kiln_abi::stats::{STAT_GRAD_SUMSQ, STAT_LOSS};
use kiln_abi::{BackendBox, BackendExt, BufId};

use super::DpError;
use crate::comm::{Communicator, ReduceOp};

/// Averages `stats[STAT_LOSS]` over the ranks; with `sum_sumsq`, also sums
/// `stats[STAT_GRAD_SUMSQ]` (each rank holding its shard's part).
pub fn agree_stats(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    stats: BufId,
    sum_sumsq: bool,
) -> Result<(), DpError> {
    let mut block = be.download_f32(stats)?;
    let mut pair = [block[STAT_LOSS], block[STAT_GRAD_SUMSQ]];
    comm.all_reduce(&mut pair, ReduceOp::Sum)?;
    block[STAT_LOSS] = pair[0] / comm.world() as f32;
    if sum_sumsq {
        block[STAT_GRAD_SUMSQ] = pair[1];
    }
    be.upload_f32(stats, &block)?;
    Ok(())
}
