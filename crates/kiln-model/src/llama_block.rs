//! One Llama-family block, forward and backward, over the same buffers as
//! GPT-2's ([`BlockIo`]; `fch` holds `[gate | up]`, `fch_gelu` the SwiGLU
//! output, `ln*_mean` are unused):
//!
//!     h   = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rms1(x)
//!     out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                    n2 = rms2(h)
//!
//! q, k and v (each `nn.Linear`, with Qwen2's biases) write column blocks
//! of the fused `qkv` the attention op reads, gate and up those of `fch`.

use kiln_abi::{AttentionBackwardArgs, BackendBox, BufId, IntoBResult, ROption};

use crate::block::{Attention, BlockIo};
use crate::llama_params::{layer_index, slots};
use crate::lora::{whole, Lora, LoraTarget};
use crate::ops::{
    attention_scale, linear, linear_backward, linear_backward_from_cols, linear_into_cols,
    model_attention_shape, rmsnorm, rmsnorm_backward, Cols,
};
use crate::params::Param;
use crate::rope::{Positions, RopeTables};
use crate::{GptConfig, ModelError};

/// The q, k, v column blocks of a fused `[rows, qkv_width]` buffer.
fn qkv_cols(cfg: &GptConfig, buf: BufId) -> [Cols; 3] {
    let (hd, q, kv) = (cfg.head_dim(), cfg.n_head, cfg.n_kv_head());
    let stride = cfg.qkv_width();
    let at = |col: usize, width: usize| Cols {
        buf,
        stride,
        col,
        width,
    };
    [
        at(0, q * hd),
        at(q * hd, kv * hd),
        at((q + kv) * hd, kv * hd),
    ]
}

