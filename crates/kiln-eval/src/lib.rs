//! The embedded, verifiable chat tasks (arithmetic, length/format control,
//! sentiment), their programmatic judge, preference pairs ranked by the judge,
//! and evaluation of a policy (judge score, win rate, KL).

pub mod evaluate;
pub mod judge;
pub mod preferences;
pub mod tasks;
