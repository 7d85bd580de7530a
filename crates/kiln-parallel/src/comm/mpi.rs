//! [`MpiComm`]: ranks as processes over MPI (cargo feature `mpi`), for
//! `mpirun -np N kiln ...` and `srun -n N kiln ...`.
//!
//! Every operation is built from MPI's non-blocking point-to-point calls,
//! never from MPI's own blocking collectives, so that kiln keeps the two
//! promises of [`Communicator`] on top of any MPI:
//!
//! - **Rank-ordered sums.** Reductions move the raw values and add them on
//!   this side in rank order (MPI_Allreduce may add in any order, and a
//!   user-defined MPI op would need libffi). `all_reduce` is a
//!   reduce-scatter (rank r sums chunk r) then an all-gather, so every
//!   element is summed once, by one rank, and every rank gets its bits.
//! - **No hangs.** Receives are polled (`MPI_Improbe`) against the
//!   operation's deadline; a timeout names the ranks that never sent. A rank
//!   that fails sends a poison message to every other rank, which each
//!   rank checks for while it waits, so they fail fast, quoting the reason.
//!
//! Each message starts with a header (operation, sequence number, the
//! sender's buffer length), so ranks that call different operations, or
//! pass different lengths, get a [`CommError::Mismatch`] instead of a
//! silent wrong answer. Collectives and `send`/`recv` use different tags;
//! MPI keeps each (sender, tag) stream in order, which is what lets the
//! receiver match headers against its own sequence number.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpi::environment::Universe;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::{Communicator as _, Destination as _, Equivalence as _, Source as _};
use mpi::{Tag, Threading};

use super::grid::{GridComms, ProcessGrid};
use super::{rank_ordered_reduce, CommError, Communicator, ReduceOp};

const TAG_COLLECTIVE: Tag = 11;
const TAG_P2P: Tag = 12;
const TAG_POISON: Tag = 13;

/// Operation codes carried in the header (index = code).
const OPS: [&str; 7] = [
    "all_reduce",
    "reduce_scatter",
    "all_gather",
    "broadcast",
    "all_to_all",
    "barrier",
    "send",
];

fn op_code(op: &'static str) -> u32 {
    OPS.iter()
        .position(|&o| o == op)
        .expect("a known operation") as u32
}

/// Header words: op code, sequence number (low, high), sender's length.
const HEADER: usize = 4;

/// MPI for the life of the process: initialised once, finalised on drop.
/// Communicators made from it must be dropped first (they are; see
/// [`MpiComm`]'s `Drop`).
pub struct MpiRuntime {
    universe: Universe,
    threading: Threading,
}

impl MpiRuntime {
    /// Initialises MPI (asking for `MPI_THREAD_MULTIPLE`; kiln calls MPI
    /// from one thread at a time, so any level from serialized up works).
    pub fn init() -> Result<MpiRuntime, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| "MPI is already initialised in this process".to_string())?;
        if threading < Threading::Serialized {
            return Err(format!(
                "the MPI library offers thread level {threading:?}; kiln needs at least \
                 MPI_THREAD_SERIALIZED (its compute threads never call MPI, but the \
                 rank's thread may move)"
            ));
        }
        Ok(MpiRuntime {
            universe,
            threading,
        })
    }

    pub fn threading(&self) -> Threading {
        self.threading
    }

    /// A communicator over every rank of the launch (its own context, so
    /// its messages never meet another communicator's).
    pub fn world(&self, timeout: Duration) -> MpiComm {
        MpiComm::new(self.universe.world().duplicate(), timeout)
    }

    /// This rank's communicators on `grid` (tp innermost; see [`super::grid`]).
    /// Every rank must call it, with the same grid.
    pub fn grid(&self, grid: ProcessGrid, timeout: Duration) -> Result<GridComms<MpiComm>, String> {
        let world = self.universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if grid.world() != size {
            return Err(format!(
                "a tp {} x dp {} x pp {} grid needs {} ranks; this launch has {size}",
                grid.tp,
                grid.dp,
                grid.pp,
                grid.world()
            ));
        }
        let c = grid.coord(rank);
        // One split per axis: the colour names the line, the key orders it.
        let split = |line: usize, index: usize| {
            let comm = world
                .split_by_color_with_key(Color::with_value(line as i32), index as i32)
                .expect("every rank has a colour");
            MpiComm::new(comm, timeout)
        };
        Ok(GridComms {
            coord: c,
            world: self.world(timeout),
            tp: split(c.dp + grid.dp * c.pp, c.tp),
            dp: split(c.tp + grid.tp * c.pp, c.dp),
            pp: split(c.tp + grid.tp * c.dp, c.pp),
        })
    }

    /// Ends every rank of the launch (`MPI_Abort`): for a rank that failed
    /// after telling the others, so none of them waits in `MPI_Finalize`.
    pub fn abort(&self, code: i32) -> ! {
        self.universe.world().abort(code)
    }
}

