//! `--dp N` for `kiln sft`, `kiln reward` and `kiln dpo`: N data-parallel
//! ranks as threads of this process, each with its own backend and its own
//! copy of the model ([`kiln_align::replicas`]).
//!
//! The command prepares the run once (data, reference log-probs, --out);
//! rank 0 trains on this thread with what it prepared, prints and writes;
//! every other rank loads its own copy, trains hidden and writes nothing.
//! A rank that fails poisons the group, so the others stop at their next
//! collective, and the command fails naming the rank that failed first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use kiln_align::replicas::Replicas;
use kiln_parallel::comm::{CommError, Communicator, ReduceOp, ThreadComm};
use kiln_parallel::data_parallel::{DataParallel, Zero};

/// The data-parallel flags of the alignment commands.
#[derive(clap::Args, Debug, Clone)]
pub struct DpArgs {
    /// Data-parallel ranks, run as threads of this process, each with its
    /// own copy of the model. --batch-size is per rank (the global batch is
    /// N times it), and so is --threads (default: the cores split between
    /// the ranks). Rank 0 prints and writes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub dp: usize,
    /// ZeRO stage: only 0 here (every rank keeps the whole optimizer state;
    /// ZeRO-1 is for `kiln pretrain`).
    #[arg(long, default_value_t = 0, value_name = "0")]
    pub zero: u8,
    /// Seconds a rank waits in one collective before it fails the run,
    /// naming the rank(s) it waited for.
    #[arg(long, default_value_t = 600, value_name = "S")]
    pub comm_timeout_s: u64,
}

impl Default for DpArgs {
    /// One process (what the pipeline runs).
    fn default() -> Self {
        DpArgs {
            dp: 1,
            zero: 0,
            comm_timeout_s: 600,
        }
    }
}

impl DpArgs {
    /// The ranks of a run with `threads` (--threads) compute threads per
    /// rank. Made before anything loads, so bad flags fail at once.
    pub fn ranks(&self, threads: Option<usize>) -> Result<Ranks> {
        let n = self.dp;
        if n == 0 {
            bail!("--dp 0: a run needs at least one rank (--dp 1 is a single process)");
        }
        let zero = Zero::from_level(self.zero).map_err(anyhow::Error::msg)?;
        if n == 1 && zero == Zero::Off {
            return Ok(Ranks {
                members: Vec::new(),
                threads,
            });
        }
        let timeout = Duration::from_secs(self.comm_timeout_s.max(1));
        let members = ThreadComm::group(n, timeout)
            .into_iter()
            .map(|c| Member::new(c, zero))
            .collect::<Result<Vec<_>>>()?;
        // The cores are shared between the ranks unless --threads says otherwise.
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        Ok(Ranks {
            members,
            threads: Some(threads.unwrap_or((cores / n).max(1))),
        })
    }
}

/// The ranks of one run (none: a single process).
pub struct Ranks {
    members: Vec<Member>,
    threads: Option<usize>,
}

impl Ranks {
    pub fn world(&self) -> usize {
        self.members.len().max(1)
    }

    /// Compute threads for each rank's backend (None: all cores).
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }

    /// Says how a data-parallel run is split (nothing for one process).
    pub fn announce(&self, batch: usize, unit: &str) {
        let n = self.members.len();
        if n > 1 {
            eprintln!(
                "data parallel: {n} thread ranks x {batch} {unit} (global batch {}), {} compute \
                 thread(s) per rank",
                batch * n,
                self.threads.unwrap_or(1)
            );
        }
    }

    /// Runs rank 0 (`leader`, on this thread) and every other rank
    /// (`follower`, a thread each) to the end. Returns rank 0's result, or
    /// the error of the rank that failed first, naming it.
    pub fn run<T>(
        self,
        leader: impl FnOnce(Replicas) -> Result<T>,
        follower: impl Fn(Replicas) -> Result<()> + Sync,
    ) -> Result<T> {
        let world = self.members.len();
        let mut members = self.members.into_iter();
        let Some(first) = members.next() else {
            return leader(Replicas::single());
        };
        let failed = Mutex::new(Vec::new());
        let (lead, mut errors) = std::thread::scope(|s| {
            let handles: Vec<_> = members
                .map(|m| {
                    let (follower, failed) = (&follower, &failed);
                    s.spawn(move || m.run(follower, failed))
                })
                .collect();
            let lead = first.run(leader, &failed);
            let errors: BTreeMap<usize, anyhow::Error> = handles
                .into_iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    let rank = i + 1;
                    let result = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("rank {rank} panicked")));
                    result.err().map(|e| (rank, e))
                })
                .collect();
            (lead, errors)
        });
        let value = lead.map_err(|e| errors.insert(0, e)).ok();
        let order = failed.into_inner().unwrap_or_else(PoisonError::into_inner);
        match first_failure(&order, &errors) {
            Some(rank) => {
                let e = errors.remove(&rank).expect("a failed rank");
                Err(e.context(format!("data-parallel rank {rank} of {world}")))
            }
            None => value.ok_or_else(|| anyhow!("rank 0 gave no result")),
        }
    }
}

