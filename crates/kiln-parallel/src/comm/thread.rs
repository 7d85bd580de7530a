//! [`ThreadComm`]: N ranks as threads of one process (tests, one machine).
//!
//! Every collective is one *round* on a shared table: each rank deposits its
//! contribution in its slot, waits until all slots are full, reads what it
//! needs (reducing in rank order), and the last reader clears the table for
//! the next round. A deadline bounds every wait; poisoning and ranks that
//! leave wake the waiters at once.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{rank_ordered_reduce, CommError, Communicator, ReduceOp};

/// One rank's contribution to a round: the operation's name (to catch ranks
/// that disagree) and what it sends to each rank (one part = to all).
struct Contribution {
    op: &'static str,
    parts: Arc<Vec<Vec<f32>>>,
}

struct Table {
    /// Rounds completed; a rank joins round `seq` once `round == seq`.
    round: u64,
    slots: Vec<Option<Contribution>>,
    /// Which ranks have read the current (full) round.
    read: Vec<bool>,
    /// `mailboxes[src][dst]`: point-to-point messages in flight.
    mailboxes: Vec<Vec<VecDeque<Vec<f32>>>>,
    /// Set by the first failure; every later wait reports it.
    poisoned: Option<String>,
    left: Vec<bool>,
}

struct Shared {
    table: Mutex<Table>,
    changed: Condvar,
    timeout: Duration,
}