/// A send still in flight: its buffer lives until MPI is done with it.
struct PendingSend {
    request: Request<'static, [u32], StaticScope>,
    buf: *mut Vec<u32>,
}

// SAFETY: the request and its buffer belong to this rank's communicator;
// MPI is initialised at MPI_THREAD_SERIALIZED or above, and every use goes
// through `&mut MpiComm` or the pending-sends mutex.
unsafe impl Send for PendingSend {}

impl PendingSend {
    /// Starts sending `words` to `dst` with `tag`.
    fn start(comm: &SimpleCommunicator, words: Vec<u32>, dst: usize, tag: Tag) -> PendingSend {
        let ptr: *mut Vec<u32> = Box::into_raw(Box::new(words));
        // SAFETY: the buffer is leaked until `test` sees the request done.
        let shared: &'static [u32] = unsafe { (&*ptr).as_slice() };
        let request =
            comm.process_at_rank(dst as i32)
                .immediate_send_with_tag(StaticScope, shared, tag);
        PendingSend { request, buf: ptr }
    }

    /// The buffer back once MPI has finished with it.
    fn test(self) -> Result<Vec<u32>, PendingSend> {
        let PendingSend { request, buf } = self;
        match request.test() {
            Ok(_) => {
                // SAFETY: the request is complete; nothing refers to the buffer.
                Ok(*unsafe { Box::from_raw(buf) })
            }
            Err(request) => Err(PendingSend { request, buf }),
        }
    }

    /// Gives up on a send that will never complete (the run is failing):
    /// the request and its buffer are leaked rather than freed under MPI.
    fn abandon(self) {
        // SAFETY: the raw request is dropped without being freed; its buffer stays leaked.
        let _ = unsafe { self.request.into_raw() };
    }
}

/// One rank's handle on an MPI communicator.
pub struct MpiComm {
    comm: Option<SimpleCommunicator>,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Collective operations started (the header's sequence number).
    seq: u64,
    pending: Mutex<Vec<PendingSend>>,
    /// Message buffers to reuse (sent and received ones come back here).
    pool: Mutex<Vec<Vec<u32>>>,
    /// The first failure seen; every later call reports it.
    poisoned: Mutex<Option<String>>,
}

// SAFETY: see `PendingSend`; the communicator handle is used by one thread
// at a time (`&mut self`, or `&self` in `poison`, which only starts sends).
unsafe impl Send for MpiComm {}

/// Rank `r`'s chunk of `len` values split over `n` ranks (the first
/// `len % n` chunks are one longer).
fn chunk_bounds(len: usize, n: usize, r: usize) -> std::ops::Range<usize> {
    (r * len / n)..((r + 1) * len / n)
}

/// Encodes a message into `words` (a pooled buffer: its pages are already
/// mapped, so a large message costs a copy, not a page fault per 4 KiB).
fn to_words(
    mut words: Vec<u32>,
    op: &'static str,
    seq: u64,
    len: usize,
    payload: &[f32],
) -> Vec<u32> {
    words.clear();
    words.reserve(HEADER + payload.len());
    words.extend([op_code(op), seq as u32, (seq >> 32) as u32, len as u32]);
    words.extend(payload.iter().map(|x| x.to_bits()));
    words
}

/// A received message: the header's fields, and the words (header and
/// payload) it arrived in, kept so the buffer can be reused.
struct Message {
    op: &'static str,
    seq: u64,
    len: usize,
    words: Vec<u32>,
}

impl Message {
    fn decode(words: Vec<u32>) -> Result<Message, Vec<u32>> {
        let Some((op, seq, len)) = words.get(..HEADER).and_then(|h| {
            let op = OPS.get(h[0] as usize)?;
            Some((*op, h[1] as u64 | (h[2] as u64) << 32, h[3] as usize))
        }) else {
            return Err(words);
        };
        Ok(Message {
            op,
            seq,
            len,
            words,
        })
    }

    /// The payload, read in place.
    fn payload(&self) -> &[f32] {
        let words = &self.words[HEADER..];
        // SAFETY: f32 and u32 have the same size and alignment, and every
        // bit pattern is a valid f32 (the sender wrote `f32::to_bits`).
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), words.len()) }
    }
}

