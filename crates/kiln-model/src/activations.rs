//! Activation and gradient-scratch buffers for training forward/backward.
//!
//! Sized for a capacity of `rows = B*T` and `att =
//! attention_workspace_len(shape)` elements (the backend's attention
//! workspace; per-row softmax statistics on the CPU); a call
//! with a larger batch reallocates once, smaller ones reuse the buffers (ops
//! accept buffers larger than they need), so steady-state steps allocate
//! nothing.

use kiln_abi::{BackendBox, BufId, DType, IntoBResult};

use crate::block::BlockIo;
use crate::ops::LayerNormIo;
use crate::{GptConfig, ModelError};

/// Saved activations of one transformer block (llm.c naming).
pub(crate) struct LayerActs {
    pub ln1: BufId,
    pub ln1_mean: BufId,
    pub ln1_rstd: BufId,
    pub qkv: BufId,
    pub atty: BufId,
    /// The backend's attention workspace (what its backward needs).
    pub att: BufId,
    pub attproj: BufId,
    pub residual2: BufId,
    pub ln2: BufId,
    pub ln2_mean: BufId,
    pub ln2_rstd: BufId,
    pub fch: BufId,
    pub fch_gelu: BufId,
    pub fcproj: BufId,
    /// Block output (input of the next block).
    pub residual3: BufId,
}

impl LayerActs {
    /// The block's buffers, reading `inp` (the previous block's output).
    pub fn io(&self, inp: BufId) -> BlockIo {
        BlockIo {
            inp,
            ln1: self.ln1,
            ln1_mean: self.ln1_mean,
            ln1_rstd: self.ln1_rstd,
            qkv: self.qkv,
            atty: self.atty,
            attproj: self.attproj,
            residual2: self.residual2,
            ln2: self.ln2,
            ln2_mean: self.ln2_mean,
            ln2_rstd: self.ln2_rstd,
            fch: self.fch,
            fch_gelu: self.fch_gelu,
            fcproj: self.fcproj,
            out: self.residual3,
        }
    }
}

/// Gradient scratch, reused block after block during backward.
pub(crate) struct GradScratch {
    /// d(residual stream), carried from the top of the model to the encoder.
    pub dresidual: BufId,
    /// d(layernorm output) or d(attention output), `[rows, C]`.
    pub dln: BufId,
    pub datty: BufId,
    pub dqkv: BufId,
    pub dfch_gelu: BufId,
    pub dfch: BufId,
    /// Per-row loss weights for crossentropy_backward.
    pub dlosses: BufId,
    /// `[qkv_width]` f32: the fused q/k/v bias gradient (Llama family only,
    /// so that GPT-2's buffers stay what they were).
    pub dqkv_bias: Option<BufId>,
}

pub(crate) struct Activations {
    /// Capacity: rows (B*T) and attention workspace elements (as
    /// `attention_workspace_len` asks).
    pub rows: usize,
    pub att_len: usize,
    pub tokens: BufId,
    pub targets: BufId,
    /// Per-token positions and segment ids of a packed batch.
    pub positions: BufId,
    pub segments: BufId,
    pub encoded: BufId,
    pub layers: Vec<LayerActs>,
    pub lnf: BufId,
    pub lnf_mean: BufId,
    pub lnf_rstd: BufId,
    /// Logits after forward; backward reuses the buffer for d(logits)
    /// in place (the cross-entropy backward overwrites the logits with their
    /// gradient), saving `rows * Vp` floats.
    pub logits: BufId,
    /// Log-sum-exp of each row's logits (the cross-entropy backward
    /// recomputes the probabilities from them).
    pub lse: BufId,
    pub losses: BufId,
    pub grads: GradScratch,
    all: Vec<BufId>,
    bytes: usize,
}

impl Activations {
    pub fn new(
        be: &mut BackendBox,
        cfg: &GptConfig,
        rows: usize,
        att_len: usize,
        act: DType,
    ) -> Result<Self, ModelError> {
        Activations::with_layers(be, cfg, rows, att_len, act, cfg.n_layer)
    }

