//! Training/eval forward pass: encoder -> blocks -> ln_f -> tied lm_head ->
//! fused softmax cross-entropy. Every activation backward needs is kept.

use kiln_abi::abi_stable::std_types::ROption;
use kiln_abi::{BackendBox, BackendExt, IntoBResult, MatmulArgs};

use crate::activations::Activations;
use crate::model::LastForward;
use crate::ops::linear;
use crate::params::{layer_index, ln_f_index, slot, WPE, WTE};
use crate::{Gpt, ModelError};

impl Gpt {
    /// Runs the model on `tokens` (`[b*t]`, row-major). With `targets`
    /// returns the mean cross-entropy (nats) over targets `< vocab_size`
    /// (a target `>= vocab_size`, e.g. `u32::MAX`, is ignored; with no target
    /// counted the loss is 0 and backward adds nothing). Activations are
    /// kept for [`Gpt::backward`] and [`Gpt::logits`].
    pub fn forward(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>, ModelError> {
        self.last = None;
        self.logits_valid = false;
        self.check_batch(tokens, targets, b, t)?;
        let cfg = self.config.clone();
        let (c, nh, v, vp) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let rows = b * t;
        self.ensure_activations(be, rows, b * nh * t * t)?;
        let acts = self.acts.as_ref().expect("activations allocated above");

        // Uploads cover whole buffers; the tail beyond b*t is padding.
        stage_u32(&mut self.host_u32, tokens, acts.rows, 0);
        be.upload_u32(acts.tokens, &self.host_u32)?;

        let p = |i: usize| self.params[i].value;
        be.encoder_forward(acts.encoded, acts.tokens, p(WTE), p(WPE), b, t, c)
            .ok_or_err()?;
        let eps = cfg.layer_norm_eps;
        for (l, la) in acts.layers.iter().enumerate() {
            let w = |s: usize| p(layer_index(l, s));
            let x = if l == 0 {
                acts.encoded
            } else {
                acts.layers[l - 1].residual3
            };
            be.layernorm_forward(
                la.ln1,
                la.ln1_mean,
                la.ln1_rstd,
                x,
                w(slot::LN1_W),
                w(slot::LN1_B),
                rows,
                c,
                eps,
            )
            .ok_or_err()?;
            linear(
                be,
                la.qkv,
                la.ln1,
                w(slot::QKV_W),
                Some(w(slot::QKV_B)),
                rows,
                c,
                3 * c,
            )?;
            be.attention_forward(la.atty, la.att, la.qkv, b, t, c, nh)
                .ok_or_err()?;
            linear(
                be,
                la.attproj,
                la.atty,
                w(slot::ATTN_PROJ_W),
                Some(w(slot::ATTN_PROJ_B)),
                rows,
                c,
                c,
            )?;
            be.add(la.residual2, x, la.attproj, rows * c).ok_or_err()?;
            be.layernorm_forward(
                la.ln2,
                la.ln2_mean,
                la.ln2_rstd,
                la.residual2,
                w(slot::LN2_W),
                w(slot::LN2_B),
                rows,
                c,
                eps,
            )
            .ok_or_err()?;
            linear(
                be,
                la.fch,
                la.ln2,
                w(slot::FC_W),
                Some(w(slot::FC_B)),
                rows,
                c,
                4 * c,
            )?;
            be.gelu_forward(la.fch_gelu, la.fch, rows * 4 * c)
                .ok_or_err()?;
            linear(
                be,
                la.fcproj,
                la.fch_gelu,
                w(slot::FC_PROJ_W),
                Some(w(slot::FC_PROJ_B)),
                rows,
                4 * c,
                c,
            )?;
            be.add(la.residual3, la.residual2, la.fcproj, rows * c)
                .ok_or_err()?;
        }
        let top = acts.layers[cfg.n_layer - 1].residual3;
        let lnf = ln_f_index(&cfg);
        be.layernorm_forward(
            acts.lnf,
            acts.lnf_mean,
            acts.lnf_rstd,
            top,
            p(lnf),
            p(lnf + 1),
            rows,
            c,
            eps,
        )
        .ok_or_err()?;
        // Tied lm_head: logits = lnf @ wte^T over the padded vocabulary.
        be.matmul(MatmulArgs {
            out: acts.logits,
            a: acts.lnf,
            b: p(WTE),
            bias: ROption::RNone,
            m: rows,
            n: vp,
            k: c,
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
        })
        .ok_or_err()?;
        self.logits_valid = true;

        let Some(targets) = targets else {
            self.last = Some(LastForward {
                b,
                t,
                counted: None,
            });
            return Ok(None);
        };
        stage_u32(&mut self.host_targets, targets, acts.rows, u32::MAX);
        be.upload_u32(acts.targets, &self.host_targets)?;
        be.crossentropy_forward(
            acts.losses,
            acts.probs,
            acts.logits,
            acts.targets,
            rows,
            v,
            vp,
        )
        .ok_or_err()?;
        let losses = be.download_f32(acts.losses)?;
        let counted = targets.iter().filter(|&&x| (x as usize) < v).count();
        let sum: f64 = losses[..rows]
            .iter()
            .zip(targets)
            .filter(|(_, &y)| (y as usize) < v)
            .map(|(&l, _)| l as f64)
            .sum();
        let mean = if counted == 0 {
            0.0
        } else {
            (sum / counted as f64) as f32
        };
        self.last = Some(LastForward {
            b,
            t,
            counted: Some(counted),
        });
        Ok(Some(mean))
    }

    /// Logits of the last forward, `[b, t, vocab_size]` (padding columns
    /// dropped). Call it before [`Gpt::backward`], which reuses their buffer.
    pub fn logits(&mut self, be: &mut BackendBox) -> Result<Vec<f32>, ModelError> {
        let (Some(last), Some(acts), true) = (self.last, self.acts.as_ref(), self.logits_valid)
        else {
            return Err(ModelError::Input(
                "logits() needs a forward() first and must come before backward() \
                 (backward reuses the logits buffer)"
                    .to_string(),
            ));
        };
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab_size);
        let all = be.download_f32(acts.logits)?;
        let rows = last.b * last.t;
        let mut out = Vec::with_capacity(rows * v);
        for r in 0..rows {
            out.extend_from_slice(&all[r * vp..r * vp + v]);
        }
        Ok(out)
    }