impl MpiComm {
    fn new(comm: SimpleCommunicator, timeout: Duration) -> MpiComm {
        MpiComm {
            rank: comm.rank() as usize,
            world: comm.size() as usize,
            comm: Some(comm),
            timeout,
            seq: 0,
            pending: Mutex::new(Vec::new()),
            pool: Mutex::new(Vec::new()),
            poisoned: Mutex::new(None),
        }
    }

    fn raw(&self) -> &SimpleCommunicator {
        self.comm.as_ref().expect("present until drop")
    }

    fn poisoned_reason(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fails with the group's poison, if any rank (this one included) set it.
    fn check_poison(&self, op: &'static str) -> Result<(), CommError> {
        if let Some((msg, status)) = self
            .raw()
            .any_process()
            .immediate_matched_probe_with_tag(TAG_POISON)
        {
            let mut bytes = vec![0u8; status.count(u8::equivalent_datatype()).max(0) as usize];
            msg.matched_receive_into(&mut bytes[..]);
            let reason = String::from_utf8_lossy(&bytes).into_owned();
            self.poisoned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(reason);
        }
        match self.poisoned_reason() {
            Some(reason) => Err(CommError::Poisoned {
                rank: self.rank,
                op,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Tests the sends in flight, freeing the finished ones; returns how
    /// many are left.
    fn progress_sends(&self) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut still = Vec::with_capacity(pending.len());
        for send in pending.drain(..) {
            match send.test() {
                Ok(words) => self.recycle(words),
                Err(send) => still.push(send),
            }
        }
        *pending = still;
        pending.len()
    }

    /// A buffer for a message of `len` words: the pooled one that fits
    /// best, or a new one.
    fn buffer(&self, len: usize) -> Vec<u32> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let best = (0..pool.len())
            .filter(|&i| pool[i].capacity() >= len)
            .min_by_key(|&i| pool[i].capacity())
            .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
        best.map(|i| pool.swap_remove(i)).unwrap_or_default()
    }

    /// Keeps `words` for a later message (a few per rank; more are freed).
    fn recycle(&self, words: Vec<u32>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 4 * self.world + 4 {
            pool.push(words);
        }
    }

    fn recycle_all(&self, got: Vec<(usize, Message)>) {
        got.into_iter().for_each(|(_, m)| self.recycle(m.words));
    }

    fn start_send(&self, words: Vec<u32>, dst: usize, tag: Tag) {
        let send = PendingSend::start(self.raw(), words, dst, tag);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(send);
    }

    /// Fails `op` with `err`, poisoning the group so the others stop too.
    fn fail(&self, err: CommError) -> CommError {
        self.poison(&err.to_string());
        err
    }

    fn mismatch(&self, op: &'static str, problem: String) -> CommError {
        self.fail(CommError::Mismatch {
            rank: self.rank,
            op,
            problem,
        })
    }

    /// Waits (polling) for one message with `tag` from each rank in
    /// `sources`, then for this rank's sends to finish; checks each
    /// header against `op` and `seq`. Returns the messages by source.
    fn receive_all(
        &self,
        op: &'static str,
        seq: u64,
        tag: Tag,
        sources: &[usize],
        wait_for_sends: bool,
    ) -> Result<Vec<(usize, Message)>, CommError> {
        let deadline = Instant::now() + self.timeout;
        let mut got: Vec<(usize, Message)> = Vec::with_capacity(sources.len());
        let mut missing: Vec<usize> = sources.to_vec();
        let mut idle = 0u32;
        loop {
            self.check_poison(op)?;
            let before = missing.len();
            let mut i = 0;
            while i < missing.len() {
                let src = missing[i];
                let probe = self
                    .raw()
                    .process_at_rank(src as i32)
                    .immediate_matched_probe_with_tag(tag);
                let Some((msg, status)) = probe else {
                    i += 1;
                    continue;
                };
                let count = status.count(u32::equivalent_datatype()).max(0) as usize;
                let mut words = self.buffer(count);
                words.resize(count, 0); // initialised for safe Rust; pooled pages are mapped
                words.truncate(count);
                msg.matched_receive_into(&mut words[..]);
                let m = match Message::decode(words) {
                    Ok(m) => m,
                    Err(words) => {
                        self.recycle(words);
                        let problem = format!("rank {src} sent a malformed message");
                        return Err(self.mismatch(op, problem));
                    }
                };
                if m.op != op || (tag == TAG_COLLECTIVE && m.seq != seq) {
                    return Err(self.mismatch(
                        op,
                        format!(
                            "rank {src} called {} (its operation #{}) at the same point as \
                             this rank's {op} (#{seq})",
                            m.op, m.seq
                        ),
                    ));
                }
                got.push((src, m));
                missing.swap_remove(i);
            }
            // Testing the sends also drives them: a large message moves in
            // fragments, each pushed only while its sender is inside MPI.
            let sends_left = self.progress_sends();
            if missing.is_empty() && (sends_left == 0 || !wait_for_sends) {
                got.sort_by_key(|(src, _)| *src);
                return Ok(got);
            }
            if Instant::now() >= deadline {
                let mut waited_for = missing.clone();
                waited_for.sort_unstable();
                let err = CommError::Timeout {
                    rank: self.rank,
                    op,
                    missing: waited_for,
                    timeout: self.timeout,
                };
                return Err(self.fail(err));
            }
            // Spin while our own messages are in flight (a sleeping sender
            // stalls its receivers) or briefly after progress; then sleep,
            // so a rank waiting on a slower one leaves it the cores.
            idle = if missing.len() < before { 0 } else { idle + 1 };
            if idle < 200 || sends_left > 0 {
                std::hint::spin_loop();
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100 * u64::from((idle / 200).min(10))));
            }
        }
    }

    /// One collective round: `parts(d)` goes to each rank `d` in `to`
    /// (this rank's own part is returned without MPI), and one message is
    /// received from each rank in `from`. `len` is this rank's buffer
    /// length, sent in the header for the receivers' checks. The result
    /// holds the payloads by source rank, in rank order.
    fn round<'p>(
        &mut self,
        op: &'static str,
        len: usize,
        to: &[usize],
        parts: impl Fn(usize) -> &'p [f32],
        from: &[usize],
    ) -> Result<Vec<(usize, Message)>, CommError> {
        self.check_poison(op)?;
        let seq = self.seq;
        self.seq += 1;
        let me = self.rank;
        for &d in to.iter().filter(|&&d| d != me) {
            let part = parts(d);
            let words = to_words(self.buffer(HEADER + part.len()), op, seq, len, part);
            self.start_send(words, d, TAG_COLLECTIVE);
        }
        let others: Vec<usize> = from.iter().copied().filter(|&s| s != me).collect();
        let mut got = self.receive_all(op, seq, TAG_COLLECTIVE, &others, true)?;
        if from.contains(&me) {
            let part = parts(me);
            let words = to_words(self.buffer(HEADER + part.len()), op, seq, len, part);
            let own = Message {
                op,
                seq,
                len,
                words,
            };
            got.push((me, own));
            got.sort_by_key(|(src, _)| *src);
        }
        Ok(got)
    }