/// The gate and up column blocks of a fused `[rows, 2F]` buffer.
fn gate_up_cols(cfg: &GptConfig, buf: BufId) -> [Cols; 2] {
    let f = cfg.mlp_act_width();
    let at = |col: usize| Cols {
        buf,
        stride: 2 * f,
        col,
        width: f,
    };
    [at(0), at(f)]
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn llama_block_forward(
    be: &mut BackendBox,
    cfg: &GptConfig,
    params: &[Param],
    lora: Option<&Lora>,
    rope: &RopeTables,
    l: usize,
    io: &BlockIo,
    attention: Attention,
    positions: Positions,
    b: usize,
    t: usize,
) -> Result<(), ModelError> {
    let (c, eps) = (cfg.n_embd, cfg.layer_norm_eps);
    let f = cfg.mlp_act_width();
    let rows = b * t;
    let s = slots(cfg);
    let w = |slot: usize| params[layer_index(cfg, l, slot)].weight();
    rmsnorm(be, io.ln1, io.ln1_rstd, io.inp, w(s.ln1_w), rows, c, eps)?;
    let adapt = |be: &mut BackendBox, target, x, out: Cols| match lora {
        Some(lo) => lo.forward(be, l, target, x, out, rows),
        None => Ok(()),
    };
    let projections = [(s.q_w, s.q_b), (s.k_w, s.k_b), (s.v_w, s.v_b)];
    let qkv_targets = [LoraTarget::Q, LoraTarget::K, LoraTarget::V];
    for (((wi, bi), cols), target) in projections
        .into_iter()
        .zip(qkv_cols(cfg, io.qkv))
        .zip(qkv_targets)
    {
        linear_into_cols(be, cols, io.ln1, w(wi), bi.map(w), rows, c)?;
        adapt(be, target, io.ln1, cols)?;
    }
    rope.apply_qk(be, cfg, io.qkv, positions, b, t, false)?;
    let shape = model_attention_shape(cfg, b, t);
    let scale = attention_scale(c, cfg.n_head);
    attention.forward(be, io.atty, io.qkv, shape, scale)?;
    linear(be, io.attproj, io.atty, w(s.o_w), None, rows, c, c)?;
    adapt(be, LoraTarget::O, io.atty, whole(io.attproj, c))?;
    be.add(io.residual2, io.inp, io.attproj, rows * c)
        .ok_or_err()?;
    rmsnorm(
        be,
        io.ln2,
        io.ln2_rstd,
        io.residual2,
        w(s.ln2_w),
        rows,
        c,
        eps,
    )?;
    for ((wi, cols), target) in [s.gate_w, s.up_w]
        .into_iter()
        .zip(gate_up_cols(cfg, io.fch))
        .zip([LoraTarget::Gate, LoraTarget::Up])
    {
        linear_into_cols(be, cols, io.ln2, w(wi), None, rows, c)?;
        adapt(be, target, io.ln2, cols)?;
    }
    be.swiglu_forward(io.fch_gelu, io.fch, rows, f)
        .ok_or_err()?;
    linear(be, io.fcproj, io.fch_gelu, w(s.down_w), None, rows, f, c)?;
    adapt(be, LoraTarget::Down, io.fch_gelu, whole(io.fcproj, c))?;
    be.add(io.out, io.residual2, io.fcproj, rows * c)
        .ok_or_err()?;
    Ok(())
}

/// Gradient buffers one block's backward works in.
pub(crate) struct BlockGrads {
    /// d(block output) on entry, d(block input) on return (accumulated).
    pub dresidual: BufId,
    pub dln: BufId,
    pub datty: BufId,
    pub dqkv: BufId,
    pub dfch_gelu: BufId,
    pub dfch: BufId,
    /// `[qkv_width]` f32 scratch for the q/k/v bias gradients (Qwen2).
    pub dqkv_bias: BufId,
}

/// Backward of [`llama_block_forward`] (training attention only).
/// `branch_grad` hands each branch its gradient in the compute dtype
/// (see the GPT-2 backward); it may use `grads.dln`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn llama_block_backward(
    be: &mut BackendBox,
    cfg: &GptConfig,
    params: &[Param],
    lora: Option<&Lora>,
    rope: &RopeTables,
    l: usize,
    io: &BlockIo,
    workspace: BufId,
    segments: Option<BufId>,
    positions: Positions,
    g: &BlockGrads,
    branch_grad: &dyn Fn(&mut BackendBox) -> Result<BufId, ModelError>,
    b: usize,
    t: usize,
) -> Result<(), ModelError> {
    let c = cfg.n_embd;
    let f = cfg.mlp_act_width();
    let rows = b * t;
    let s = slots(cfg);
    let w = |slot: usize| params[layer_index(cfg, l, slot)].weight();
    let dw = |slot: usize| params[layer_index(cfg, l, slot)].grad;
    // The adapters' share of d(projection input), added after the base's.
    let adapt = |be: &mut BackendBox, target, x, dout: Cols, dx| match lora {
        Some(lo) => lo.backward(be, l, target, x, dout, dx, rows),
        None => Ok(()),
    };

    // MLP.
    let dfcproj = branch_grad(be)?;
    linear_backward(
        be,
        g.dfch_gelu,
        dw(s.down_w),
        None,
        dfcproj,
        io.fch_gelu,
        w(s.down_w),
        rows,
        f,
        c,
    )?;
    adapt(
        be,
        LoraTarget::Down,
        io.fch_gelu,
        whole(dfcproj, c),
        g.dfch_gelu,
    )?;
    be.zero(g.dfch).ok_or_err()?;
    be.swiglu_backward(g.dfch, io.fch, g.dfch_gelu, rows, f)
        .ok_or_err()?;
    for (i, ((wi, cols), target)) in [s.gate_w, s.up_w]
        .into_iter()
        .zip(gate_up_cols(cfg, g.dfch))
        .zip([LoraTarget::Gate, LoraTarget::Up])
        .enumerate()
    {
        linear_backward_from_cols(be, g.dln, i > 0, dw(wi), cols, io.ln2, w(wi), rows, c)?;
        adapt(be, target, io.ln2, cols, g.dln)?;
    }
    rmsnorm_backward(
        be,
        g.dresidual,
        dw(s.ln2_w),
        g.dln,
        io.residual2,
        w(s.ln2_w),
        io.ln2_rstd,
        rows,
        c,
    )?;

    // Attention.
    let dattproj = branch_grad(be)?;
    linear_backward(
        be,
        g.datty,
        dw(s.o_w),
        None,
        dattproj,
        io.atty,
        w(s.o_w),
        rows,
        c,
        c,
    )?;
    adapt(be, LoraTarget::O, io.atty, whole(dattproj, c), g.datty)?;
    be.zero(g.dqkv).ok_or_err()?;
    be.attention_backward(AttentionBackwardArgs {
        dqkv: g.dqkv,
        dout: g.datty,
        qkv: io.qkv,
        out: io.atty,
        workspace,
        segments: segments.map_or(ROption::RNone, ROption::RSome),
        shape: model_attention_shape(cfg, b, t),
        scale: attention_scale(c, cfg.n_head),
    })
    .ok_or_err()?;
    // d(pre-rotation q, k) = the inverse rotation of d(rotated q, k).
    rope.apply_qk(be, cfg, g.dqkv, positions, b, t, true)?;
    if s.q_b.and_then(dw).is_some() {
        // One column sum over the fused gradient, then each bias's share.
        be.zero(g.dqkv_bias).ok_or_err()?;
        be.bias_backward(g.dqkv_bias, g.dqkv, rows, cfg.qkv_width())
            .ok_or_err()?;
        let biases = [s.q_b, s.k_b, s.v_b];
        for (bi, cols) in biases.into_iter().zip(qkv_cols(cfg, g.dqkv_bias)) {
            let part = be.view(g.dqkv_bias, cols.col, cols.width).ok_or_err()?;
            let bias_grad = dw(bi.expect("all three biases or none"));
            let bias_grad = bias_grad.expect("q, k and v biases freeze together");
            let r = be.axpy(bias_grad, part, cols.width, 1.0);
            be.free(part).ok_or_err()?;
            r.ok_or_err()?;
        }
    }
    let projections = [s.q_w, s.k_w, s.v_w];
    let qkv_targets = [LoraTarget::Q, LoraTarget::K, LoraTarget::V];
    for (i, ((wi, cols), target)) in projections
        .into_iter()
        .zip(qkv_cols(cfg, g.dqkv))
        .zip(qkv_targets)
        .enumerate()
    {
        linear_backward_from_cols(be, g.dln, i > 0, dw(wi), cols, io.ln1, w(wi), rows, c)?;
        adapt(be, target, io.ln1, cols, g.dln)?;
    }
    rmsnorm_backward(
        be,
        g.dresidual,
        dw(s.ln1_w),
        g.dln,
        io.inp,
        w(s.ln1_w),
        io.ln1_rstd,
        rows,
        c,
    )?;
    Ok(())
}
