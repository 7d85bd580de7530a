//! The communicator contract as checks one rank runs on its own handle, so
//! the same suite runs on every implementation: [`super::ThreadComm`] with
//! a thread per rank (comm/tests.rs, under proptest) and the MPI
//! communicator with a process per rank (tests/mpi_suite.rs, under
//! `mpirun`).
//!
//! Every rank can compute every rank's input ([`input`]), so each check
//! compares its own result with the sequential answer and returns `Err`
//! with what differed. The checks of failures ([`stalled_rank`],
//! [`poisoned_by`], [`mismatched_operations`]) leave the communicator
//! failed: give each one a fresh communicator.

use std::time::Duration;

use super::{CommError, Communicator, ReduceOp};

pub type Check = Result<(), String>;

/// Rank r's input: `len` values drawn from `seed` and r, over six orders
/// of magnitude (so a sum in another order would change bits).
pub fn input(seed: u64, r: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (seed ^ (r as u64 * 0x9E37_79B9) ^ (i as u64 * 0x85EB_CA6B))
                .wrapping_mul(0xC2B2_AE35) as u32;
            (x as f32 / u32::MAX as f32 - 0.5) * 1e3_f32.powf((i % 7) as f32 / 3.0 - 1.0)
        })
        .collect()
}

/// The rank-ordered sum (or average) of `n` ranks' inputs, computed alone.
pub fn sequential(n: usize, seed: u64, len: usize, op: ReduceOp) -> Vec<f32> {
    let mut out = input(seed, 0, len);
    for r in 1..n {
        for (o, x) in out.iter_mut().zip(input(seed, r, len)) {
            *o += x;
        }
    }
    if op == ReduceOp::Average {
        out.iter_mut().for_each(|o| *o /= n as f32);
    }
    out
}

fn same_bits(what: &str, rank: usize, got: &[f32], want: &[f32]) -> Check {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if bits(got) == bits(want) {
        Ok(())
    } else {
        Err(format!("rank {rank}: {what}: got {got:?}, want {want:?}"))
    }
}

