//! The objectives as pure functions of per-sequence / per-token numbers
//! (log-probs, rewards, values): each returns the loss and its gradient with
//! respect to its inputs, so they are checked against fixtures without a model.

pub mod dpo;
pub mod ppo;
pub mod reward;
