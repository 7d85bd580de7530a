//! Training/eval forward pass: encoder -> blocks -> ln_f -> tied lm_head ->
//! fused softmax cross-entropy. Every activation backward needs is kept.

use kiln_abi::{BackendBox, BackendExt, BufId, EmbeddingArgs, IntoBResult, ROption};

use crate::activations::Activations;
use crate::block::{block_forward, Attention};
use crate::llama_block::llama_block_forward;
use crate::model::LastForward;
use crate::ops::{gpt2_attention_shape, layernorm, lm_head, model_attention_shape, rmsnorm};
use crate::params::{final_norm_index, lm_head_index, ln_f_index, WPE, WTE};
use crate::rope::Positions;
use crate::{Gpt, ModelError, Packing};

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
        let Some(targets) = targets else {
            self.forward_logits(be, tokens, None, None, b, t)?;
            return Ok(None);
        };
        let losses = self.forward_logits(be, tokens, Some(targets), None, b, t)?;
        Ok(Some(mean_counted_loss(
            &losses,
            targets,
            self.config.vocab_size,
        )))
    }

    /// Like [`Gpt::forward`] with targets, but returns every position's loss
    /// `-ln p(targets[i] | tokens[..=i])` (`[b*t]`, 0 where the target is
    /// ignored). Their mean over counted targets is what `forward` returns.
    /// Follow with [`Gpt::backward_weighted`] (or [`Gpt::backward`]).
    pub fn forward_token_losses(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_logits(be, tokens, Some(targets), None, b, t)
    }

    /// [`Gpt::forward_token_losses`] on a packed batch: each row holds
    /// several documents, and `packing` gives every token its position in
    /// its own document and its document's segment id. Attention stays
    /// within a segment, so each document's losses are those it would get
    /// alone (up to rounding). To keep a document's last target from
    /// predicting the next document's first token, ignore it (`u32::MAX`).
    /// Follow with [`Gpt::backward_weighted`] (or [`Gpt::backward`]).
    pub fn forward_token_losses_packed(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: &[u32],
        packing: &Packing,
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_logits(be, tokens, Some(targets), Some(packing), b, t)
    }

    /// Runs the blocks and the final LayerNorm but not the lm_head, and
    /// returns the final hidden states `[b*t, n_embd]` (what the lm_head
    /// would multiply by `wte^T`): the input of a reward or value head.
    /// Follow with [`Gpt::backward_hidden`].
    pub fn forward_hidden(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_trunk(be, tokens, None, None, b, t)?;
        self.last = Some(LastForward {
            b,
            t,
            counted: None,
            packed: false,
        });
        let acts = self.acts.as_ref().expect("forward_trunk allocated them");
        let mut hidden = be.download_widened(acts.lnf)?;
        hidden.truncate(b * t * self.config.n_embd);
        Ok(hidden)
    }

    /// Trunk + tied lm_head, then (with targets) the fused cross-entropy.
    /// Returns the per-position losses (empty without targets) and records
    /// the call for backward / logits().
    fn forward_logits(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: Option<&[u32]>,
        packing: Option<&Packing>,
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_logits_on_backend(be, tokens, targets, packing, b, t)?;
        if targets.is_none() {
            return Ok(Vec::new());
        }
        let acts = self.acts.as_ref().expect("forward_trunk allocated them");
        let mut losses = be.download_f32(acts.losses)?;
        losses.truncate(b * t);
        Ok(losses)
    }

    /// Training forward with the loss kept on the backend: like
    /// [`Gpt::forward`] with targets, but instead of returning the mean
    /// loss it adds `loss_scale * mean loss` (the mean over counted targets)
    /// into `loss_slot`, one f32 element (a view of a step-stats block,
    /// `kiln_abi::stats::STAT_LOSS`). No host read: a training step reads
    /// its figures once, after the optimizer. Follow with
    /// [`Gpt::backward`] with the same `loss_scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_loss_into(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        loss_scale: f32,
        loss_slot: BufId,
    ) -> Result<(), ModelError> {
        self.forward_logits_on_backend(be, tokens, Some(targets), None, b, t)?;
        self.stage_mean_loss_weights(loss_scale);
        let acts = self.acts.as_ref().expect("forward_trunk allocated them");
        be.upload_f32(acts.grads.dlosses, &self.host_f32)?;
        // sum_i w_i loss_i = loss_scale * mean counted loss, on the backend.
        be.rows_dot(
            loss_slot,
            acts.losses,
            ROption::RNone,
            acts.grads.dlosses,
            1,
            b * t,
        )
        .ok_or_err()?;
        Ok(())
    }

    /// Trunk + tied lm_head, then (with targets) the fused cross-entropy into
    /// `acts.losses`, without reading anything back. Records the call for
    /// backward / logits().
    fn forward_logits_on_backend(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: Option<&[u32]>,
        packing: Option<&Packing>,
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        self.forward_trunk(be, tokens, targets, packing, b, t)?;
        let cfg = &self.config;
        let (c, v, vp) = (cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size);
        let rows = b * t;
        let acts = self.acts.as_ref().expect("forward_trunk allocated them");
        lm_head(
            be,
            acts.logits,
            acts.lnf,
            self.params[lm_head_index(cfg)].weight(),
            rows,
            c,
            vp,
        )?;
        self.logits_valid = true;

        let Some(targets) = targets else {
            self.last = Some(LastForward {
                b,
                t,
                counted: None,
                packed: packing.is_some(),
            });
            return Ok(());
        };
        stage_u32(&mut self.host_targets, targets, acts.rows, u32::MAX);
        be.upload_u32(acts.targets, &self.host_targets)?;
        be.crossentropy_forward(
            acts.losses,
            acts.lse,
            acts.logits,
            acts.targets,
            rows,
            v,
            vp,
        )
        .ok_or_err()?;
        let counted = targets.iter().filter(|&&y| (y as usize) < v).count();
        self.last = Some(LastForward {
            b,
            t,
            counted: Some(counted),
            packed: packing.is_some(),
        });
        Ok(())
    }

    /// Validates the batch, then encoder -> blocks -> ln_f into `acts.lnf`,
    /// keeping every activation backward needs. Clears the record of the
    /// previous forward first, so a failed call leaves nothing to backward.
    fn forward_trunk(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: Option<&[u32]>,
        packing: Option<&Packing>,
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        self.last = None;
        self.logits_valid = false;
        self.check_batch(tokens, targets, b, t)?;
        if let Some(packing) = packing {
            packing.check(tokens.len(), self.config.max_seq_len)?;
        }
        let cfg = self.config.clone();
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let rows = b * t;
        let shape = match cfg.llama {
            None => gpt2_attention_shape(b, t, c, nh),
            Some(_) => model_attention_shape(&cfg, b, t),
        };
        let workspace_len = be.attention_workspace_len(shape).ok_or_err()?;
        self.ensure_activations(be, rows, workspace_len)?;
        self.prepare_lora(be, rows)?;
        let acts = self.acts.as_ref().expect("activations allocated above");

        // Uploads cover whole buffers; the tail beyond b*t is padding.
        stage_u32(&mut self.host_u32, tokens, acts.rows, 0);
        be.upload_u32(acts.tokens, &self.host_u32)?;

        if let Some(packing) = packing {
            stage_u32(&mut self.host_u32, &packing.positions, acts.rows, 0);
            be.upload_u32(acts.positions, &self.host_u32)?;
            stage_u32(&mut self.host_u32, &packing.segments, acts.rows, 0);
            be.upload_u32(acts.segments, &self.host_u32)?;
        }

        let packed = packing.is_some();
        self.embed_forward(be, acts, packed, b, t)?;
        self.blocks_forward(be, acts, 0, packed, b, t)?;
        let top = acts.layers[cfg.n_layer - 1].residual3;
        self.final_norm_forward(be, acts, top, rows)?;
        Ok(())
    }

    /// The encoder: `acts.encoded = wte[acts.tokens] (+ wpe[position])`
    /// (Llama: token embedding only; positions enter through RoPE). With
    /// `packed` GPT-2 reads each token's position from `acts.positions`.
    pub(crate) fn embed_forward(
        &self,
        be: &mut BackendBox,
        acts: &Activations,
        packed: bool,
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        let p = |i: usize| self.params[i].weight();
        let llama = self.config.llama.is_some();
        be.embedding_forward(EmbeddingArgs {
            out: acts.encoded,
            tokens: acts.tokens,
            wte: p(WTE),
            // Llama: rotary positions, no table.
            wpe: if llama {
                ROption::RNone
            } else {
                ROption::RSome(p(WPE))
            },
            positions: if packed && !llama {
                ROption::RSome(acts.positions)
            } else {
                ROption::RNone
            },
            pos0: 0,
            b,
            t,
            c: self.config.n_embd,
        })
        .ok_or_err()?;
        Ok(())
    }

    /// Blocks `layer0 .. layer0 + acts.layers.len()`, block `layer0 + i`
    /// keeping its activations in `acts.layers[i]`; the first reads
    /// `acts.encoded`, each next one its predecessor's output. The whole
    /// model passes `layer0 = 0`, a pipeline stage its first layer.
    pub(crate) fn blocks_forward(
        &self,
        be: &mut BackendBox,
        acts: &Activations,
        layer0: usize,
        packed: bool,
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        for (i, la) in acts.layers.iter().enumerate() {
            let l = layer0 + i;
            let inp = if i == 0 {
                acts.encoded
            } else {
                acts.layers[i - 1].residual3
            };
            let attention = if packed {
                Attention::Segmented {
                    workspace: la.att,
                    segments: acts.segments,
                }
            } else {
                Attention::Causal { workspace: la.att }
            };
            match &self.rope {
                None => block_forward(be, cfg, &self.params, l, &la.io(inp), attention, b, t)?,
                Some(rope) => {
                    let positions = if packed {
                        Positions::PerToken(acts.positions)
                    } else {
                        Positions::From(0)
                    };
                    llama_block_forward(
                        be,
                        cfg,
                        &self.params,
                        self.lora.as_ref(),
                        rope,
                        l,
                        &la.io(inp),
                        attention,
                        positions,
                        b,
                        t,
                    )?
                }
            }
        }
        Ok(())
    }

    /// The final norm: `acts.lnf = LN(top)` (Llama: RMSNorm).
    pub(crate) fn final_norm_forward(
        &self,
        be: &mut BackendBox,
        acts: &Activations,
        top: BufId,
        rows: usize,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_eps);
        let p = |i: usize| self.params[i].weight();
        if cfg.llama.is_some() {
            let norm = p(final_norm_index(cfg));
            rmsnorm(be, acts.lnf, acts.lnf_rstd, top, norm, rows, c, eps)?;
        } else {
            let lnf = ln_f_index(cfg);
            layernorm(be, &acts.lnf_io(top, p(lnf), p(lnf + 1)), rows, c, eps)?;
        }
        Ok(())
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
        let all = be.download_widened(acts.logits)?;
        let rows = last.b * last.t;
        let mut out = Vec::with_capacity(rows * v);
        for r in 0..rows {
            out.extend_from_slice(&all[r * vp..r * vp + v]);
        }
        Ok(out)
    }

    /// Entropy (nats) of the next-token distribution at every position of
    /// the last forward, `[b*t]`: `H = -sum_j p_j ln p_j` over the real
    /// vocabulary, computed in f64 from the logits. Like [`Gpt::logits`] it
    /// must come after a forward with logits and before backward.
    pub fn token_entropies(&mut self, be: &mut BackendBox) -> Result<Vec<f32>, ModelError> {
        let (Some(last), Some(acts), true) = (self.last, self.acts.as_ref(), self.logits_valid)
        else {
            return Err(ModelError::Input(
                "token_entropies() needs a forward() or forward_token_losses() first \
                 (not forward_hidden) and must come before backward (which reuses the \
                 logits buffer)"
                    .to_string(),
            ));
        };
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab_size);
        let all = be.download_widened(acts.logits)?;
        let rows = last.b * last.t;
        Ok(all
            .chunks_exact(vp)
            .take(rows)
            .map(|row| entropy(&row[..v]))
            .collect())
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
        // checked: a huge b must be an error, not an overflow panic
        if b.checked_mul(t) != Some(tokens.len()) {
            return Err(ModelError::Input(format!(
                "got {} tokens for a batch of {b} x {t} (need b*t)",
                tokens.len(),
            )));
        }
        if let Some(targets) = targets {
            if targets.len() != tokens.len() {
                return Err(ModelError::Input(format!(
                    "got {} targets for a batch of {b} x {t} = {} tokens",
                    targets.len(),
                    tokens.len()
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
        let act = self.act_dtype();
        self.acts = Some(Activations::new(
            be,
            &self.config,
            rows.max(old_rows),
            att_len.max(old_att),
            act,
        )?);
        Ok(())
    }
}

/// Mean of `losses` over positions whose target is counted (`< v`),
/// accumulated in f64; 0 when none is.
pub(crate) fn mean_counted_loss(losses: &[f32], targets: &[u32], v: usize) -> f32 {
    let (sum, counted) = losses
        .iter()
        .zip(targets)
        .filter(|(_, &y)| (y as usize) < v)
        .fold((0f64, 0usize), |(s, n), (&l, _)| (s + l as f64, n + 1));
    if counted == 0 {
        0.0
    } else {
        (sum / counted as f64) as f32
    }
}

/// Entropy of softmax(`logits`) in f64: `ln Z - sum_j p_j x_j` with the
/// maximum subtracted first (exact for any finite logits).
fn entropy(logits: &[f32]) -> f32 {
    let top = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let (mut z, mut zx) = (0f64, 0f64);
    for &x in logits {
        let d = x as f64 - top;
        let e = d.exp();
        z += e;
        zx += e * d;
    }
    (z.ln() - zx / z) as f32
}

/// `buf = data` followed by `fill` up to `len` (reusing `buf`'s allocation).
pub(crate) fn stage_u32(buf: &mut Vec<u32>, data: &[u32], len: usize, fill: u32) {
    buf.clear();
    buf.extend_from_slice(data);
    buf.resize(len, fill);
}