fn ok<T>(what: &str, r: Result<T, CommError>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// `all_reduce` gives every rank the rank-ordered sum, bit for bit.
pub fn all_reduce(c: &mut dyn Communicator, seed: u64, len: usize, op: ReduceOp) -> Check {
    let mut buf = input(seed, c.rank(), len);
    ok("all_reduce", c.all_reduce(&mut buf, op))?;
    let want = sequential(c.world(), seed, len, op);
    same_bits("all_reduce", c.rank(), &buf, &want)
}

/// `reduce_scatter` then `all_gather` is `all_reduce`.
pub fn reduce_scatter_all_gather(c: &mut dyn Communicator, seed: u64, chunk: usize) -> Check {
    let (n, me) = (c.world(), c.rank());
    let len = n * chunk;
    let mine = input(seed, me, len);
    let mut part = vec![0.0; chunk];
    ok(
        "reduce_scatter",
        c.reduce_scatter(&mine, &mut part, ReduceOp::Sum),
    )?;
    let want = sequential(n, seed, len, ReduceOp::Sum);
    same_bits(
        "reduce_scatter",
        me,
        &part,
        &want[me * chunk..(me + 1) * chunk],
    )?;
    let mut full = vec![0.0; len];
    ok("all_gather", c.all_gather(&part, &mut full))?;
    same_bits("all_gather", me, &full, &want)
}

/// `broadcast` copies the root's buffer.
pub fn broadcast(c: &mut dyn Communicator, seed: u64, len: usize, root: usize) -> Check {
    let root = root % c.world();
    let mut buf = input(seed, c.rank(), len);
    ok("broadcast", c.broadcast(&mut buf, root))?;
    same_bits("broadcast", c.rank(), &buf, &input(seed, root, len))
}

/// `all_to_all_v` delivers each part (rank s sends `(s + d) % 5` values to d).
pub fn all_to_all_v(c: &mut dyn Communicator, seed: u64) -> Check {
    let (n, me) = (c.world(), c.rank());
    let part = |s: usize, d: usize| input(seed ^ d as u64, s, (s + d) % 5);
    let send: Vec<Vec<f32>> = (0..n).map(|d| part(me, d)).collect();
    let got = ok("all_to_all_v", c.all_to_all_v(&send))?;
    if got.len() != n {
        return Err(format!("rank {me}: all_to_all_v gave {} parts", got.len()));
    }
    for (s, p) in got.iter().enumerate() {
        same_bits(&format!("all_to_all_v from {s}"), me, p, &part(s, me))?;
    }
    Ok(())
}

/// `all_to_all` with equal chunks transposes them.
pub fn all_to_all(c: &mut dyn Communicator) -> Check {
    let (n, me) = (c.world(), c.rank());
    let input: Vec<f32> = (0..2 * n).map(|i| (me * 100 + i) as f32).collect();
    let mut out = vec![0.0; 2 * n];
    ok("all_to_all", c.all_to_all(&input, &mut out))?;
    let want: Vec<f32> = (0..n)
        .flat_map(|s| [(s * 100 + 2 * me) as f32, (s * 100 + 2 * me + 1) as f32])
        .collect();
    same_bits("all_to_all", me, &out, &want)
}

/// Every rank sends to the next and receives from the previous; `send`
/// must not wait for the receiver, or this deadlocks.
pub fn ring(c: &mut dyn Communicator, seed: u64, len: usize) -> Check {
    let (n, me) = (c.world(), c.rank());
    if n < 2 {
        return Ok(());
    }
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    ok("send", c.send(&input(seed, me, len), next))?;
    let mut buf = vec![0.0; len];
    ok("recv", c.recv(&mut buf, prev))?;
    same_bits("recv", me, &buf, &input(seed, prev, len))
}

/// `barrier` returns on every rank.
pub fn barrier(c: &mut dyn Communicator) -> Check {
    ok("barrier", c.barrier())
}

/// Every healthy-path check, at sizes that cross chunk boundaries unevenly
/// (a length not divisible by the world) and large enough for MPI's
/// rendezvous protocol.
pub fn healthy(c: &mut dyn Communicator) -> Check {
    for (i, len) in [0usize, 1, 7, 1000, 100_003].into_iter().enumerate() {
        let seed = 1000 + i as u64;
        all_reduce(c, seed, len, ReduceOp::Sum)?;
        all_reduce(c, seed + 7, len, ReduceOp::Average)?;
        broadcast(c, seed, len, i)?;
        ring(c, seed, len)?;
    }
    for chunk in [0usize, 3, 20_000] {
        reduce_scatter_all_gather(c, 77 + chunk as u64, chunk)?;
    }
    all_to_all_v(c, 5)?;
    all_to_all(c)?;
    barrier(c)
}

/// Rank `staller` joins an `all_reduce` only after `stall` (longer than the
/// others' timeout): the others time out naming it; the staller then finds
/// the group failed.
pub fn stalled_rank(c: &mut dyn Communicator, staller: usize, stall: Duration) -> Check {
    let me = c.rank();
    let mut buf = vec![1.0];
    if me == staller {
        std::thread::sleep(stall);
        return match c.all_reduce(&mut buf, ReduceOp::Sum) {
            Err(CommError::Poisoned { .. } | CommError::Timeout { .. }) => Ok(()),
            other => Err(format!(
                "rank {me} (the staller): want the group failed, got {other:?}"
            )),
        };
    }
    match c.all_reduce(&mut buf, ReduceOp::Sum) {
        Err(CommError::Timeout { missing, op, .. }) if missing == vec![staller] => {
            (op == "all_reduce").then_some(()).ok_or(format!("op {op}"))
        }
        // another healthy rank timed out first and its poison arrived
        Err(CommError::Poisoned { reason, .. })
            if reason.contains("all_reduce") && reason.contains(&format!("[{staller}]")) =>
        {
            Ok(())
        }
        other => Err(format!(
            "rank {me}: want a timeout naming rank {staller}, got {other:?}"
        )),
    }
}

/// Rank `culprit` poisons the group ("loader error"); the others' next
/// `all_reduce` fails quoting it.
pub fn poisoned_by(c: &mut dyn Communicator, culprit: usize) -> Check {
    let me = c.rank();
    if me == culprit {
        c.poison("loader error");
        return Ok(());
    }
    let mut buf = vec![1.0];
    match c.all_reduce(&mut buf, ReduceOp::Sum) {
        Err(e) => {
            let msg = e.to_string();
            let want = format!("rank {culprit} failed: loader error");
            (msg.contains("all_reduce") && msg.contains(&want))
                .then_some(())
                .ok_or(format!("rank {me}: {msg} (want it to quote '{want}')"))
        }
        Ok(()) => Err(format!(
            "rank {me}: all_reduce succeeded on a poisoned group"
        )),
    }
}

/// Rank 0 calls `all_reduce` while the others call `broadcast`: every
/// rank fails, and the message says which operation the other called.
pub fn mismatched_operations(c: &mut dyn Communicator) -> Check {
    let me = c.rank();
    let mut buf = vec![1.0];
    let r = if me == 0 {
        c.all_reduce(&mut buf, ReduceOp::Sum)
    } else {
        c.broadcast(&mut buf, 0)
    };
    match r {
        Err(e) if e.to_string().contains("called") => Ok(()),
        other => Err(format!("rank {me}: want a mismatch error, got {other:?}")),
    }
}