/// The rank to blame: the first to fail (the others then failed on its
/// poison), else the lowest that failed (a panic records no order).
fn first_failure(order: &[usize], errors: &BTreeMap<usize, anyhow::Error>) -> Option<usize> {
    order
        .iter()
        .copied()
        .find(|r| errors.contains_key(r))
        .or_else(|| errors.keys().next().copied())
}

/// One rank: its [`Replicas`] and a handle on the same communicator, kept
/// to poison the group after the training call consumed the replicas.
struct Member {
    replicas: Replicas,
    comm: SharedComm,
}

impl Member {
    fn new(comm: ThreadComm, zero: Zero) -> Result<Member> {
        let comm = SharedComm(Arc::new(Mutex::new(comm)));
        let dp = DataParallel::new(Box::new(comm.clone()), zero);
        // Replicas::of refuses ZeRO-1 with the message the user needs.
        let replicas = Replicas::of(dp)?;
        Ok(Member { replicas, comm })
    }

    /// Runs `body` as this rank; a failure is recorded, then poisons the
    /// group (in that order, so the first recorded is the first failure).
    fn run<T>(
        self,
        body: impl FnOnce(Replicas) -> Result<T>,
        failed: &Mutex<Vec<usize>>,
    ) -> Result<T> {
        let rank = self.replicas.rank();
        let result = body(self.replicas);
        if let Err(e) = &result {
            failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(rank);
            self.comm.poison(&format!("{e:#}"));
        }
        result
    }
}

/// A [`ThreadComm`] shared by a rank's replicas and its [`Member`].
#[derive(Clone)]
struct SharedComm(Arc<Mutex<ThreadComm>>);

impl SharedComm {
    fn lock(&self) -> MutexGuard<'_, ThreadComm> {
        // Only this rank's thread locks it; a panic there ends the rank anyway.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Communicator for SharedComm {
    fn rank(&self) -> usize {
        self.lock().rank()
    }
    fn world(&self) -> usize {
        self.lock().world()
    }
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        self.lock().all_reduce(buf, op)
    }
    fn reduce_scatter(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CommError> {
        self.lock().reduce_scatter(input, out, op)
    }
    fn all_gather(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        self.lock().all_gather(input, out)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        self.lock().broadcast(buf, root)
    }
    fn all_to_all_v(&mut self, send: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, CommError> {
        self.lock().all_to_all_v(send)
    }
    fn all_to_all(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        self.lock().all_to_all(input, out)
    }
    fn send(&mut self, buf: &[f32], dst: usize) -> Result<(), CommError> {
        self.lock().send(buf, dst)
    }
    fn recv(&mut self, buf: &mut [f32], src: usize) -> Result<(), CommError> {
        self.lock().recv(buf, src)
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        self.lock().barrier()
    }
    fn poison(&self, reason: &str) {
        self.lock().poison(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_ranks() -> Ranks {
        let dp = DpArgs {
            dp: 2,
            zero: 0,
            comm_timeout_s: 30,
        };
        dp.ranks(Some(1)).unwrap()
    }

    #[test]
    fn rank_zero_gives_the_result_when_every_rank_succeeds() {
        let sum = two_ranks().run(
            |mut r| {
                let mut v = [1.0];
                r.sum(&mut v)?;
                Ok(v[0])
            },
            |mut r| Ok(r.sum(&mut [2.0])?),
        );
        assert_eq!(sum.unwrap(), 3.0);
    }

    #[test]
    fn a_failing_rank_stops_rank_zero_and_is_the_one_named() {
        let err = two_ranks()
            .run(
                // Rank 0 would sum forever; rank 1's poison ends it.
                |mut r| -> Result<()> {
                    loop {
                        r.sum(&mut [1.0])?;
                    }
                },
                |_| bail!("disk full"),
            )
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("data-parallel rank 1 of 2: disk full"),
            "{msg}"
        );
    }
}
