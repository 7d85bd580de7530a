//! Data parallelism for the alignment stages: every rank holds the whole
//! policy, takes its share of each step's items (chats, pairs), and the
//! ranks agree on one update.
//!
//! The objectives weight their gradients by the step's *global* count (the
//! counted tokens of SFT, the pairs of the reward model and DPO), found
//! with [`Replicas::sum`] before backward; the gradients are then summed
//! across ranks ([`Replicas::sum_grads`]), so N ranks at batch B compute
//! what one process computes at batch N·B. Losses and logged figures are
//! sums reduced the same way. Every rank then sees the same gradients and
//! loss, so the clip factor, the non-finite guard and the f16 loss scale
//! decide the same on all of them: no rank steps while another skips.
//!
//! Rank 0 alone writes metrics, summaries and models (the callers pass
//! the metrics log to rank 0 only).

use std::ops::Range;

use kiln_abi::BackendBox;
use kiln_optim::ParamRef;
use kiln_parallel::comm::ReduceOp;
use kiln_parallel::data_parallel::{reduce_grads, DataParallel, Zero};

use crate::AlignError;

/// One process alone, or one rank of a data-parallel group.
#[derive(Default)]
pub struct Replicas {
    dp: Option<DataParallel>,
}

impl Replicas {
    /// A single process: every share is everything, sums are identities.
    pub fn single() -> Self {
        Replicas { dp: None }
    }

    /// One rank of `dp`'s group. ZeRO-1 is refused: the alignment stages
    /// keep the whole optimizer state on every rank.
    pub fn of(dp: DataParallel) -> Result<Self, AlignError> {
        if dp.zero() != Zero::Off {
            return Err(AlignError::Config(
                "--zero 1 is for pretraining only; the alignment stages keep the whole \
                 optimizer state on every data-parallel rank (use --zero 0)"
                    .into(),
            ));
        }
        Ok(Replicas { dp: Some(dp) })
    }

    pub fn rank(&self) -> usize {
        self.dp.as_ref().map_or(0, DataParallel::rank)
    }

    pub fn world(&self) -> usize {
        self.dp.as_ref().map_or(1, DataParallel::world)
    }

    /// Rank 0 reports and writes.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's contiguous part of `n` items: the ranks' parts are in
    /// rank order, cover all `n`, and differ in size by at most one (a rank
    /// may get none at the end of an epoch; it still joins the sums).
    pub fn share(&self, n: usize) -> Range<usize> {
        let (r, w) = (self.rank(), self.world());
        let (base, extra) = (n / w, n % w);
        let start = r * base + r.min(extra);
        start..start + base + usize::from(r < extra)
    }

    /// This rank's part of `items` ([`Replicas::share`]).
    pub fn part<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        &items[self.share(items.len())]
    }

    /// Replaces each value by its sum over the ranks (in rank order, so
    /// every rank gets the same bits). The sum is taken in f32.
    pub fn sum(&mut self, values: &mut [f64]) -> Result<(), AlignError> {
        let Some(dp) = self.dp.as_mut() else {
            return Ok(());
        };
        let mut flat: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        dp.comm()
            .all_reduce(&mut flat, ReduceOp::Sum)
            .map_err(parallel)?;
        for (v, s) in values.iter_mut().zip(flat) {
            *v = s as f64;
        }
        Ok(())
    }

    /// Sums the gradients of `refs` over the ranks, in ~25 MB buckets.
    pub fn sum_grads(&mut self, be: &mut BackendBox, refs: &[ParamRef]) -> Result<(), AlignError> {
        let Some(dp) = self.dp.as_mut() else {
            return Ok(());
        };
        let bytes = dp.bucket_bytes();
        reduce_grads(be, dp.comm(), refs, bytes, ReduceOp::Sum).map_err(parallel)
    }

    /// Tells the other ranks this one failed, so they stop waiting for it.
    pub fn poison(&self, reason: &str) {
        if let Some(dp) = &self.dp {
            dp.poison(reason);
        }
    }
}

fn parallel(e: impl std::fmt::Display) -> AlignError {
    AlignError::Parallel(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_parallel::comm::{Communicator, ThreadComm};
    use std::time::Duration;

    #[test]
    fn shares_cover_the_items_in_rank_order() {
        for world in 1..=5 {
            for n in 0..12 {
                let parts: Vec<Range<usize>> = ThreadComm::group(world, Duration::from_secs(5))
                    .into_iter()
                    .map(|c| {
                        Replicas::of(DataParallel::new(Box::new(c), Zero::Off))
                            .unwrap()
                            .share(n)
                    })
                    .collect();
                let mut next = 0;
                for p in &parts {
                    assert_eq!(p.start, next, "world {world} n {n}: {parts:?}");
                    next = p.end;
                }
                assert_eq!(next, n);
                let (lo, hi) = (
                    parts.iter().map(|p| p.len()).min().unwrap(),
                    parts.iter().map(|p| p.len()).max().unwrap(),
                );
                assert!(hi - lo <= 1, "{parts:?}");
            }
        }
    }

    #[test]
    fn sums_agree_and_zero_one_is_refused() {
        let comms = ThreadComm::group(3, Duration::from_secs(5));
        let sums: Vec<Vec<f64>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f64;
                        let mut rep =
                            Replicas::of(DataParallel::new(Box::new(c), Zero::Off)).unwrap();
                        let mut v = [r, 1.0];
                        rep.sum(&mut v).unwrap();
                        v.to_vec()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(sums.iter().all(|v| v == &[3.0, 3.0]), "{sums:?}");
        let c = ThreadComm::group(1, Duration::from_secs(1)).pop().unwrap();
        let e = Replicas::of(DataParallel::new(Box::new(c), Zero::Stage1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--zero 0"), "{e}");
        let mut one = Replicas::single();
        let mut v = [2.5];
        one.sum(&mut v).unwrap();
        assert_eq!((v[0], one.share(7), one.is_leader()), (2.5, 0..7, true));
    }
}
