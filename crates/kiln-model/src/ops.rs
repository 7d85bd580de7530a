//! Thin helpers over Backend ops that the forward and backward passes share:
//! linear layers (PyTorch `nn.Linear` layout), the tied lm_head, LayerNorm
//! and the attention shape of a GPT-2 block. `linear` and `layernorm` (with
//! their backwards) are public: kiln-parallel's tensor-parallel block calls
//! them on its shards.

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
pub fn linear(
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
/// `dbias += colsum(dout)`; a frozen weight or bias (`None`) gets no product.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    be: &mut BackendBox,
    dinp: BufId,
    dw: Option<BufId>,
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
    if let Some(dw) = dw {
        be.matmul(MatmulArgs {
            trans_a: true,
            beta: 1.0,
            ..MatmulArgs::new(dw, dout, inp, out_f, in_f, rows)
        })
        .ok_or_err()?;
    }
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
pub struct LayerNormIo {
    pub out: BufId,
    pub mean: BufId,
    pub rstd: BufId,
    pub inp: BufId,
    pub weight: BufId,
    pub bias: BufId,
}

/// `io.out = LayerNorm(io.inp)`, keeping the mean and rstd for backward.
pub fn layernorm(
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

/// Accumulates `dinp`, `dweight`, `dbias` of [`layernorm`] (`io.out` is
/// unused; a frozen weight or bias, `None`, is skipped).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    be: &mut BackendBox,
    dinp: BufId,
    dweight: Option<BufId>,
    dbias: Option<BufId>,
    dout: BufId,
    io: &LayerNormIo,
    rows: usize,
    cols: usize,
) -> Result<(), ModelError> {
    be.norm_backward(NormBackwardArgs {
        kind: NormKind::LayerNorm,
        dinp,
        dweight: opt(dweight),
        dbias: opt(dbias),
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

/// A model's attention: grouped-query heads and the sliding window of a
/// Llama-family config (GPT-2: [`gpt2_attention_shape`]).
pub(crate) fn model_attention_shape(cfg: &crate::GptConfig, b: usize, t: usize) -> AttentionShape {
    AttentionShape {
        b,
        t,
        nh: cfg.n_head,
        nkv: cfg.n_kv_head(),
        hd: cfg.head_dim(),
        window: cfg.attention_window(),
    }
}

/// `out = x * rstd * w` over `rows x cols` (RMSNorm), saving `rstd`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm(
    be: &mut BackendBox,
    out: BufId,
    rstd: BufId,
    inp: BufId,
    weight: BufId,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(), ModelError> {
    be.norm_forward(NormArgs {
        kind: NormKind::RmsNorm,
        out,
        mean: ROption::RNone,
        rstd,
        inp,
        weight,
        bias: ROption::RNone,
        residual: ROption::RNone,
        residual_out: ROption::RNone,
        rows,
        cols,
        eps,
    })
    .ok_or_err()?;
    Ok(())
}

/// Accumulates `dinp` and `dweight` of [`rmsnorm`] (`None`: a frozen weight).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_backward(
    be: &mut BackendBox,
    dinp: BufId,
    dweight: Option<BufId>,
    dout: BufId,
    inp: BufId,
    weight: BufId,
    rstd: BufId,
    rows: usize,
    cols: usize,
) -> Result<(), ModelError> {
    be.norm_backward(NormBackwardArgs {
        kind: NormKind::RmsNorm,
        dinp,
        dweight: opt(dweight),
        dbias: ROption::RNone,
        dout,
        inp,
        weight,
        mean: ROption::RNone,
        rstd,
        rows,
        cols,
    })
    .ok_or_err()?;
    Ok(())
}

/// A column block `[rows, width]` at column `col` of a row-major buffer
/// `rows x stride`: one of the projections written into a fused output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cols {
    pub buf: BufId,
    pub stride: usize,
    pub col: usize,
    pub width: usize,
}

impl Cols {
    /// A view starting at the block's first element, long enough for
    /// `rows` rows of stride `stride` (free it after use).
    pub(crate) fn view(&self, be: &mut BackendBox, rows: usize) -> Result<BufId, ModelError> {
        let len = (rows - 1) * self.stride + self.width;
        Ok(be.view(self.buf, self.col, len).ok_or_err()?)
    }
}

/// [`linear`] writing into a column block: `out[:, col..col+out_f] = inp @ w^T + bias`.
pub(crate) fn linear_into_cols(
    be: &mut BackendBox,
    out: Cols,
    inp: BufId,
    w: BufId,
    bias: Option<BufId>,
    rows: usize,
    in_f: usize,
) -> Result<(), ModelError> {
    let view = out.view(be, rows)?;
    let r = be.matmul(MatmulArgs {
        bias: opt(bias),
        trans_b: true,
        ldc: out.stride,
        ..MatmulArgs::new(view, inp, w, rows, out.width, in_f)
    });
    be.free(view).ok_or_err()?;
    r.ok_or_err()?;
    Ok(())
}

/// Backward of [`linear_into_cols`] without the bias: `dinp (+)= dout @ w`
/// (`accumulate` adds, else overwrites), `dw += dout^T @ inp` (skipped for
/// a frozen weight, `None`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward_from_cols(
    be: &mut BackendBox,
    dinp: BufId,
    accumulate: bool,
    dw: Option<BufId>,
    dout: Cols,
    inp: BufId,
    w: BufId,
    rows: usize,
    in_f: usize,
) -> Result<(), ModelError> {
    let view = dout.view(be, rows)?;
    let out_f = dout.width;
    let r = be
        .matmul(MatmulArgs {
            lda: dout.stride,
            beta: if accumulate { 1.0 } else { 0.0 },
            ..MatmulArgs::new(dinp, view, w, rows, in_f, out_f)
        })
        .and_then(|()| match dw {
            Some(dw) => be.matmul(MatmulArgs {
                trans_a: true,
                lda: dout.stride,
                beta: 1.0,
                ..MatmulArgs::new(dw, view, inp, out_f, in_f, rows)
            }),
            None => kiln_abi::RResult::ROk(()),
        });
    be.free(view).ok_or_err()?;
    r.ok_or_err()?;
    Ok(())
}