    fn all_ranks(&self) -> Vec<usize> {
        (0..self.world).collect()
    }

    /// Checks every sender had this rank's buffer length.
    fn same_lengths(
        &self,
        op: &'static str,
        got: &[(usize, Message)],
        len: usize,
    ) -> Result<(), CommError> {
        match got.iter().find(|(_, m)| m.len != len) {
            None => Ok(()),
            Some((src, m)) => Err(self.mismatch(
                op,
                format!(
                    "rank {src} gave a buffer of {} values, rank {}'s has {len}",
                    m.len, self.rank
                ),
            )),
        }
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        let (n, me, len) = (self.world, self.rank, buf.len());
        let all = self.all_ranks();
        // Reduce-scatter: rank r sums chunk r of every rank's buffer.
        let src: &[f32] = buf;
        let got = self.round(
            "all_reduce",
            len,
            &all,
            |d| &src[chunk_bounds(len, n, d)],
            &all,
        )?;
        self.same_lengths("all_reduce", &got, len)?;
        // Every part of this rank's chunk is in `got` (its own copied), so
        // the sum goes straight into `buf`.
        let mine = chunk_bounds(len, n, me);
        rank_ordered_reduce(
            got.iter().map(|(_, m)| m.payload()),
            &mut buf[mine.clone()],
            op,
        );
        self.recycle_all(got);
        // All-gather the summed chunks (this rank's is already in place).
        let others: Vec<usize> = (0..n).filter(|&r| r != me).collect();
        let src: &[f32] = buf;
        let got = self.round("all_reduce", len, &all, |_| &src[mine.clone()], &others)?;
        for (r, m) in &got {
            buf[chunk_bounds(len, n, *r)].copy_from_slice(m.payload());
        }
        self.recycle_all(got);
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
        let all = self.all_ranks();
        let chunk = out.len();
        let got = self.round(
            "reduce_scatter",
            input.len(),
            &all,
            |d| &input[d * chunk..(d + 1) * chunk],
            &all,
        )?;
        self.same_lengths("reduce_scatter", &got, input.len())?;
        rank_ordered_reduce(got.iter().map(|(_, m)| m.payload()), out, op);
        self.recycle_all(got);
        Ok(())
    }

