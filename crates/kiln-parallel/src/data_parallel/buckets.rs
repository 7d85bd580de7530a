//! Gradient buckets: the gradients are averaged across ranks in flat
//! buckets of about [`DEFAULT_BUCKET_BYTES`], taking the parameters in
//! reverse order (backward finishes the last layers first, so a device
//! communicator can start on a bucket while backward still runs).

use kiln_abi::{BackendBox, BackendExt};
use kiln_optim::ParamRef;

use super::DpError;
use crate::comm::{Communicator, ReduceOp};

/// 25 MB, PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Parameter indices grouped into buckets: reverse parameter order, a new
/// bucket once the next tensor would push one past `bucket_bytes` of f32
/// (a tensor larger than that gets a bucket of its own).
pub fn plan_buckets(lens: &[usize], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let cap = (bucket_bytes / 4).max(1);
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for i in (0..lens.len()).rev() {
        match buckets.last_mut() {
            Some(b) if filled + lens[i] <= cap => b.push(i),
            _ => {
                buckets.push(vec![i]);
                filled = 0;
            }
        }
        filled += lens[i];
    }
    buckets
}

/// Replaces every rank's gradients by their average over the ranks, one
/// bucket at a time, staged through the host (16-bit gradients are widened
/// to f32 for the sum and rounded back).
pub fn all_reduce_grads(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    refs: &[ParamRef],
    bucket_bytes: usize,
) -> Result<(), DpError> {
    reduce_grads(be, comm, refs, bucket_bytes, ReduceOp::Average)
}

/// [`all_reduce_grads`] with the reduction named: `Sum` when each rank has
/// already weighted its gradients by its share of the step (the alignment
/// objectives divide by the step's global token or pair count).
pub fn reduce_grads(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    refs: &[ParamRef],
    bucket_bytes: usize,
    op: ReduceOp,
) -> Result<(), DpError> {
    let lens: Vec<usize> = refs.iter().map(|p| p.len).collect();
    for bucket in plan_buckets(&lens, bucket_bytes) {
        let mut flat = Vec::with_capacity(bucket.iter().map(|&i| lens[i]).sum());
        for &i in &bucket {
            flat.extend(be.download_widened(refs[i].grad)?);
        }
        comm.all_reduce(&mut flat, op)?;
        let mut at = 0;
        for &i in &bucket {
            be.upload_f32_as(refs[i].grad, &flat[at..at + lens[i]])?;
            at += lens[i];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plan_buckets;

    #[test]
    fn buckets_take_parameters_last_first_and_respect_the_cap() {
        // 4 bytes per element; cap 10 elements
        assert_eq!(
            plan_buckets(&[3, 4, 5, 20, 2, 2], 40),
            vec![vec![5, 4], vec![3], vec![2, 1], vec![0]]
        );
        assert_eq!(plan_buckets(&[1, 1, 1], 1 << 20), vec![vec![2, 1, 0]]);
        assert!(plan_buckets(&[], 40).is_empty());
    }
}
