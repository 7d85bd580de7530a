//! One module per subcommand. Each owns its `Args` (or `Command`) and `run`.

pub mod data;
pub mod data_tokenize;
pub mod eval;
pub mod generate;
pub mod pipeline;
pub mod plugins;
pub mod pretrain;
pub mod tokenizer;
