//! Runs one stage's schedule against its neighbours over a
//! [`Communicator`] whose rank is the stage (rank `s` runs stage `s` of
//! `world()`).
//!
//! - Forward(mb): the first stage embeds micro-batch `mb`'s tokens, a later
//!   one receives its input hidden from stage `s-1`; all but the last send
//!   their output hidden to `s+1`; the last computes the loss.
//! - Backward(mb): the last stage starts from `d(loss / m)` (the step's
//!   loss is the mean over micro-batches), the others receive d(output)
//!   from `s+1`; all but the first send d(input) to `s-1`.
//! - Each micro-batch in flight has its own activation slot (the lowest
//!   free one), so the stage allocates [`max_in_flight`] slots.
//! - Tied embeddings: after every backward the first and last stages
//!   exchange their parts of the `wte` gradient and both keep the sum
//!   (first's + last's, the same bits on both).
//!
//! Messages go through the host (download, send; receive, upload).

use std::time::Instant;

use kiln_abi::BackendBox;
use kiln_model::{ModelError, Stage, StageGrad, StageInput, StageOutput};

use super::bubble::StageTimeline;
use super::schedule::{max_in_flight, stage_actions, Action, Schedule};
use crate::comm::{CommError, Communicator};

/// Why a pipeline step failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("pipeline: {0}")]
    Input(String),
}

/// One micro-batch: `b * t` tokens and their targets.
#[derive(Clone, Copy, Debug)]
pub struct MicroBatch<'a> {
    pub tokens: &'a [u32],
    pub targets: &'a [u32],
}

/// What one stage's step did.
#[derive(Clone, Debug)]
pub struct StageReport {
    /// The step's loss (mean over micro-batches of each one's mean loss),
    /// broadcast from the last stage, so every stage holds it.
    pub loss: f32,
    /// Each micro-batch's loss (the last stage only; empty elsewhere).
    pub micro_losses: Vec<f32>,
    /// Activation slots the stage had allocated by the end of the step.
    pub slots: usize,
    /// When it computed (see [`super::bubble`]).
    pub timeline: StageTimeline,
}

/// Runs stage `comm.rank()` of `comm.world()` through one step of
/// `schedule` over `micro` (each `b x t`; the first stage reads the
/// tokens, the last the targets; every stage is given the same list).
/// Gradients accumulate into the stage's parameters (zero them first).
pub fn run_stage(
    comm: &mut dyn Communicator,
    be: &mut BackendBox,
    stage: &mut Stage,
    schedule: Schedule,
    micro: &[MicroBatch<'_>],
    b: usize,
    t: usize,
) -> Result<StageReport, PipelineError> {
    let result = step(comm, be, stage, schedule, micro, b, t);
    if let Err(e) = &result {
        comm.poison(&format!("pipeline stage {} failed: {e}", comm.rank()));
    }
    result
}

fn step(
    comm: &mut dyn Communicator,
    be: &mut BackendBox,
    stage: &mut Stage,
    schedule: Schedule,
    micro: &[MicroBatch<'_>],
    b: usize,
    t: usize,
) -> Result<StageReport, PipelineError> {
    let (s, p, m) = (comm.rank(), comm.world(), micro.len());
    let c = stage.gpt().config.n_embd;
    let n = b * t * c;
    if m == 0 {
        return Err(PipelineError::Input("no micro-batches".into()));
    }
    if stage.is_first() != (s == 0) || stage.is_last() != (s + 1 == p) {
        return Err(PipelineError::Input(format!(
            "rank {s} of {p} holds a stage of layers {:?} (first/last do not match the rank)",
            stage.layers()
        )));
    }
    let actions = stage_actions(schedule, p, s, m);
    let mut slot_of: Vec<Option<usize>> = vec![None; m];
    let mut free: Vec<bool> = vec![true; max_in_flight(&actions)];
    let mut micro_losses = vec![0f32; if stage.is_last() { m } else { 0 }];
    let mut hidden = vec![0f32; n];
    let start = Instant::now();
    let mut busy = Vec::with_capacity(actions.len());
    for action in actions {
        match action {
            Action::Forward(mb) => {
                let slot = free
                    .iter()
                    .position(|&f| f)
                    .expect("sized by max_in_flight");
                free[slot] = false;
                slot_of[mb] = Some(slot);
                let input = if stage.is_first() {
                    StageInput::Tokens(micro[mb].tokens)
                } else {
                    comm.recv(&mut hidden, s - 1)?;
                    StageInput::Hidden(&hidden)
                };
                let targets = stage.is_last().then_some(micro[mb].targets);
                let t0 = Instant::now();
                let out = stage.forward(be, slot, input, targets, b, t)?;
                busy.push((t0, Instant::now()));
                match out {
                    StageOutput::Hidden(h) => comm.send(&h, s + 1)?,
                    StageOutput::Loss(l) => micro_losses[mb] = l,
                }
            }
            Action::Backward(mb) => {
                let slot = slot_of[mb].take().expect("forwarded before");
                let grad = if stage.is_last() {
                    StageGrad::Loss {
                        scale: 1.0 / m as f32,
                    }
                } else {
                    comm.recv(&mut hidden, s + 1)?;
                    StageGrad::Hidden(&hidden)
                };
                let t0 = Instant::now();
                let dx = stage.backward(be, slot, grad)?;
                busy.push((t0, Instant::now()));
                free[slot] = true;
                if let Some(dx) = dx {
                    comm.send(&dx, s - 1)?;
                }
            }
        }
    }
    let end = Instant::now();
    if p > 1 {
        if let Some(wte) = stage.tied_embedding() {
            sum_tied_grad(comm, be, stage, wte)?;
        }
    }
    // The step's loss, from the last stage to all.
    let mut loss = [0f32];
    if stage.is_last() {
        let sum: f64 = micro_losses.iter().map(|&l| l as f64).sum();
        loss[0] = (sum / m as f64) as f32;
    }
    comm.broadcast(&mut loss, p - 1)?;
    Ok(StageReport {
        loss: loss[0],
        micro_losses,
        slots: stage.slots_allocated(),
        timeline: StageTimeline { start, end, busy },
    })
}

/// First and last stage: both end with `first's + last's` gradient of the
/// tied parameter `index`; other stages do nothing.
fn sum_tied_grad(
    comm: &mut dyn Communicator,
    be: &mut BackendBox,
    stage: &mut Stage,
    index: usize,
) -> Result<(), PipelineError> {
    let (s, p) = (comm.rank(), comm.world());
    let peer = match s {
        0 => p - 1,
        _ if s + 1 == p => 0,
        _ => return Ok(()),
    };
    let mine = stage.read_grad(be, index)?;
    let mut theirs = vec![0f32; mine.len()];
    comm.send(&mine, peer)?;
    comm.recv(&mut theirs, peer)?;
    let (first, last) = if s == 0 {
        (&mine, &theirs)
    } else {
        (&theirs, &mine)
    };
    let sum: Vec<f32> = first.iter().zip(last).map(|(a, b)| a + b).collect();
    stage.write_grad(be, index, &sum)?;
    Ok(())
}
