//! Pipeline stages: a contiguous range of a [`Gpt`]'s blocks, run forward
//! and backward on its own, with one activation slot per micro-batch in
//! flight (so a 1F1B schedule can run micro-batch `i+1`'s forward before
//! `i`'s backward).
//!
//! - The first stage embeds the tokens, every stage runs its blocks from an
//!   input hidden `[b*t, C]` (the previous stage's output), the last runs
//!   the final norm, the tied lm_head and the cross-entropy (the loss).
//! - Backward mirrors it: the last stage from the loss to d(input hidden),
//!   middle stages from d(output hidden) to d(input hidden), the first down
//!   to the embedding gradients. Gradients accumulate into [`Param::grad`]
//!   like [`Gpt::backward`]; a stage touches only the gradients of its own
//!   parameters ([`Stage::owned_params`]).
//! - Tied embeddings: the first stage's `wte` gradient (embedding) and the
//!   last's (lm_head) are each a part of the full gradient; the pipeline
//!   sums them between the two stages.
//!
//! Every stage runs exactly the ops [`Gpt::forward`] / [`Gpt::backward`]
//! run (the same functions: `forward.rs`, `backward.rs`), so the stages in
//! sequence reproduce the whole model's loss and gradients.
//!
//! Memory is not optimised yet: a stage holds a whole [`Gpt`] (every
//! parameter and gradient allocated), though each activation slot holds
//! only the stage's own blocks' activations. f32 only; no LoRA, no packing.
//!
//! [`Param::grad`]: crate::Param::grad

use std::ops::Range;

use kiln_abi::{BackendBox, BackendExt, BufId, IntoBResult};

use crate::activations::Activations;
use crate::forward::{mean_counted_loss, stage_u32};
use crate::llama_block::{llama_block_backward, BlockGrads};
use crate::model::LastForward;
use crate::ops::{
    gpt2_attention_shape, layernorm_backward, lm_head, model_attention_shape, rmsnorm_backward,
};
use crate::params::{self, final_norm_index, lm_head_index, ln_f_index};
use crate::rope::Positions;
use crate::{Gpt, ModelError, Precision};

