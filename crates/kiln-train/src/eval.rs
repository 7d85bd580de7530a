//! Held-out loss: mean next-token cross-entropy over the non-overlapping
//! windows of a shard (input `w[0..T]`, target `w[1..T+1]`, windows at
//! multiples of `T`), every window once, in file order.

use std::path::Path;

use kiln_abi::BackendBox;
use kiln_model::Gpt;

use crate::loader::{DataError, Split, TokenSource};
use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy in nats per predicted token.
    pub loss: f64,
    pub ppl: f64,
    /// Predicted tokens (windows x T).
    pub tokens: u64,
}

pub fn evaluate(
    be: &mut BackendBox,
    model: &mut Gpt,
    data: &Path,
    seq_len: usize,
    batch_size: usize,
) -> Result<EvalResult, TrainError> {
    if seq_len > model.config.max_seq_len {
        return Err(TrainError::Config(format!(
            "--seq-len {seq_len} is longer than the model's {} positions",
            model.config.max_seq_len
        )));
    }
    let batch_size = batch_size.max(1);
    // A directory is evaluated on its validation shards.
    let mut source = TokenSource::open_split(data, seq_len, Split::Val)?;
    let windows = source.num_windows();
    let vocab = model.config.vocab_size;
    let mut window = vec![0u32; seq_len + 1];
    let mut total = 0f64;
    let mut next = 0u64;
    while next < windows {
        let rows = (windows - next).min(batch_size as u64) as usize;
        let mut tokens = Vec::with_capacity(rows * seq_len);
        let mut targets = Vec::with_capacity(rows * seq_len);
        for i in 0..rows as u64 {
            source.read_window(next + i, &mut window)?;
            if let Some(&bad) = window.iter().find(|&&x| x as usize >= vocab) {
                return Err(DataError::new(
                    data,
                    format!(
                        "holds token id {bad}, outside the model's vocabulary of {vocab}; \
                         was it tokenized with another tokenizer?"
                    ),
                )
                .into());
            }
            tokens.extend_from_slice(&window[..seq_len]);
            targets.extend_from_slice(&window[1..]);
        }
        let loss = model
            .forward(be, &tokens, Some(&targets), rows, seq_len)?
            .expect("forward with targets returns a loss");
        // The model returns the mean over this batch; weight by its tokens.
        total += loss as f64 * (rows * seq_len) as f64;
        next += rows as u64;
    }
    let tokens = windows * seq_len as u64;
    let loss = total / tokens as f64;
    Ok(EvalResult {
        loss,
        ppl: loss.exp(),
        tokens,
    })
}
