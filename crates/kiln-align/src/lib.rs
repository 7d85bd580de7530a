//! Post-training of a pretrained GPT: supervised fine-tuning on chats, a
//! reward model, direct preference optimisation and RLHF with PPO / GRPO.
//! Every method is a library API here and a `kiln` subcommand in kiln-cli.

pub mod batch;
pub mod data;
pub mod dpo;
pub mod grpo;
pub mod loss;
pub mod metrics;
pub mod policy;
pub mod ppo;
pub mod reward;
pub mod rollout;
pub mod sft;
