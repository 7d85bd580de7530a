//! Backward pass: the forward mirrored op by op. Parameter gradients
//! accumulate (`+=`), so micro-batches add up until [`Gpt::zero_grad`].

use kiln_abi::{
    AttentionBackwardArgs, BackendBox, BackendExt, BufId, EmbeddingBackwardArgs, IntoBResult,
    MatmulArgs, ROption, Rounding, Unary,
};

use crate::activations::Activations;
use crate::model::LastForward;
use crate::ops::{attention_scale, gpt2_attention_shape, layernorm_backward, linear_backward};
use crate::params::{layer_index, lm_head_index, ln_f_index, slot, WPE, WTE};
use crate::{Gpt, ModelError};

impl Gpt {
    /// `grads += d(loss_scale * mean_loss)/d(params)` for the last forward,
    /// which must have had targets. For gradient accumulation over `k`
    /// micro-batches call it with `loss_scale = 1/k` after each forward.
    /// Same as [`Gpt::backward_weighted`] with `loss_scale / counted` on
    /// every counted position.
    pub fn backward(&mut self, be: &mut BackendBox, loss_scale: f32) -> Result<(), ModelError> {
        self.last_with_targets("backward()")?;
        self.stage_mean_loss_weights(loss_scale);
        self.backward_from_loss_weights(be)
    }

    /// Stages in `host_f32` the per-row weights of `loss_scale` times the
    /// mean over the last forward's counted targets (ignored rows: 0),
    /// padded to the activation capacity.
    pub(crate) fn stage_mean_loss_weights(&mut self, loss_scale: f32) {
        let counted = self.last.and_then(|l| l.counted).unwrap_or(0);
        let v = self.config.vocab_size;
        let weight = if counted == 0 {
            0.0
        } else {
            loss_scale / counted as f32
        };
        // forward staged the targets (padded with ignored ones) in host_targets.
        self.host_f32.clear();
        self.host_f32.extend(self.host_targets.iter().map(|&y| {
            if (y as usize) < v {
                weight
            } else {
                0.0
            }
        }));
    }