/// What a stage's forward reads.
#[derive(Clone, Copy, Debug)]
pub enum StageInput<'a> {
    /// The first stage: token ids `[b*t]`.
    Tokens(&'a [u32]),
    /// Any later stage: the previous stage's output hidden `[b*t, C]`.
    Hidden(&'a [f32]),
}

/// What a stage's forward gives.
#[derive(Clone, Debug, PartialEq)]
pub enum StageOutput {
    /// Not the last stage: its output hidden `[b*t, C]`, the next one's input.
    Hidden(Vec<f32>),
    /// The last stage: the micro-batch's mean cross-entropy.
    Loss(f32),
}

/// Where a stage's backward starts.
#[derive(Clone, Copy, Debug)]
pub enum StageGrad<'a> {
    /// The last stage: `d(scale * mean loss)`.
    Loss { scale: f32 },
    /// Any earlier stage: d(output hidden) `[b*t, C]` from the next stage.
    Hidden(&'a [f32]),
}

/// One activation slot: buffers for one micro-batch in flight.
struct Slot {
    acts: Activations,
    /// The forward it holds, until its backward frees it.
    busy: Option<LastForward>,
    /// Targets of that forward, padded with ignored ones to `acts.rows`.
    targets: Vec<u32>,
}

/// A contiguous range of blocks of a [`Gpt`] (see the module doc).
pub struct Stage {
    gpt: Gpt,
    layers: Range<usize>,
    slots: Vec<Slot>,
    host_f32: Vec<f32>,
    host_u32: Vec<u32>,
}

/// `n_layer` blocks split into `stages` contiguous ranges, as even as can be
/// (the first ones one block longer when it does not divide).
pub fn split_layers(n_layer: usize, stages: usize) -> Vec<Range<usize>> {
    let (base, extra) = (n_layer / stages, n_layer % stages);
    let mut start = 0;
    (0..stages)
        .map(|s| {
            let len = base + usize::from(s < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

impl Stage {
    /// A stage running blocks `layers` of `gpt` (non-empty, within
    /// `n_layer`; f32 and no LoRA).
    pub fn new(gpt: Gpt, layers: Range<usize>) -> Result<Stage, ModelError> {
        let n = gpt.config.n_layer;
        if layers.is_empty() || layers.end > n {
            return Err(ModelError::Input(format!(
                "stage layers {layers:?}: need a non-empty range within 0..{n}"
            )));
        }
        if gpt.precision != Precision::F32 || gpt.lora.is_some() {
            return Err(ModelError::Input(
                "a pipeline stage runs f32 models without LoRA".into(),
            ));
        }
        Ok(Stage {
            gpt,
            layers,
            slots: Vec::new(),
            host_f32: Vec::new(),
            host_u32: Vec::new(),
        })
    }

    /// The blocks this stage runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// Embeds the tokens.
    pub fn is_first(&self) -> bool {
        self.layers.start == 0
    }

    /// Runs the loss head.
    pub fn is_last(&self) -> bool {
        self.layers.end == self.gpt.config.n_layer
    }

    /// The whole model the stage holds.
    pub fn gpt(&self) -> &Gpt {
        &self.gpt
    }

    /// Mutable access (e.g. an optimizer step, `zero_grad`).
    pub fn gpt_mut(&mut self) -> &mut Gpt {
        &mut self.gpt
    }

    /// The model, its activation slots released.
    pub fn into_gpt(mut self, be: &mut BackendBox) -> Result<Gpt, ModelError> {
        for s in self.slots.drain(..) {
            s.acts.release(be)?;
        }
        Ok(self.gpt)
    }

    /// Index (in [`Gpt::params`]) of the parameter the last stage's lm_head
    /// shares with the first stage's embedding (`wte`), if tied.
    pub fn tied_embedding(&self) -> Option<usize> {
        (lm_head_index(&self.gpt.config) == params::WTE).then_some(params::WTE)
    }

    /// Indices (in [`Gpt::params`]) of the parameters whose gradients this
    /// stage computes: the embeddings on the first, its blocks, the final
    /// norm and the lm_head on the last (a tied `wte` on both).
    pub fn owned_params(&self) -> Vec<usize> {
        let cfg = &self.gpt.config;
        let n = self.gpt.params.len();
        // Where block l's parameters start; `n_layer` gives the final norm.
        let block_start = |l: usize| match cfg.llama {
            None => params::layer_index(l, 0),
            Some(_) => crate::llama_params::layer_index(cfg, l, 0),
        };
        let mut out = Vec::new();
        if self.is_first() {
            out.extend(0..block_start(0));
        }
        out.extend(block_start(self.layers.start)..block_start(self.layers.end));
        if self.is_last() {
            out.extend(block_start(cfg.n_layer)..n);
            let head = lm_head_index(cfg);
            if !out.contains(&head) {
                out.push(head);
            }
        }
        out
    }

    /// Activation slots allocated so far: the most micro-batches that were
    /// in flight at once (a forward takes the slot the caller names).
    pub fn slots_allocated(&self) -> usize {
        self.slots.len()
    }

    /// Parameter `index`'s gradient, on the host.
    pub fn read_grad(&self, be: &mut BackendBox, index: usize) -> Result<Vec<f32>, ModelError> {
        let g = self.grad_buf(index)?;
        Ok(be.download_f32(g)?)
    }

    /// Overwrites parameter `index`'s gradient.
    pub fn write_grad(
        &mut self,
        be: &mut BackendBox,
        index: usize,
        values: &[f32],
    ) -> Result<(), ModelError> {
        let g = self.grad_buf(index)?;
        be.upload_f32(g, values)?;
        Ok(())
    }

    fn grad_buf(&self, index: usize) -> Result<BufId, ModelError> {
        self.gpt
            .params
            .get(index)
            .and_then(|p| p.grad)
            .ok_or_else(|| ModelError::Input(format!("parameter {index} has no gradient")))
    }

    /// Forward of one micro-batch (`b x t`) into activation slot `slot`
    /// (free: never used, or its backward done). The first stage reads
    /// [`StageInput::Tokens`], later ones [`StageInput::Hidden`]; the last
    /// needs `targets` (`[b*t]`, a target `>= vocab_size` ignored) and
    /// returns [`StageOutput::Loss`], the others return their output hidden.
    pub fn forward(
        &mut self,
        be: &mut BackendBox,
        slot: usize,
        input: StageInput<'_>,
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<StageOutput, ModelError> {
        let cfg = self.gpt.config.clone();
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        let rows = b * t;
        if b == 0 || t == 0 || t > cfg.max_seq_len {
            return Err(ModelError::Input(format!(
                "stage forward: batch {b} x {t} (max_seq_len {})",
                cfg.max_seq_len
            )));
        }
        match (self.is_first(), input) {
            (true, StageInput::Tokens(tok)) => {
                if tok.len() != rows || tok.iter().any(|&x| x as usize >= v) {
                    return Err(ModelError::Input(format!(
                        "stage forward: need {rows} tokens < {v}, got {}",
                        tok.len()
                    )));
                }
            }
            (false, StageInput::Hidden(h)) if h.len() == rows * c => {}
            (first, _) => {
                return Err(ModelError::Input(format!(
                    "stage forward: the {} stage needs {}",
                    if first { "first" } else { "a later" },
                    if first {
                        "tokens".to_string()
                    } else {
                        format!("a hidden of {rows} x {c}")
                    }
                )))
            }
        }
        let targets = match (self.is_last(), targets) {
            (true, Some(y)) if y.len() == rows => Some(y),
            (false, None) => None,
            (last, _) => {
                return Err(ModelError::Input(format!(
                    "stage forward: {}",
                    if last {
                        format!("the last stage needs {rows} targets")
                    } else {
                        "only the last stage takes targets".to_string()
                    }
                )))
            }
        };
        let shape = match cfg.llama {
            None => gpt2_attention_shape(b, t, c, cfg.n_head),
            Some(_) => model_attention_shape(&cfg, b, t),
        };
        let att_len = be.attention_workspace_len(shape).ok_or_err()?;
        self.ensure_slot(be, slot, rows, att_len)?;
        let s = &mut self.slots[slot];
        let acts = &s.acts;
        match input {
            StageInput::Tokens(tok) => {
                stage_u32(&mut self.host_u32, tok, acts.rows, 0);
                be.upload_u32(acts.tokens, &self.host_u32)?;
                self.gpt.embed_forward(be, acts, false, b, t)?;
            }
            StageInput::Hidden(h) => {
                self.host_f32.clear();
                self.host_f32.extend_from_slice(h);
                self.host_f32.resize(acts.rows * c, 0.0);
                be.upload_f32(acts.encoded, &self.host_f32)?;
            }
        }
        self.gpt
            .blocks_forward(be, acts, self.layers.start, false, b, t)?;
        let top = acts.layers.last().expect("a non-empty stage").residual3;
        let mut last = LastForward {
            b,
            t,
            counted: None,
            packed: false,
        };
        let out = match targets {
            None => {
                let mut h = be.download_f32(top)?;
                h.truncate(rows * c);
                StageOutput::Hidden(h)
            }
            Some(y) => {
                self.gpt.final_norm_forward(be, acts, top, rows)?;
                let head = self.gpt.params[lm_head_index(&cfg)].weight();
                lm_head(
                    be,
                    acts.logits,
                    acts.lnf,
                    head,
                    rows,
                    c,
                    cfg.padded_vocab_size,
                )?;
                stage_u32(&mut s.targets, y, acts.rows, u32::MAX);
                be.upload_u32(acts.targets, &s.targets)?;
                be.crossentropy_forward(
                    acts.losses,
                    acts.lse,
                    acts.logits,
                    acts.targets,
                    rows,
                    v,
                    cfg.padded_vocab_size,
                )
                .ok_or_err()?;
                last.counted = Some(y.iter().filter(|&&x| (x as usize) < v).count());
                let mut losses = be.download_f32(acts.losses)?;
                losses.truncate(rows);
                StageOutput::Loss(mean_counted_loss(&losses, y, v))
            }
        };
        s.busy = Some(last);
        Ok(out)
    }

    /// Backward of the micro-batch in `slot`, freeing the slot. The last
    /// stage starts from [`StageGrad::Loss`], the others from
    /// [`StageGrad::Hidden`]; returns d(input hidden) `[b*t, C]` for the
    /// previous stage (`None` on the first, which ends in the embeddings).
    pub fn backward(
        &mut self,
        be: &mut BackendBox,
        slot: usize,
        grad: StageGrad<'_>,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(last) = self.slots.get(slot).and_then(|s| s.busy) else {
            return Err(ModelError::Input(format!(
                "stage backward: slot {slot} holds no forward"
            )));
        };
        let cfg = self.gpt.config.clone();
        let c = cfg.n_embd;
        let rows = last.b * last.t;
        let s = &self.slots[slot];
        let acts = &s.acts;
        let g = &acts.grads;
        match (self.is_last(), grad) {
            (true, StageGrad::Loss { scale }) => {
                // Gpt::stage_mean_loss_weights, for this slot's targets.
                let counted = last.counted.unwrap_or(0);
                let w = if counted == 0 {
                    0.0
                } else {
                    scale / counted as f32
                };
                let v = cfg.vocab_size;
                self.host_f32.clear();
                self.host_f32.extend(
                    s.targets
                        .iter()
                        .map(|&y| if (y as usize) < v { w } else { 0.0 }),
                );
                be.upload_f32(g.dlosses, &self.host_f32)?;
                self.gpt.head_backward(be, acts, rows)?;
                be.zero(g.dresidual).ok_or_err()?;
                let top = acts.layers.last().expect("a non-empty stage").residual3;
                let p = |i: usize| self.gpt.params[i].weight();
                let d = |i: usize| self.gpt.params[i].grad;
                if cfg.llama.is_some() {
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
                } else {
                    let lnf = ln_f_index(&cfg);
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
                }
            }
            (false, StageGrad::Hidden(dh)) if dh.len() == rows * c => {
                self.host_f32.clear();
                self.host_f32.extend_from_slice(dh);
                self.host_f32.resize(acts.rows * c, 0.0);
                be.upload_f32(g.dresidual, &self.host_f32)?;
            }
            (is_last, _) => {
                return Err(ModelError::Input(format!(
                    "stage backward: {}",
                    if is_last {
                        "the last stage starts from the loss".to_string()
                    } else {
                        format!("need d(output hidden) of {rows} x {c}")
                    }
                )))
            }
        }
        match &self.gpt.rope {
            None => self
                .gpt
                .gpt2_blocks_backward(be, acts, self.layers.start, last)?,
            Some(rope) => {
                // f32 only: each branch takes the residual gradient as is.
                let branch_grad =
                    |_: &mut BackendBox| -> Result<BufId, ModelError> { Ok(g.dresidual) };
                let grads = BlockGrads {
                    dresidual: g.dresidual,
                    dln: g.dln,
                    datty: g.datty,
                    dqkv: g.dqkv,
                    dfch_gelu: g.dfch_gelu,
                    dfch: g.dfch,
                    dqkv_bias: g.dqkv_bias.expect("allocated for Llama-family configs"),
                };
                for (i, la) in acts.layers.iter().enumerate().rev() {
                    let x = if i == 0 {
                        acts.encoded
                    } else {
                        acts.layers[i - 1].residual3
                    };
                    llama_block_backward(
                        be,
                        &cfg,
                        &self.gpt.params,
                        None,
                        rope,
                        self.layers.start + i,
                        &la.io(x),
                        la.att,
                        None,
                        Positions::From(0),
                        &grads,
                        &branch_grad,
                        last.b,
                        last.t,
                    )?;
                }
            }
        }
        let out = if self.is_first() {
            self.gpt.embedding_backward_from(be, acts, last)?;
            None
        } else {
            let mut dx = be.download_f32(g.dresidual)?;
            dx.truncate(rows * c);
            Some(dx)
        };
        self.slots[slot].busy = None;
        Ok(out)
    }

    /// Makes `slot` exist, be free and hold `rows` / `att_len`.
    fn ensure_slot(
        &mut self,
        be: &mut BackendBox,
        slot: usize,
        rows: usize,
        att_len: usize,
    ) -> Result<(), ModelError> {
        if slot > self.slots.len() {
            return Err(ModelError::Input(format!(
                "stage forward: slot {slot} skips ahead of the {} allocated",
                self.slots.len()
            )));
        }
        let n_layers = self.layers.len();
        let new = |be: &mut BackendBox, gpt: &Gpt| {
            Activations::with_layers(be, &gpt.config, rows, att_len, gpt.act_dtype(), n_layers)
        };
        if slot == self.slots.len() {
            let acts = new(be, &self.gpt)?;
            self.slots.push(Slot {
                acts,
                busy: None,
                targets: Vec::new(),
            });
            return Ok(());
        }
        let s = &mut self.slots[slot];
        if s.busy.is_some() {
            return Err(ModelError::Input(format!(
                "stage forward: slot {slot} still holds a micro-batch (backward it first)"
            )));
        }
        if !s.acts.fits(rows, att_len) {
            let acts = new(be, &self.gpt)?;
            std::mem::replace(&mut s.acts, acts).release(be)?;
        }
        Ok(())
    }

    /// Frees every buffer (the model's and the slots').
    pub fn release(self, be: &mut BackendBox) -> Result<(), ModelError> {
        let gpt = self.into_gpt(be)?;
        gpt.release(be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GptConfig;

    fn cpu() -> BackendBox {
        kiln_tensor::cpu_backend(Some(1))
    }

    fn batch(n: usize, v: u32, salt: u32) -> (Vec<u32>, Vec<u32>) {
        let tok: Vec<u32> = (0..n as u32).map(|i| (i * 7 + salt * 3 + 1) % v).collect();
        let tgt: Vec<u32> = (0..n as u32).map(|i| (i * 5 + salt + 2) % v).collect();
        (tok, tgt)
    }

    /// The stages in sequence, micro-batches forwarded all first (several
    /// slots in flight), then backward in reverse: same loss and grads as
    /// the whole model on each micro-batch, accumulated.
    #[allow(clippy::needless_range_loop)] // k names a micro-batch and a slot
    fn check_sequence(cfg: GptConfig, n_stages: usize) {
        let mut be = cpu();
        let (b, t, m) = (2usize, 8usize, 3usize);
        let v = cfg.vocab_size as u32;
        let mut whole = Gpt::new(&mut be, cfg.clone(), 7).unwrap();
        let mut want_losses = Vec::new();
        for k in 0..m {
            let (tok, tgt) = batch(b * t, v, k as u32);
            want_losses.push(
                whole
                    .forward(&mut be, &tok, Some(&tgt), b, t)
                    .unwrap()
                    .unwrap(),
            );
            whole.backward(&mut be, 1.0 / m as f32).unwrap();
        }
        let want = whole.read_grads(&mut be).unwrap();

        let ranges = split_layers(cfg.n_layer, n_stages);
        let mut stages: Vec<Stage> = ranges
            .iter()
            .map(|r| Stage::new(Gpt::new(&mut be, cfg.clone(), 7).unwrap(), r.clone()).unwrap())
            .collect();
        for k in 0..m {
            let (tok, tgt) = batch(b * t, v, k as u32);
            let mut h = Vec::new();
            for (s, st) in stages.iter_mut().enumerate() {
                let input = if s == 0 {
                    StageInput::Tokens(&tok)
                } else {
                    StageInput::Hidden(&h)
                };
                let y = st.is_last().then_some(&tgt[..]);
                match st.forward(&mut be, k, input, y, b, t).unwrap() {
                    StageOutput::Hidden(x) => h = x,
                    StageOutput::Loss(l) => assert_eq!(l, want_losses[k], "micro-batch {k}"),
                }
            }
        }
        for st in &stages {
            assert_eq!(st.slots_allocated(), m);
        }
        for k in (0..m).rev() {
            let mut dh: Option<Vec<f32>> = None;
            for st in stages.iter_mut().rev() {
                let grad = match &dh {
                    None => StageGrad::Loss {
                        scale: 1.0 / m as f32,
                    },
                    Some(d) => StageGrad::Hidden(d),
                };
                dh = st.backward(&mut be, k, grad).unwrap();
            }
            assert!(dh.is_none());
        }
        // Every parameter owned by some stage; wte summed over its owners.
        let n = want.len();
        let mut got = vec![Vec::<f32>::new(); n];
        for st in &stages {
            for i in st.owned_params() {
                let g = st.read_grad(&mut be, i).unwrap();
                if got[i].is_empty() {
                    got[i] = g;
                } else {
                    got[i].iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                }
            }
        }
        for i in 0..n {
            assert_eq!(got[i].len(), want[i].len(), "param {i} owned by no stage?");
            let scale = want[i].iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-6);
            for (j, (a, w)) in got[i].iter().zip(&want[i]).enumerate() {
                assert!(
                    (a - w).abs() <= 1e-6 * scale,
                    "param {i} elem {j}: stages {a} vs whole {w}"
                );
            }
        }
    }

    #[test]
    fn gpt2_stages_in_sequence_match_the_whole_model() {
        let cfg = GptConfig::new(50, 16, 4, 2, 16);
        for n in [1, 2, 4] {
            check_sequence(cfg.clone(), n);
        }
        check_sequence(GptConfig::new(50, 16, 3, 2, 16), 2);
    }

    #[test]
    fn llama_stages_in_sequence_match_the_whole_model() {
        let cfg = GptConfig::new_llama(crate::LlamaFamily::Llama, 50, 16, 4, 4, 2, 16, 24, true);
        check_sequence(cfg, 2);
    }

    #[test]
    fn a_busy_slot_is_refused_and_misuse_is_an_error() {
        let mut be = cpu();
        let cfg = GptConfig::new(50, 16, 2, 2, 16);
        let mut first = Stage::new(Gpt::new(&mut be, cfg.clone(), 1).unwrap(), 0..1).unwrap();
        let (tok, tgt) = batch(16, 50, 0);
        first
            .forward(&mut be, 0, StageInput::Tokens(&tok), None, 2, 8)
            .unwrap();
        assert!(first
            .forward(&mut be, 0, StageInput::Tokens(&tok), None, 2, 8)
            .is_err());
        assert!(first
            .forward(&mut be, 1, StageInput::Tokens(&tok), Some(&tgt), 2, 8)
            .is_err());
        assert!(first
            .backward(&mut be, 0, StageGrad::Loss { scale: 1.0 })
            .is_err());
        assert!(first.backward(&mut be, 1, StageGrad::Hidden(&[])).is_err());
        assert!(Stage::new(Gpt::new(&mut be, cfg, 1).unwrap(), 1..3).is_err());
        assert_eq!(split_layers(5, 2), vec![0..3, 3..5]);
        assert_eq!(split_layers(4, 4), vec![0..1, 1..2, 2..3, 3..4]);
    }
}
