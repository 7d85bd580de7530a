//! Training loop: model + optimizer + data loader + checkpoints/resume + metrics.

pub mod config;
pub mod guard;
pub mod loader;
pub mod metrics;
