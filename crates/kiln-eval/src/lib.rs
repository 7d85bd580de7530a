//! The embedded, verifiable chat tasks (arithmetic, length/format control,
//! sentiment), their programmatic judge, preference pairs ranked by the judge,
//! and evaluation of a policy (judge score, win rate, KL).

pub mod error;
pub mod evaluate;
pub mod judge;
pub mod preferences;
pub mod tasks;
#[cfg(test)]
mod test_util;

pub use error::EvalError;
pub use evaluate::{
    evaluate_policy, evaluate_policy_samples, kl_to_reference, win_rate, EvalResponse, Evaluation,
};
pub use judge::{judge, Judgement};
pub use preferences::{sample_pairs, synthetic_pairs, JudgedPair, PairSampling, PairStats};
pub use tasks::{eval_tasks, sft_examples, train_tasks, Task, TaskKind, TaskSpec};
