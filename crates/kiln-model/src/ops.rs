//! Thin helpers over Backend ops that the forward and backward passes share:
//! linear layers (PyTorch `nn.Linear` layout), the tied lm_head, LayerNorm
//! and the attention shape of a GPT-2 block.

use kiln_abi::{
    AttentionShape, BackendBox, BufId, IntoBResult, MatmulArgs, NormArgs, NormBackwardArgs,
    NormKind, ROption,
};

use crate::ModelError;

fn opt(b: Option<BufId>) -> ROption<BufId> {
    b.map_or(ROption::RNone, ROption::RSome)
}

/// `out[rows, out_f] = inp[rows, in_f] @ w[out_f, in_f]^T + bias`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    be: &mut BackendBox,
    out: BufId,
    inp: BufId,
    w: BufId,
    bias: Option<BufId>,
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Result<(), ModelError> {
    be.matmul(MatmulArgs {
        bias: opt(bias),
        trans_b: true,
        ..MatmulArgs::new(out, inp, w, rows, out_f, in_f)
    })
    .ok_or_err()?;
    Ok(())
}

/// Backward of [`linear`]: `dinp = dout @ w` (overwritten), `dw += dout^T @ inp`,
/// `dbias += colsum(dout)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward(
    be: &mut BackendBox,
    dinp: BufId,
    dw: BufId,
    dbias: Option<BufId>,
    dout: BufId,
    inp: BufId,
    w: BufId,
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Result<(), ModelError> {
    be.matmul(MatmulArgs::new(dinp, dout, w, rows, in_f, out_f))
        .ok_or_err()?;
    be.matmul(MatmulArgs {
        trans_a: true,
        beta: 1.0,
        ..MatmulArgs::new(dw, dout, inp, out_f, in_f, rows)
    })
    .ok_or_err()?;
    if let Some(db) = dbias {
        be.bias_backward(db, dout, rows, out_f).ok_or_err()?;
    }
    Ok(())
}

/// The tied lm_head: `logits[rows, vp] = inp @ wte^T`.
pub(crate) fn lm_head(
    be: &mut BackendBox,
    logits: BufId,
    inp: BufId,
    wte: BufId,
    rows: usize,
    c: usize,
    vp: usize,
) -> Result<(), ModelError> {
    linear(be, logits, inp, wte, None, rows, c, vp)
}

/// The buffers of one LayerNorm application.
pub(crate) struct LayerNormIo {
    pub out: BufId,
    pub mean: BufId,
    pub rstd: BufId,
    pub inp: BufId,
    pub weight: BufId,
    pub bias: BufId,
}

pub(crate) fn layernorm(
    be: &mut BackendBox,
    io: &LayerNormIo,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(), ModelError> {
    be.norm_forward(NormArgs {
        kind: NormKind::LayerNorm,
        out: io.out,
        mean: ROption::RSome(io.mean),
        rstd: io.rstd,
        inp: io.inp,
        weight: io.weight,
        bias: ROption::RSome(io.bias),
        residual: ROption::RNone,
        residual_out: ROption::RNone,
        rows,
        cols,
        eps,
    })
    .ok_or_err()?;
    Ok(())
}

/// Accumulates `dinp`, `dweight`, `dbias` of [`layernorm`] (`io.out` is unused).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layernorm_backward(
    be: &mut BackendBox,
    dinp: BufId,
    dweight: BufId,
    dbias: BufId,
    dout: BufId,
    io: &LayerNormIo,
    rows: usize,
    cols: usize,
) -> Result<(), ModelError> {
    be.norm_backward(NormBackwardArgs {
        kind: NormKind::LayerNorm,
        dinp,
        dweight: ROption::RSome(dweight),
        dbias: ROption::RSome(dbias),
        dout,
        inp: io.inp,
        weight: io.weight,
        mean: ROption::RSome(io.mean),
        rstd: io.rstd,
        rows,
        cols,
    })
    .ok_or_err()?;
    Ok(())
}

/// GPT-2's attention: multi-head (as many key/value heads as query heads),
/// causal, no window.
pub(crate) fn gpt2_attention_shape(b: usize, t: usize, c: usize, nh: usize) -> AttentionShape {
    AttentionShape {
        b,
        t,
        nh,
        nkv: nh,
        hd: c / nh,
        window: 0,
    }
}

/// `1/sqrt(head_dim)`, computed as the 0.1 backend did (in f32).
pub(crate) fn attention_scale(c: usize, nh: usize) -> f32 {
    1.0 / ((c / nh) as f32).sqrt()
}
