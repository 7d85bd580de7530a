//! One module per subcommand. Each owns its `Args` (or `Command`) and `run`.

pub mod align_dp;
pub mod chat;
pub mod data;
pub mod data_tokenize;
pub mod dpo;
pub mod eval;
pub mod export;
pub mod generate;
pub mod grpo;
pub mod judge;
pub mod launch;
pub mod lora_args;
pub mod merge;
pub mod out_dir;
pub mod pipeline;
pub mod plan;
pub mod plugins;
pub mod ppo;
pub mod pretrain;
#[cfg(feature = "mpi")]
pub mod pretrain_mpi;
pub mod report;
pub mod reward;
pub mod sft;
pub mod tokenizer;
