//! Pipeline parallelism: the layers split into stages (one rank each),
//! micro-batches scheduled 1F1B (GPipe as the simple reference), and
//! activations and gradients passed between neighbouring stages with
//! send/recv.
//!
//! - [`schedule`]: each stage's ordered Forward(mb)/Backward(mb) actions
//!   for [`Schedule::GPipe`] and [`Schedule::OneFOneB`], and how many
//!   micro-batches each keeps in flight (1F1B: at most `p - stage`; GPipe: `m`).
//! - [`runner`]: [`run_stage`] runs one stage's actions over a
//!   [`crate::comm::Communicator`] on a [`kiln_model::Stage`] (one
//!   activation slot per micro-batch in flight; the loss is the mean over
//!   micro-batches, so each backward is scaled by `1/m`; the tied `wte`
//!   gradient is summed between the first and last stages).
//! - [`bubble`]: the measured idle fraction of each stage and the
//!   theoretical `(p - 1) / (m + p - 1)`.
//!
//! A step: every rank builds a `Stage` over its layer range
//! ([`kiln_model::split_layers`]), zeroes its gradients, and calls
//! [`run_stage`] with the same micro-batches; afterwards each stage holds
//! the full gradient of the parameters it owns
//! ([`kiln_model::Stage::owned_params`]), as one process would have.

pub mod bubble;
pub mod runner;
pub mod schedule;

pub use bubble::{measured_bubble, measured_bubbles, theoretical_bubble, StageTimeline};
pub use runner::{run_stage, MicroBatch, PipelineError, StageReport};
pub use schedule::{max_in_flight, stage_actions, Action, Schedule};

#[cfg(test)]
mod tests;
