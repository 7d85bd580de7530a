//! Tensor parallelism after Megatron-LM (Shoeybi et al. 2019): every
//! weight matrix of a GPT-2 block is split over the `tp` ranks of a group,
//! so each rank holds and multiplies `1/tp` of it, and two all-reduces per
//! block (one forward, one backward per half) put the pieces back together.
//!
//! - Attention is split by heads: rank r holds `n_head / tp` heads, i.e. its
//!   columns of c_attn's q, k and v (column-parallel) and the matching input
//!   columns of c_proj (row-parallel in Megatron's `[in, out]` terms).
//! - The MLP: c_fc column-parallel (its slice of the `4C` hidden features),
//!   then c_proj row-parallel. A row-parallel layer's bias is added once,
//!   after the all-reduce, on the full sum.
//! - The vocabulary is split too: each rank holds a contiguous slice of
//!   `wte`'s rows, looks up only its own tokens (others contribute zero,
//!   summed by an all-reduce), and the tied lm_head gives each rank its
//!   slice of the logits. The cross-entropy is computed without ever
//!   gathering them: all-reduce max, all-reduce sum-exp, the target logit
//!   from its owner; the backward is `softmax - onehot` on the local slice.
//! - LayerNorms, `wpe` and the row-parallel biases are replicated. Their
//!   inputs are identical on every rank (they come after a `g`), so their
//!   gradients are too, with no all-reduce.
//!
//! One file per concern:
//! - [`collectives`]: Megatron's conjugate pair `f` (identity forward,
//!   all-reduce backward) and `g` (all-reduce forward, identity backward).
//! - [`shard`]: which parameter splits how; [`shard_params`] and
//!   [`gather_params`] between the full kiln layout and per-rank shards,
//!   re-interleaving the fused q|k|v per rank.
//! - [`vocab`]: the vocab-parallel embedding and cross-entropy.
//! - `ops` (private): the backend calls (linear, LayerNorm) the block uses.
//! - `block`: one tensor-parallel block, forward and backward.
//! - [`model`]: [`TpGpt`], one rank's shard of a model: forward to the mean
//!   loss, backward into its local gradients.
//!
//! Scope: GPT-2 blocks (LayerNorm, GELU MLP, fused qkv, tied wte) in f32.
//! Llama-family blocks (RMSNorm, RoPE, SwiGLU, grouped-query attention) are
//! not covered. Collectives are staged through the host (download, comm op,
//! upload) with any [`Communicator`](crate::comm::Communicator).
//!
//! A layout needs `n_head % tp == 0`, `4 * n_embd % tp == 0` and
//! `padded_vocab_size % tp == 0` ([`check_layout`]).

mod block;
pub mod collectives;
pub mod model;
mod ops;
pub mod shard;
pub mod vocab;

#[cfg(test)]
mod tests;

use kiln_abi::BackendError;
use kiln_model::{GptConfig, ModelError};

use crate::comm::CommError;

pub use collectives::{f, g, Pass};
pub use model::TpGpt;
pub use shard::{gather_params, param_layouts, shard_params, ParamLayout, Split};
pub use vocab::{vocab_parallel_ce_backward, vocab_parallel_ce_forward, VocabCe, VocabShard};

/// Why a tensor-parallel call failed.
#[derive(Debug, thiserror::Error)]
pub enum TpError {
    /// A model and tp degree that do not split (names the dimension).
    #[error("tensor parallel layout: {0}")]
    Layout(String),
    /// Bad arguments (batch, parameter shapes, call order).
    #[error("tensor parallel input: {0}")]
    Input(String),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Checks that `cfg` splits over `tp` ranks: a GPT-2 config whose heads,
/// MLP width and padded vocabulary all divide by `tp`.
pub fn check_layout(cfg: &GptConfig, tp: usize) -> Result<(), TpError> {
    cfg.validate()?;
    let fail = |m: String| Err(TpError::Layout(m));
    if tp == 0 {
        return fail("tp must be at least 1".into());
    }
    if cfg.llama.is_some() {
        return fail("only GPT-2 blocks are supported (Llama-family configs are not)".into());
    }
    if !cfg.n_head.is_multiple_of(tp) {
        return fail(format!(
            "n_head ({}) is not divisible by tp ({tp}): attention splits by whole heads",
            cfg.n_head
        ));
    }
    if !(4 * cfg.n_embd).is_multiple_of(tp) {
        return fail(format!(
            "the MLP width 4 * n_embd ({}) is not divisible by tp ({tp})",
            4 * cfg.n_embd
        ));
    }
    if !cfg.padded_vocab_size.is_multiple_of(tp) {
        return fail(format!(
            "padded_vocab_size ({}) is not divisible by tp ({tp}): wte splits by rows",
            cfg.padded_vocab_size
        ));
    }
    Ok(())
}
