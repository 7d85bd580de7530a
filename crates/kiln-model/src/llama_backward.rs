//! The Llama family's backward trunk: the final RMSNorm, the blocks last to
//! first ([`llama_block_backward`]), the token embedding (no position
//! table; positions enter through RoPE, whose inverse the blocks apply).

use kiln_abi::{BackendBox, BufId, EmbeddingBackwardArgs, IntoBResult, ROption, Rounding};

use crate::llama_block::{llama_block_backward, BlockGrads};
use crate::model::LastForward;
use crate::ops::rmsnorm_backward;
use crate::params::{final_norm_index, WTE};
use crate::rope::Positions;
use crate::{Gpt, ModelError};

impl Gpt {
    /// From `grads.dln = d(final norm output)` down to `embed_tokens`.
    pub(crate) fn llama_backward_trunk(
        &mut self,
        be: &mut BackendBox,
        last: LastForward,
    ) -> Result<(), ModelError> {
        let cfg = self.config.clone();
        let (b, t) = (last.b, last.t);
        let c = cfg.n_embd;
        let rows = b * t;
        let acts = self.acts.as_ref().expect("forward allocated activations");
        let rope = self
            .rope
            .as_ref()
            .expect("a Llama-family model has its tables");
        let g = &acts.grads;
        let p = |i: usize| self.params[i].weight();
        let d = |i: usize| self.params[i].grad;
        let top = acts.layers[cfg.n_layer - 1].residual3;
        be.zero(g.dresidual).ok_or_err()?;
        let norm = final_norm_index(&cfg);
        rmsnorm_backward(
            be,
            g.dresidual,
            d(norm),
            g.dln,
            top,
            p(norm),
            acts.lnf_rstd,
            rows,
            c,
        )?;
        let mixed = self.precision.is_mixed();
        let branch_grad = |be: &mut BackendBox| -> Result<BufId, ModelError> {
            if mixed {
                be.cast(g.dln, g.dresidual, rows * c, Rounding::NearestEven, 0)
                    .ok_or_err()?;
                Ok(g.dln)
            } else {
                Ok(g.dresidual)
            }
        };
        let grads = BlockGrads {
            dresidual: g.dresidual,
            dln: g.dln,
            datty: g.datty,
            dqkv: g.dqkv,
            dfch_gelu: g.dfch_gelu,
            dfch: g.dfch,
            dqkv_bias: g.dqkv_bias.expect("allocated for Llama-family configs"),
        };
        let (positions, segments) = if last.packed {
            (Positions::PerToken(acts.positions), Some(acts.segments))
        } else {
            (Positions::From(0), None)
        };
        for l in (0..cfg.n_layer).rev() {
            let la = &acts.layers[l];
            let x = if l == 0 {
                acts.encoded
            } else {
                acts.layers[l - 1].residual3
            };
            llama_block_backward(
                be,
                &cfg,
                &self.params,
                self.lora.as_ref(),
                rope,
                l,
                &la.io(x),
                la.att,
                segments,
                positions,
                &grads,
                &branch_grad,
                b,
                t,
            )?;
        }
        let Some(dwte) = d(WTE) else {
            return Ok(()); // a frozen embedding: nothing below needs a gradient
        };
        be.embedding_backward(EmbeddingBackwardArgs {
            dwte: ROption::RSome(dwte),
            dwpe: ROption::RNone,
            dout: g.dresidual,
            tokens: acts.tokens,
            positions: ROption::RNone,
            pos0: 0,
            b,
            t,
            c,
        })
        .ok_or_err()?;
        Ok(())
    }
}