    fn all_gather(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        if let Some(problem) = super::gather_shape_problem(input.len(), out.len(), self.world) {
            return Err(self.mismatch("all_gather", problem));
        }
        let all = self.all_ranks();
        let got = self.round("all_gather", input.len(), &all, |_| input, &all)?;
        self.same_lengths("all_gather", &got, input.len())?;
        let chunk = input.len();
        for (r, m) in &got {
            out[r * chunk..(r + 1) * chunk].copy_from_slice(m.payload());
        }
        self.recycle_all(got);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(self.mismatch("broadcast", format!("root {root} of {} ranks", self.world)));
        }
        let to = if self.rank == root {
            self.all_ranks()
        } else {
            Vec::new()
        };
        let src: &[f32] = buf;
        let got = self.round("broadcast", src.len(), &to, |_| src, &[root])?;
        let (_, m) = &got[0];
        if m.payload().len() != buf.len() {
            return Err(self.mismatch(
                "broadcast",
                format!(
                    "root {root} sent {} values into {}",
                    m.payload().len(),
                    buf.len()
                ),
            ));
        }
        buf.copy_from_slice(m.payload());
        self.recycle_all(got);
        Ok(())
    }

    fn all_to_all_v(&mut self, send: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, CommError> {
        if send.len() != self.world {
            return Err(self.mismatch(
                "all_to_all",
                format!("{} parts for {} ranks", send.len(), self.world),
            ));
        }
        let all = self.all_ranks();
        let got = self.round("all_to_all", send.len(), &all, |d| &send[d], &all)?;
        let parts = got.iter().map(|(_, m)| m.payload().to_vec()).collect();
        self.recycle_all(got);
        Ok(parts)
    }

    fn send(&mut self, buf: &[f32], dst: usize) -> Result<(), CommError> {
        if dst >= self.world {
            return Err(self.mismatch("send", format!("destination {dst} of {} ranks", self.world)));
        }
        self.check_poison("send")?;
        self.progress_sends();
        let words = to_words(self.buffer(HEADER + buf.len()), "send", 0, buf.len(), buf);
        self.start_send(words, dst, TAG_P2P);
        Ok(())
    }

    fn recv(&mut self, buf: &mut [f32], src: usize) -> Result<(), CommError> {
        if src >= self.world {
            return Err(self.mismatch("recv", format!("source {src} of {} ranks", self.world)));
        }
        if src == self.rank {
            return Err(self.mismatch("recv", "a rank cannot receive from itself".into()));
        }
        let got = self.receive_all("send", 0, TAG_P2P, &[src], false)?;
        let (_, m) = &got[0];
        if m.payload().len() != buf.len() {
            return Err(self.mismatch(
                "recv",
                format!(
                    "rank {src} sent {} values into {}",
                    m.payload().len(),
                    buf.len()
                ),
            ));
        }
        buf.copy_from_slice(m.payload());
        self.recycle_all(got);
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        let all = self.all_ranks();
        self.round("barrier", 0, &all, |_| &[], &all).map(drop)
    }

    fn poison(&self, reason: &str) {
        let message = {
            let mut poisoned = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
            if poisoned.is_some() {
                return; // the group already knows
            }
            let message = format!("rank {} failed: {reason}", self.rank);
            *poisoned = Some(message.clone());
            message
        };
        for d in (0..self.world).filter(|&d| d != self.rank) {
            let buf: &'static mut [u8] = Box::leak(message.clone().into_bytes().into_boxed_slice());
            // The poison message is never waited for (the run is ending);
            // its small buffer is leaked with the request.
            let request = self
                .raw()
                .process_at_rank(d as i32)
                .immediate_send_with_tag(StaticScope, &*buf, TAG_POISON);
            // SAFETY: the buffer is 'static (leaked); the request completes in MPI's time.
            let _ = unsafe { request.into_raw() };
        }
    }
}

impl Drop for MpiComm {
    /// Lets the sends in flight finish (within the timeout) before the
    /// communicator is freed; after `MPI_Finalize` the handle is forgotten.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poison("panicked");
        }
        if mpi::is_finalized() {
            std::mem::forget(self.comm.take());
            return;
        }
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(10));
        while self.progress_sends() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let abandoned = !pending.is_empty();
        pending.into_iter().for_each(PendingSend::abandon);
        if abandoned || self.poisoned_reason().is_some() {
            // Freeing a communicator with messages in flight can block in
            // some MPIs; a failing run leaks it instead.
            std::mem::forget(self.comm.take());
        }
    }
}
