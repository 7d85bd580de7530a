//! Post-training of a pretrained GPT: supervised fine-tuning on chats, a
//! reward model, direct preference optimisation and RLHF with PPO / GRPO.
//! Every method is a library API here and a `kiln` subcommand in kiln-cli.

pub mod batch;
pub mod data;
pub mod dpo;
mod error;
pub mod grpo;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod policy;
pub mod ppo;
pub mod precision;
pub mod replicas;
#[cfg(test)]
mod replicas_tests;
pub mod reward;
pub mod rollout;
pub mod sft;
#[cfg(test)]
mod testutil;

pub use error::AlignError;
