//! Workspace integration tests: one crate, one module per area.

mod align_cli;
mod align_dp_cli;
mod chat;
mod cli;
mod data_cli;
mod data_parallel;
mod dpo;
mod dpo_cli;
mod export_cli;
mod fault_injection;
mod gpt2_reference;
mod hf_models;
mod lora_cli;
mod model_parallel_train;
#[cfg(feature = "mpi")]
mod mpi;
mod open_model;
mod perplexity_filter;
mod pipeline;
mod plan_cli;
mod plugins;
mod precision;
mod report;
mod rerun_safety;
mod resume;
mod rl_cli;
mod train;
