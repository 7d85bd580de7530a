//! One transformer block's forward, shared by training (every activation
//! kept per layer, full causal attention) and generation (one reused set of
//! buffers, attention against a KV cache).

use kiln_abi::{
    AttentionArgs, AttentionShape, BackendBox, BufId, IntoBResult, KvAttentionArgs, ROption, Unary,
};

use crate::ops::{attention_scale, gpt2_attention_shape, layernorm, linear, LayerNormIo};
use crate::params::{layer_index, slot, Param};
use crate::{GptConfig, ModelError};

/// Where one block reads and writes (llm.c names). `inp` and `out` must be
/// different buffers (backend outputs never alias inputs); the LayerNorm and
/// projection buffers may be shared between the two halves of the block.
pub(crate) struct BlockIo {
    pub inp: BufId,
    pub ln1: BufId,
    pub ln1_mean: BufId,
    pub ln1_rstd: BufId,
    pub qkv: BufId,
    pub atty: BufId,
    pub attproj: BufId,
    pub residual2: BufId,
    pub ln2: BufId,
    pub ln2_mean: BufId,
    pub ln2_rstd: BufId,
    pub fch: BufId,
    pub fch_gelu: BufId,
    pub fcproj: BufId,
    pub out: BufId,
}

/// How the block attends.
pub(crate) enum Attention {
    /// Training / evaluation: keeps the backend's attention workspace.
    Causal { workspace: BufId },
    /// Packed rows: attention stays within each document's segment.
    Segmented { workspace: BufId, segments: BufId },
    /// Generation over a KV cache.
    Cached {
        k_cache: BufId,
        v_cache: BufId,
        t_past: usize,
        t_max: usize,
    },
}

impl Attention {
    /// `out` = attention over the fused `qkv`, the way this variant asks.
    pub(crate) fn forward(
        self,
        be: &mut BackendBox,
        out: BufId,
        qkv: BufId,
        shape: AttentionShape,
        scale: f32,
    ) -> Result<(), ModelError> {
        let args = |workspace, segments| AttentionArgs {
            out,
            workspace,
            qkv,
            segments,
            shape,
            scale,
        };
        match self {
            Attention::Causal { workspace } => {
                be.attention_forward(args(workspace, ROption::RNone))
            }
            Attention::Segmented {
                workspace,
                segments,
            } => be.attention_forward(args(workspace, ROption::RSome(segments))),
            Attention::Cached {
                k_cache,
                v_cache,
                t_past,
                t_max,
            } => be.attention_kv_forward(KvAttentionArgs {
                out,
                qkv,
                k_cache,
                v_cache,
                shape,
                t_past,
                t_max,
                scale,
            }),
        }
        .ok_or_err()?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn block_forward(
    be: &mut BackendBox,
    cfg: &GptConfig,
    params: &[Param],
    l: usize,
    io: &BlockIo,
    attention: Attention,
    b: usize,
    t: usize,
) -> Result<(), ModelError> {
    let (c, nh, eps) = (cfg.n_embd, cfg.n_head, cfg.layer_norm_eps);
    let rows = b * t;
    let w = |s: usize| params[layer_index(l, s)].weight();
    layernorm(be, &io.ln1_io(w(slot::LN1_W), w(slot::LN1_B)), rows, c, eps)?;
    linear(
        be,
        io.qkv,
        io.ln1,
        w(slot::QKV_W),
        Some(w(slot::QKV_B)),
        rows,
        c,
        3 * c,
    )?;
    let shape = gpt2_attention_shape(b, t, c, nh);
    let scale = attention_scale(c, nh);
    attention.forward(be, io.atty, io.qkv, shape, scale)?;
    linear(
        be,
        io.attproj,
        io.atty,
        w(slot::ATTN_PROJ_W),
        Some(w(slot::ATTN_PROJ_B)),
        rows,
        c,
        c,
    )?;
    be.add(io.residual2, io.inp, io.attproj, rows * c)
        .ok_or_err()?;
    layernorm(be, &io.ln2_io(w(slot::LN2_W), w(slot::LN2_B)), rows, c, eps)?;
    linear(
        be,
        io.fch,
        io.ln2,
        w(slot::FC_W),
        Some(w(slot::FC_B)),
        rows,
        c,
        4 * c,
    )?;
    be.unary_forward(Unary::Gelu, io.fch_gelu, io.fch, rows * 4 * c)
        .ok_or_err()?;
    linear(
        be,
        io.fcproj,
        io.fch_gelu,
        w(slot::FC_PROJ_W),
        Some(w(slot::FC_PROJ_B)),
        rows,
        4 * c,
        c,
    )?;
    be.add(io.out, io.residual2, io.fcproj, rows * c)
        .ok_or_err()?;
    Ok(())
}

impl BlockIo {
    /// The first LayerNorm: `ln1 = LN(inp)`.
    pub(crate) fn ln1_io(&self, weight: BufId, bias: BufId) -> LayerNormIo {
        LayerNormIo {
            out: self.ln1,
            mean: self.ln1_mean,
            rstd: self.ln1_rstd,
            inp: self.inp,
            weight,
            bias,
        }
    }

    /// The second LayerNorm: `ln2 = LN(residual2)`.
    pub(crate) fn ln2_io(&self, weight: BufId, bias: BufId) -> LayerNormIo {
        LayerNormIo {
            out: self.ln2,
            mean: self.ln2_mean,
            rstd: self.ln2_rstd,
            inp: self.residual2,
            weight,
            bias,
        }
    }
}
