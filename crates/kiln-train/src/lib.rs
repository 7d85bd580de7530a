//! Training loop: model + optimizer + data loader + checkpoints/resume + metrics.
//!
//! - [`loader`]: `(tokens, targets)` batches from llm.c token shards, shuffled
//!   per epoch from a seed, sharded by rank, with an exact resumable position.
//! - [`Trainer`]: gradient accumulation, clipping, AdamW + schedule, the
//!   non-finite [`guard`], [`metrics`] per step, [`checkpoint`]s and resume.
//! - [`eval::evaluate`]: held-out loss / perplexity of a model on a shard.
//! - [`progress`]: the terminal progress bar (or plain lines in logs).

pub mod checkpoint;
pub mod config;
mod error;
pub mod eval;
pub mod guard;
pub mod loader;
pub mod metrics;
mod net;
mod pipeline;
pub mod progress;
pub mod scaler;
mod tensor;
mod trainer;

pub use config::TrainConfig;
pub use error::TrainError;
pub use trainer::{Init, Observer, Quiet, Ranks, RunSummary, Trainer};