    fn check_batch(
        &self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        if b == 0 || t == 0 {
            return Err(ModelError::Input(format!(
                "batch {b} x {t}: both must be positive"
            )));
        }
        if t > cfg.max_seq_len {
            return Err(ModelError::Input(format!(
                "sequence length {t} exceeds the model's max_seq_len {}",
                cfg.max_seq_len
            )));
        }
        if tokens.len() != b * t {
            return Err(ModelError::Input(format!(
                "got {} tokens for a batch of {b} x {t} = {}",
                tokens.len(),
                b * t
            )));
        }
        if let Some(targets) = targets {
            if targets.len() != b * t {
                return Err(ModelError::Input(format!(
                    "got {} targets for a batch of {b} x {t} = {}",
                    targets.len(),
                    b * t
                )));
            }
        }
        if let Some((i, &tok)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &x)| x as usize >= cfg.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token {tok} at position {i} is outside the vocabulary (size {})",
                cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Grows the activation buffers when `rows` / `att_len` exceed them.
    fn ensure_activations(
        &mut self,
        be: &mut BackendBox,
        rows: usize,
        att_len: usize,
    ) -> Result<(), ModelError> {
        if self.acts.as_ref().is_some_and(|a| a.fits(rows, att_len)) {
            return Ok(());
        }
        let (old_rows, old_att) = self.acts.as_ref().map_or((0, 0), |a| (a.rows, a.att_len));
        if let Some(old) = self.acts.take() {
            old.release(be)?;
        }
        self.acts = Some(Activations::new(
            be,
            &self.config,
            rows.max(old_rows),
            att_len.max(old_att),
        )?);
        Ok(())
    }
}

/// `buf = data` followed by `fill` up to `len` (reusing `buf`'s allocation).
pub(crate) fn stage_u32(buf: &mut Vec<u32>, data: &[u32], len: usize, fill: u32) {
    buf.clear();
    buf.extend_from_slice(data);
    buf.resize(len, fill);
}
