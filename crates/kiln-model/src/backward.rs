//! Backward pass: the forward mirrored op by op. Parameter gradients
//! accumulate (`+=`), so micro-batches add up until [`Gpt::zero_grad`].

use kiln_abi::abi_stable::std_types::ROption;
use kiln_abi::{BackendBox, BackendExt, IntoBResult, MatmulArgs};

use crate::ops::linear_backward;
use crate::params::{layer_index, ln_f_index, slot, WPE, WTE};
use crate::{Gpt, ModelError};

impl Gpt {
    /// `grads += d(loss_scale * mean_loss)/d(params)` for the last forward,
    /// which must have had targets. For gradient accumulation over `k`
    /// micro-batches call it with `loss_scale = 1/k` after each forward.
    pub fn backward(&mut self, be: &mut BackendBox, loss_scale: f32) -> Result<(), ModelError> {
        let Some(last) = self.last else {
            return Err(ModelError::Input(
                "backward() needs a forward() first".into(),
            ));
        };
        let Some(counted) = last.counted else {
            return Err(ModelError::Input(
                "backward() needs a forward() with targets".into(),
            ));
        };
        let cfg = self.config.clone();
        let (b, t) = (last.b, last.t);
        let (c, nh, v, vp) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let rows = b * t;
        let acts = self.acts.as_ref().expect("forward allocated activations");
        let g = &acts.grads;

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
        be.upload_f32(g.dlosses, &self.host_f32)?;

        let p = |i: usize| self.params[i].value;
        let d = |i: usize| self.params[i].grad;

        // Fused softmax-cross-entropy backward. The logits buffer becomes
        // dlogits (backward only needs probs), so logits() is gone from here on.
        self.logits_valid = false;
        let dlogits = acts.logits;
        be.zero(dlogits).ok_or_err()?;
        be.crossentropy_backward(dlogits, acts.probs, acts.targets, g.dlosses, rows, v, vp)
            .ok_or_err()?;
        // Tied lm_head: dwte += dlogits^T @ lnf; dlnf = dlogits @ wte.
        be.matmul(MatmulArgs {
            out: d(WTE),
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
            b: p(WTE),
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
        be.encoder_backward(d(WTE), d(WPE), g.dresidual, acts.tokens, b, t, c)
            .ok_or_err()?;
        Ok(())
    }
}