    /// `grads += d(sum_i weights[i] * loss_i)/d(params)`, where `loss_i` are
    /// the per-position losses of the last [`Gpt::forward_token_losses`]
    /// (or forward with targets); `weights` is `[b*t]`. Positions with an
    /// ignored target contribute nothing whatever their weight. A weight may
    /// be negative (policy gradients); it must be finite.
    pub fn backward_weighted(
        &mut self,
        be: &mut BackendBox,
        weights: &[f32],
    ) -> Result<(), ModelError> {
        let (last, _) = self.last_with_targets("backward_weighted()")?;
        let rows = last.b * last.t;
        if weights.len() != rows {
            return Err(ModelError::Input(format!(
                "backward_weighted(): got {} weights for the last forward's {} x {} = {rows} positions",
                weights.len(),
                last.b,
                last.t
            )));
        }
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(ModelError::Input(format!(
                "backward_weighted(): weight {i} is {} (weights must be finite)",
                weights[i]
            )));
        }
        let capacity = self.host_targets.len();
        self.host_f32.clear();
        self.host_f32.extend_from_slice(weights);
        self.host_f32.resize(capacity, 0.0);
        self.backward_from_loss_weights(be)
    }

    /// `grads += d(sum(dhidden * hidden))/d(params)`: backpropagates a
    /// gradient `[b*t, n_embd]` of the hidden states that the last forward
    /// ([`Gpt::forward_hidden`], or any forward) computed. Use it for a head
    /// on top of the model (reward / value), whose own gradient the caller
    /// computes.
    pub fn backward_hidden(
        &mut self,
        be: &mut BackendBox,
        dhidden: &[f32],
    ) -> Result<(), ModelError> {
        let Some(last) = self.last else {
            return Err(ModelError::Input(
                "backward_hidden() needs a forward_hidden() (or forward) first".into(),
            ));
        };
        let c = self.config.n_embd;
        let n = last.b * last.t * c;
        if dhidden.len() != n {
            return Err(ModelError::Input(format!(
                "backward_hidden(): got {} values for hidden states of {} x {} positions x {c} channels = {n}",
                dhidden.len(),
                last.b,
                last.t
            )));
        }
        let acts = self.acts.as_ref().expect("forward allocated activations");
        self.host_f32.clear();
        self.host_f32.extend_from_slice(dhidden);
        self.host_f32.resize(acts.rows * c, 0.0);
        be.upload_f32_as(acts.grads.dln, &self.host_f32)?;
        self.backward_trunk(be, last)
    }

    /// The last forward, which must have computed losses, and its count of
    /// counted targets.
    fn last_with_targets(&self, call: &str) -> Result<(LastForward, usize), ModelError> {
        let Some(last) = self.last else {
            return Err(ModelError::Input(format!(
                "{call} needs a forward_token_losses() (or forward with targets) first"
            )));
        };
        let Some(counted) = last.counted else {
            return Err(ModelError::Input(format!(
                "{call} needs the last forward to have targets \
                 (use forward_token_losses, or backward_hidden after forward_hidden)"
            )));
        };
        Ok((last, counted))
    }

    /// Backward from per-row loss weights staged in `host_f32` (padded to the
    /// activation capacity): fused softmax-cross-entropy backward, tied
    /// lm_head, then the trunk.
    fn backward_from_loss_weights(&mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        let last = self.last.expect("checked by the caller");
        let rows = last.b * last.t;
        let acts = self.acts.as_ref().expect("forward allocated activations");
        let g = &acts.grads;
        be.upload_f32(g.dlosses, &self.host_f32)?;

        // The logits buffer becomes dlogits in place (the backward recomputes
        // the probabilities from logits and lse), so logits() is gone from here on.
        self.logits_valid = false;
        self.head_backward(be, acts, rows)?;
        self.backward_trunk(be, last)
    }

    /// The loss head's backward from per-row loss weights in
    /// `acts.grads.dlosses`: fused softmax-cross-entropy backward (the
    /// logits buffer becomes d(logits) in place), then the lm_head:
    /// `d(head weight) += dlogits^T @ lnf`, `acts.grads.dln = dlogits @ W`.
    pub(crate) fn head_backward(
        &self,
        be: &mut BackendBox,
        acts: &Activations,
        rows: usize,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (c, v, vp) = (cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size);
        let g = &acts.grads;
        let dlogits = acts.logits;
        be.crossentropy_backward(
            dlogits,
            acts.logits,
            acts.lse,
            acts.targets,
            g.dlosses,
            rows,
            v,
            vp,
        )
        .ok_or_err()?;
        // lm_head (tied: wte): dW += dlogits^T @ lnf (not for a frozen
        // head: the largest product of the step); dlnf = dlogits @ W.
        let head = &self.params[lm_head_index(cfg)];
        if let Some(dhead) = head.grad {
            be.matmul(MatmulArgs {
                trans_a: true,
                beta: 1.0,
                ..MatmulArgs::new(dhead, dlogits, acts.lnf, vp, c, rows)
            })
            .ok_or_err()?;
        }
        be.matmul(MatmulArgs::new(g.dln, dlogits, head.weight(), rows, c, vp))
            .ok_or_err()?;
        Ok(())
    }

    /// From `grads.dln = d(ln_f output)` down to the embeddings: ln_f, the
    /// blocks last to first, the encoder (Llama family: `llama_backward.rs`).
    fn backward_trunk(&mut self, be: &mut BackendBox, last: LastForward) -> Result<(), ModelError> {
        if self.rope.is_some() {
            return self.llama_backward_trunk(be, last);
        }
        let cfg = self.config.clone();
        let (b, t) = (last.b, last.t);
        let c = cfg.n_embd;
        let rows = b * t;
        let acts = self.acts.as_ref().expect("forward allocated activations");
        let g = &acts.grads;
        let p = |i: usize| self.params[i].weight();
        let d = |i: usize| self.params[i].grad;
        let lnf = ln_f_index(&cfg);
        let top = acts.layers[cfg.n_layer - 1].residual3;
        be.zero(g.dresidual).ok_or_err()?;
        layernorm_backward(
            be,
            g.dresidual,
            d(lnf),
            d(lnf + 1),
            g.dln,
            &acts.lnf_io(top, p(lnf), p(lnf + 1)),
            rows,
            c,
        )?;

        self.gpt2_blocks_backward(be, acts, 0, last)?;
        self.embedding_backward_from(be, acts, last)
    }

    /// GPT-2 blocks `layer0 + acts.layers.len()` down to `layer0` (block
    /// `layer0 + i` kept its activations in `acts.layers[i]`, the first read
    /// `acts.encoded`): `grads.dresidual` holds d(top block output) on entry
    /// and d(`acts.encoded`) on return; parameter gradients accumulate.
    pub(crate) fn gpt2_blocks_backward(
        &self,
        be: &mut BackendBox,
        acts: &Activations,
        layer0: usize,
        last: LastForward,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (b, t) = (last.b, last.t);
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let rows = b * t;
        let g = &acts.grads;
        let p = |i: usize| self.params[i].weight();
        let d = |i: usize| self.params[i].grad;
        // Mixed precision: the residual stream's gradient is f32, but each
        // branch's projection backward takes it in the compute dtype, as
        // autocast's add backward hands a 16-bit branch a 16-bit gradient;
        // then both of the product's operands are 16-bit (the backend's
        // native 16-bit GEMM). `dln` is free whenever this is needed.
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
        // Blocks, last to first. `dresidual` holds d(block output); the
        // residual adds pass it through unchanged to both branches.
        for (i, la) in acts.layers.iter().enumerate().rev() {
            let l = layer0 + i;
            let w = |s: usize| p(layer_index(l, s));
            let dw = |s: usize| d(layer_index(l, s));
            let x = if i == 0 {
                acts.encoded
            } else {
                acts.layers[i - 1].residual3
            };
            // MLP: fcproj = gelu(fch) @ Wp^T + bp, fch = ln2 @ Wfc^T + bfc.
            let dfcproj = branch_grad(be)?;
            linear_backward(
                be,
                g.dfch_gelu,
                dw(slot::FC_PROJ_W),
                dw(slot::FC_PROJ_B),
                dfcproj,
                la.fch_gelu,
                w(slot::FC_PROJ_W),
                rows,
                4 * c,
                c,
            )?;
            be.zero(g.dfch).ok_or_err()?;
            be.unary_backward(Unary::Gelu, g.dfch, la.fch, g.dfch_gelu, rows * 4 * c)
                .ok_or_err()?;
            linear_backward(
                be,
                g.dln,
                dw(slot::FC_W),
                dw(slot::FC_B),
                g.dfch,
                la.ln2,
                w(slot::FC_W),
                rows,
                c,
                4 * c,
            )?;
            let io = la.io(x);
            layernorm_backward(
                be,
                g.dresidual,
                dw(slot::LN2_W),
                dw(slot::LN2_B),
                g.dln,
                &io.ln2_io(w(slot::LN2_W), w(slot::LN2_B)),
                rows,
                c,
            )?;
            // Attention: attproj = atty @ Wo^T + bo, atty = attn(qkv), qkv = ln1 @ Wqkv^T + b.
            let dattproj = branch_grad(be)?;
            linear_backward(
                be,
                g.datty,
                dw(slot::ATTN_PROJ_W),
                dw(slot::ATTN_PROJ_B),
                dattproj,
                la.atty,
                w(slot::ATTN_PROJ_W),
                rows,
                c,
                c,
            )?;
            be.zero(g.dqkv).ok_or_err()?;
            be.attention_backward(AttentionBackwardArgs {
                dqkv: g.dqkv,
                dout: g.datty,
                qkv: la.qkv,
                out: la.atty,
                workspace: la.att,
                segments: if last.packed {
                    ROption::RSome(acts.segments)
                } else {
                    ROption::RNone
                },
                shape: gpt2_attention_shape(b, t, c, nh),
                scale: attention_scale(c, nh),
            })
            .ok_or_err()?;
            linear_backward(
                be,
                g.dln,
                dw(slot::QKV_W),
                dw(slot::QKV_B),
                g.dqkv,
                la.ln1,
                w(slot::QKV_W),
                rows,
                c,
                3 * c,
            )?;
            layernorm_backward(
                be,
                g.dresidual,
                dw(slot::LN1_W),
                dw(slot::LN1_B),
                g.dln,
                &io.ln1_io(w(slot::LN1_W), w(slot::LN1_B)),
                rows,
                c,
            )?;
        }
        Ok(())
    }

    /// The embeddings' backward from `grads.dresidual = d(acts.encoded)`:
    /// `d(wte)` (and GPT-2's `d(wpe)`) accumulate; nothing for frozen ones.
    pub(crate) fn embedding_backward_from(
        &self,
        be: &mut BackendBox,
        acts: &Activations,
        last: LastForward,
    ) -> Result<(), ModelError> {
        let (b, t, c) = (last.b, last.t, self.config.n_embd);
        let g = &acts.grads;
        let d = |i: usize| self.params[i].grad;
        // Llama: parameter 1 is the first block's, not a position table.
        let dwpe = if self.config.llama.is_some() {
            None
        } else {
            d(WPE)
        };
        if d(WTE).is_none() && dwpe.is_none() {
            return Ok(()); // frozen embeddings: nothing below needs a gradient
        }
        be.embedding_backward(EmbeddingBackwardArgs {
            dwte: d(WTE).map_or(ROption::RNone, ROption::RSome),
            dwpe: dwpe.map_or(ROption::RNone, ROption::RSome),
            dout: g.dresidual,
            tokens: acts.tokens,
            positions: if last.packed {
                ROption::RSome(acts.positions)
            } else {
                ROption::RNone
            },
            pos0: 0,
            b,
            t,
            c,
        })
        .ok_or_err()?;
        Ok(())
    }
}
