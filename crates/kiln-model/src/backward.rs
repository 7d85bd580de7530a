//! Backward pass: the forward mirrored op by op. Parameter gradients
//! accumulate (`+=`), so micro-batches add up until [`Gpt::zero_grad`].

use kiln_abi::abi_stable::std_types::ROption;
use kiln_abi::{BackendBox, BackendExt, IntoBResult, MatmulArgs};

use crate::model::LastForward;
use crate::ops::linear_backward;
use crate::params::{layer_index, ln_f_index, slot, WPE, WTE};
use crate::{Gpt, ModelError};

impl Gpt {
    /// `grads += d(loss_scale * mean_loss)/d(params)` for the last forward,
    /// which must have had targets. For gradient accumulation over `k`
    /// micro-batches call it with `loss_scale = 1/k` after each forward.
    /// Same as [`Gpt::backward_weighted`] with `loss_scale / counted` on
    /// every counted position.
    pub fn backward(&mut self, be: &mut BackendBox, loss_scale: f32) -> Result<(), ModelError> {
        let (_, counted) = self.last_with_targets("backward()")?;
        let v = self.config.vocab_size;
        // Per-row weights of the mean over counted targets (ignored rows: 0).
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
        self.backward_from_loss_weights(be)
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
        be.upload_f32(acts.grads.dln, &self.host_f32)?;
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
        let cfg = &self.config;
        let (c, v, vp) = (cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size);
        let rows = last.b * last.t;
        let acts = self.acts.as_ref().expect("forward allocated activations");
        let g = &acts.grads;
        be.upload_f32(g.dlosses, &self.host_f32)?;

        // The logits buffer becomes dlogits (backward only needs probs), so
        // logits() is gone from here on.
        self.logits_valid = false;
        let dlogits = acts.logits;
        be.zero(dlogits).ok_or_err()?;
        be.crossentropy_backward(dlogits, acts.probs, acts.targets, g.dlosses, rows, v, vp)
            .ok_or_err()?;
        // Tied lm_head: dwte += dlogits^T @ lnf; dlnf = dlogits @ wte.
        be.matmul(MatmulArgs {
            out: self.params[WTE].grad,
            a: dlogits,
            b: acts.lnf,
            bias: ROption::RNone,
            m: vp,
            n: c,
            k: rows,
            trans_a: true,
            trans_b: false,
            alpha: 1.0,
            beta: 1.0,
        })
        .ok_or_err()?;
        be.matmul(MatmulArgs {
            out: g.dln,
            a: dlogits,
            b: self.params[WTE].value,
            bias: ROption::RNone,
            m: rows,
            n: c,
            k: vp,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        })
        .ok_or_err()?;
        self.backward_trunk(be, last)
    }

    /// From `grads.dln = d(ln_f output)` down to the embeddings: ln_f, the
    /// blocks last to first, the encoder.
    fn backward_trunk(&mut self, be: &mut BackendBox, last: LastForward) -> Result<(), ModelError> {
        let cfg = self.config.clone();
        let (b, t) = (last.b, last.t);
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let rows = b * t;
        let acts = self.acts.as_ref().expect("forward allocated activations");
        let g = &acts.grads;
        let p = |i: usize| self.params[i].value;
        let d = |i: usize| self.params[i].grad;
        let lnf = ln_f_index(&cfg);
        let top = acts.layers[cfg.n_layer - 1].residual3;
        be.zero(g.dresidual).ok_or_err()?;
        be.layernorm_backward(
            g.dresidual,
            d(lnf),
            d(lnf + 1),
            g.dln,
            top,
            p(lnf),
            acts.lnf_mean,
            acts.lnf_rstd,
            rows,
            c,
        )
        .ok_or_err()?;

        // Blocks, last to first. `dresidual` holds d(block output); the
        // residual adds pass it through unchanged to both branches.
        for l in (0..cfg.n_layer).rev() {
            let la = &acts.layers[l];
            let w = |s: usize| p(layer_index(l, s));
            let dw = |s: usize| d(layer_index(l, s));
            let x = if l == 0 {
                acts.encoded
            } else {
                acts.layers[l - 1].residual3
            };
            // MLP: fcproj = gelu(fch) @ Wp^T + bp, fch = ln2 @ Wfc^T + bfc.
            linear_backward(
                be,
                g.dfch_gelu,
                dw(slot::FC_PROJ_W),
                Some(dw(slot::FC_PROJ_B)),
                g.dresidual,
                la.fch_gelu,
                w(slot::FC_PROJ_W),
                rows,
                4 * c,
                c,
            )?;
            be.zero(g.dfch).ok_or_err()?;
            be.gelu_backward(g.dfch, la.fch, g.dfch_gelu, rows * 4 * c)
                .ok_or_err()?;
            linear_backward(
                be,
                g.dln,
                dw(slot::FC_W),
                Some(dw(slot::FC_B)),
                g.dfch,
                la.ln2,
                w(slot::FC_W),
                rows,
                c,
                4 * c,
            )?;
            be.layernorm_backward(
                g.dresidual,
                dw(slot::LN2_W),
                dw(slot::LN2_B),
                g.dln,
                la.residual2,
                w(slot::LN2_W),
                la.ln2_mean,
                la.ln2_rstd,
                rows,
                c,
            )
            .ok_or_err()?;
            // Attention: attproj = atty @ Wo^T + bo, atty = attn(qkv), qkv = ln1 @ Wqkv^T + b.
            linear_backward(
                be,
                g.datty,
                dw(slot::ATTN_PROJ_W),
                Some(dw(slot::ATTN_PROJ_B)),
                g.dresidual,
                la.atty,
                w(slot::ATTN_PROJ_W),
                rows,
                c,
                c,
            )?;
            be.zero(g.dqkv).ok_or_err()?;
            be.attention_backward(g.dqkv, g.datty, la.qkv, la.att, b, t, c, nh)
                .ok_or_err()?;
            linear_backward(
                be,
                g.dln,
                dw(slot::QKV_W),
                Some(dw(slot::QKV_B)),
                g.dqkv,
                la.ln1,
                w(slot::QKV_W),
                rows,
                c,
                3 * c,
            )?;
            be.layernorm_backward(
                g.dresidual,
                dw(slot::LN1_W),
                dw(slot::LN1_B),
                g.dln,
                x,
                w(slot::LN1_W),
                la.ln1_mean,
                la.ln1_rstd,
                rows,
                c,
            )
            .ok_or_err()?;
        }
        // attention_backward above needs no packed variant: it works from the
        // saved probabilities, which are 0 across segments.
        if last.packed {
            be.encoder_backward_positions(
                d(WTE),
                d(WPE),
                g.dresidual,
                acts.tokens,
                acts.positions,
                b,
                t,
                c,
            )
        } else {
            be.encoder_backward(d(WTE), d(WPE), g.dresidual, acts.tokens, b, t, c)
        }
        .ok_or_err()?;
        Ok(())
    }
}