    /// Like [`Activations::new`] but with `n_layers` sets of block
    /// activations (a pipeline stage keeps only its own blocks': entry `i`
    /// of `layers` belongs to the stage's `i`-th block).
    pub fn with_layers(
        be: &mut BackendBox,
        cfg: &GptConfig,
        rows: usize,
        att_len: usize,
        act: DType,
        n_layers: usize,
    ) -> Result<Self, ModelError> {
        let c = cfg.n_embd;
        let vp = cfg.padded_vocab_size;
        // GPT-2: 3C and 4C; a Llama-family config's q|k|v and gate|up widths.
        let (qkv_w, mlp_in, mlp_act) = (cfg.qkv_width(), cfg.mlp_in_width(), cfg.mlp_act_width());
        let mut all = Vec::new();
        let mut bytes = 0usize;
        let mut buf = |dtype: DType, len: usize| -> Result<BufId, ModelError> {
            let id = be.alloc(dtype, len.max(1)).ok_or_err()?;
            all.push(id);
            bytes += len.max(1) * dtype.size();
            Ok(id)
        };
        // Activations and their gradients in the policy's dtype `act`;
        // statistics (norm mean/rstd, lse, losses and their weights), the
        // attention workspace and the residual stream `r` (and its gradient)
        // stay f32, as under PyTorch's autocast, where `x + f(x)` adds a
        // 16-bit branch to an f32 stream.
        let f = act;
        let s = DType::F32;
        let r = DType::F32;
        let tokens = buf(DType::U32, rows)?;
        let targets = buf(DType::U32, rows)?;
        let positions = buf(DType::U32, rows)?;
        let segments = buf(DType::U32, rows)?;
        let encoded = buf(r, rows * c)?;
        let mut layers = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            layers.push(LayerActs {
                ln1: buf(f, rows * c)?,
                ln1_mean: buf(s, rows)?,
                ln1_rstd: buf(s, rows)?,
                qkv: buf(f, rows * qkv_w)?,
                atty: buf(f, rows * c)?,
                att: buf(s, att_len)?,
                attproj: buf(f, rows * c)?,
                residual2: buf(r, rows * c)?,
                ln2: buf(f, rows * c)?,
                ln2_mean: buf(s, rows)?,
                ln2_rstd: buf(s, rows)?,
                fch: buf(f, rows * mlp_in)?,
                fch_gelu: buf(f, rows * mlp_act)?,
                fcproj: buf(f, rows * c)?,
                residual3: buf(r, rows * c)?,
            });
        }
        let lnf = buf(f, rows * c)?;
        let lnf_mean = buf(s, rows)?;
        let lnf_rstd = buf(s, rows)?;
        let logits = buf(f, rows * vp)?;
        let lse = buf(s, rows)?;
        let losses = buf(s, rows)?;
        let grads = GradScratch {
            dresidual: buf(r, rows * c)?,
            dln: buf(f, rows * c)?,
            datty: buf(f, rows * c)?,
            dqkv: buf(f, rows * qkv_w)?,
            dfch_gelu: buf(f, rows * mlp_act)?,
            dfch: buf(f, rows * mlp_in)?,
            dlosses: buf(s, rows)?,
            dqkv_bias: match cfg.llama {
                Some(_) => Some(buf(s, qkv_w)?),
                None => None,
            },
        };
        Ok(Activations {
            rows,
            att_len,
            tokens,
            targets,
            positions,
            segments,
            encoded,
            layers,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            lse,
            losses,
            grads,
            all,
            bytes,
        })
    }

    /// Bytes of every buffer allocated here.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The final LayerNorm: `lnf = LN(top)`.
    pub fn lnf_io(&self, top: BufId, weight: BufId, bias: BufId) -> LayerNormIo {
        LayerNormIo {
            out: self.lnf,
            mean: self.lnf_mean,
            rstd: self.lnf_rstd,
            inp: top,
            weight,
            bias,
        }
    }

    pub fn fits(&self, rows: usize, att_len: usize) -> bool {
        rows <= self.rows && att_len <= self.att_len
    }

    pub fn release(self, be: &mut BackendBox) -> Result<(), ModelError> {
        for id in self.all {
            be.free(id).ok_or_err()?;
        }
        Ok(())
    }
}