/// One rank's handle; made by [`ThreadComm::group`], moved into its thread.
pub struct ThreadComm {
    rank: usize,
    world: usize,
    /// Rounds this rank has joined.
    seq: u64,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// `world` connected handles, one per rank (index = rank), whose
    /// blocking calls give up after `timeout`.
    pub fn group(world: usize, timeout: Duration) -> Vec<ThreadComm> {
        assert!(world >= 1, "a communicator needs at least one rank");
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                round: 0,
                slots: (0..world).map(|_| None).collect(),
                read: vec![false; world],
                mailboxes: vec![vec![VecDeque::new(); world]; world],
                poisoned: None,
                left: vec![false; world],
            }),
            changed: Condvar::new(),
            timeout,
        });
        (0..world)
            .map(|rank| ThreadComm {
                rank,
                world,
                seq: 0,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A rank that panicked while holding the lock cannot corrupt the
        // table (every update is a single assignment); carry on.
        self.shared
            .table
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Waits until `ready` holds, or fails on poison, a departed rank among
    /// `blockers`, or the deadline (which poisons the group for the others).
    fn wait<'a>(
        &'a self,
        mut table: MutexGuard<'a, Table>,
        op: &'static str,
        deadline: Instant,
        ready: impl Fn(&Table) -> bool,
        blockers: impl Fn(&Table) -> Vec<usize>,
    ) -> Result<MutexGuard<'a, Table>, CommError> {
        loop {
            // A failed group fails every later call, even one that could complete.
            if let Some(reason) = &table.poisoned {
                return Err(CommError::Poisoned {
                    rank: self.rank,
                    op,
                    reason: reason.clone(),
                });
            }
            if ready(&table) {
                return Ok(table);
            }
            let missing = blockers(&table);
            if let Some(&peer) = missing.iter().find(|&&r| table.left[r]) {
                return Err(CommError::PeerLeft {
                    rank: self.rank,
                    op,
                    peer,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                let err = CommError::Timeout {
                    rank: self.rank,
                    op,
                    missing,
                    timeout: self.shared.timeout,
                };
                table.poisoned.get_or_insert_with(|| err.to_string());
                self.shared.changed.notify_all();
                return Err(err);
            }
            table = self
                .shared
                .changed
                .wait_timeout(table, deadline - now)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// One round: deposits `parts` (one per destination, or one for all)
    /// and returns every rank's contribution, in rank order.
    fn round(
        &mut self,
        op: &'static str,
        parts: Vec<Vec<f32>>,
    ) -> Result<Vec<Arc<Vec<Vec<f32>>>>, CommError> {
        let deadline = Instant::now() + self.shared.timeout;
        let seq = self.seq;
        self.seq += 1;
        let (me, world) = (self.rank, self.world);
        // The previous round must be fully read before its slots are reused.
        let table = self.wait(
            self.lock(),
            op,
            deadline,
            |t| t.round == seq,
            |t| (0..world).filter(|&r| !t.read[r]).collect(),
        )?;
        let mut table = table;
        table.slots[me] = Some(Contribution {
            op,
            parts: Arc::new(parts),
        });
        self.shared.changed.notify_all();
        let mut table = self.wait(
            table,
            op,
            deadline,
            |t| t.slots.iter().all(Option::is_some),
            |t| (0..world).filter(|&r| t.slots[r].is_none()).collect(),
        )?;
        let all: Vec<&Contribution> = table.slots.iter().flatten().collect();
        if let Some((other, c)) = all.iter().enumerate().find(|(_, c)| c.op != op) {
            let problem = format!("rank {other} called {} at the same point", c.op);
            let err = CommError::Mismatch {
                rank: me,
                op,
                problem,
            };
            table.poisoned.get_or_insert_with(|| err.to_string());
            self.shared.changed.notify_all();
            return Err(err);
        }
        let result = all.iter().map(|c| Arc::clone(&c.parts)).collect();
        table.read[me] = true;
        if table.read.iter().all(|&r| r) {
            table.slots.iter_mut().for_each(|s| *s = None);
            table.read.iter_mut().for_each(|r| *r = false);
            table.round += 1;
            self.shared.changed.notify_all();
        }
        Ok(result)
    }

    /// The part of a contribution meant for this rank.
    fn part_for_me(parts: &[Vec<f32>], me: usize) -> &[f32] {
        if parts.len() == 1 {
            &parts[0]
        } else {
            &parts[me]
        }
    }

    fn mismatch(&self, op: &'static str, problem: String) -> CommError {
        let err = CommError::Mismatch {
            rank: self.rank,
            op,
            problem,
        };
        self.poison(&err.to_string());
        err
    }

    /// Checks every rank gave `len` values; the same check runs on every
    /// rank, so all of them fail together.
    fn same_lengths(
        &self,
        op: &'static str,
        all: &[Arc<Vec<Vec<f32>>>],
        len: usize,
    ) -> Result<(), CommError> {
        match all.iter().position(|c| c.iter().any(|p| p.len() != len)) {
            None => Ok(()),
            Some(r) => Err(self.mismatch(
                op,
                format!(
                    "rank {r} gave a buffer of another length than rank {}'s {len}",
                    self.rank
                ),
            )),
        }
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        let all = self.round("all_reduce", vec![buf.to_vec()])?;
        self.same_lengths("all_reduce", &all, buf.len())?;
        rank_ordered_reduce(all.iter().map(|c| c[0].as_slice()), buf, op);
        Ok(())
    }

    fn reduce_scatter(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CommError> {
        if let Some(problem) = super::scatter_shape_problem(input.len(), out.len(), self.world) {
            return Err(self.mismatch("reduce_scatter", problem));
        }
        let all = self.round("reduce_scatter", vec![input.to_vec()])?;
        self.same_lengths("reduce_scatter", &all, input.len())?;
        let (lo, hi) = (self.rank * out.len(), (self.rank + 1) * out.len());
        rank_ordered_reduce(all.iter().map(|c| &c[0][lo..hi]), out, op);
        Ok(())
    }

    fn all_gather(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        if let Some(problem) = super::gather_shape_problem(input.len(), out.len(), self.world) {
            return Err(self.mismatch("all_gather", problem));
        }
        let all = self.round("all_gather", vec![input.to_vec()])?;
        self.same_lengths("all_gather", &all, input.len())?;
        for (chunk, c) in out.chunks_mut(input.len().max(1)).zip(&all) {
            chunk.copy_from_slice(&c[0]);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(self.mismatch("broadcast", format!("root {root} of {} ranks", self.world)));
        }
        let mine = if self.rank == root {
            buf.to_vec()
        } else {
            Vec::new()
        };
        let all = self.round("broadcast", vec![mine])?;
        let from_root = &all[root][0];
        if from_root.len() != buf.len() {
            return Err(self.mismatch(
                "broadcast",
                format!(
                    "root {root} sent {} values into {}",
                    from_root.len(),
                    buf.len()
                ),
            ));
        }
        buf.copy_from_slice(from_root);
        Ok(())
    }

    fn all_to_all_v(&mut self, send: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, CommError> {
        if send.len() != self.world {
            return Err(self.mismatch(
                "all_to_all",
                format!("{} parts for {} ranks", send.len(), self.world),
            ));
        }
        let all = self.round("all_to_all", send.to_vec())?;
        Ok(all
            .iter()
            .map(|c| Self::part_for_me(c, self.rank).to_vec())
            .collect())
    }

    fn send(&mut self, buf: &[f32], dst: usize) -> Result<(), CommError> {
        if dst >= self.world {
            return Err(self.mismatch("send", format!("destination {dst} of {} ranks", self.world)));
        }
        let mut table = self.lock();
        if let Some(reason) = &table.poisoned {
            return Err(CommError::Poisoned {
                rank: self.rank,
                op: "send",
                reason: reason.clone(),
            });
        }
        table.mailboxes[self.rank][dst].push_back(buf.to_vec());
        self.shared.changed.notify_all();
        Ok(())
    }

    fn recv(&mut self, buf: &mut [f32], src: usize) -> Result<(), CommError> {
        if src >= self.world {
            return Err(self.mismatch("recv", format!("source {src} of {} ranks", self.world)));
        }
        let deadline = Instant::now() + self.shared.timeout;
        let me = self.rank;
        let mut table = self.wait(
            self.lock(),
            "recv",
            deadline,
            |t| !t.mailboxes[src][me].is_empty(),
            |_| vec![src],
        )?;
        let msg = table.mailboxes[src][me].pop_front().expect("waited for it");
        drop(table);
        if msg.len() != buf.len() {
            return Err(self.mismatch(
                "recv",
                format!("rank {src} sent {} values into {}", msg.len(), buf.len()),
            ));
        }
        buf.copy_from_slice(&msg);
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.round("barrier", vec![Vec::new()]).map(drop)
    }

    fn poison(&self, reason: &str) {
        let mut table = self.lock();
        table
            .poisoned
            .get_or_insert_with(|| format!("rank {} failed: {reason}", self.rank));
        self.shared.changed.notify_all();
    }
}

impl Drop for ThreadComm {
    /// A rank that leaves (returns, errors or panics) wakes anyone waiting
    /// for it; a panic also poisons the group.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poison("panicked");
        }
        let mut table = self.lock();
        table.left[self.rank] = true;
        self.shared.changed.notify_all();
    }
}
