//! One transformer block's forward, shared by training (every activation
//! kept per layer, full causal attention) and generation (one reused set of
//! buffers, attention against a KV cache).

use kiln_abi::{BackendBox, BufId, IntoBResult};

use crate::ops::linear;
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
    /// Causal self-attention over the `t` positions of the call, saving the
    /// probabilities `att [B,NH,T,T]` for backward.
    Causal { att: BufId },
    /// Causal attention within segments only (packed rows: `segments`
    /// u32 `[B,T]`); `att` as for `Causal`, masked entries 0.
    Segmented { att: BufId, segments: BufId },
    /// The call's `t` positions are `t_past..t_past+t`; their keys and values
    /// join the caches (`[B,NH,t_max,C/NH]`) and queries attend to the cache.
    Cached {
        k_cache: BufId,
        v_cache: BufId,
        t_past: usize,
        t_max: usize,
    },
}

/// Block `l` on `b x t` rows: `residual2 = inp + attn(ln1(inp))`,
/// `out = residual2 + mlp(ln2(residual2))`.
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
    let w = |s: usize| params[layer_index(l, s)].value;
    be.layernorm_forward(
        io.ln1,
        io.ln1_mean,
        io.ln1_rstd,
        io.inp,
        w(slot::LN1_W),
        w(slot::LN1_B),
        rows,
        c,
        eps,
    )
    .ok_or_err()?;
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
    match attention {
        Attention::Causal { att } => be.attention_forward(io.atty, att, io.qkv, b, t, c, nh),
        Attention::Segmented { att, segments } => {
            be.attention_forward_segments(io.atty, att, io.qkv, segments, b, t, c, nh)
        }
        Attention::Cached {
            k_cache,
            v_cache,
            t_past,
            t_max,
        } => be.attention_kv_forward(
            io.atty, io.qkv, k_cache, v_cache, b, t, t_past, t_max, c, nh,
        ),
    }
    .ok_or_err()?;
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
    be.layernorm_forward(
        io.ln2,
        io.ln2_mean,
        io.ln2_rstd,
        io.residual2,
        w(slot::LN2_W),
        w(slot::LN2_B),
        rows,
        c,
        eps,
    )
    .ok_or_err()?;
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
    be.gelu_forward(io.fch_gelu, io.fch, rows * 4 * c)
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
