//! The backend calls a tensor-parallel block makes, mirrored from
//! kiln-model's `ops.rs` (crate-private there): linear layers in the
//! `nn.Linear` layout, LayerNorm, and the bias added after an all-reduce.

use kiln_abi::{
    BackendBox, BufId, IntoBResult, MatmulArgs, NormArgs, NormBackwardArgs, NormKind, ROption,
};

use super::TpError;

fn opt(b: Option<BufId>) -> ROption<BufId> {
    b.map_or(ROption::RNone, ROption::RSome)
}

/// `out[rows, out_f] = inp[rows, in_f] @ w[out_f, in_f]^T (+ bias)`.
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
) -> Result<(), TpError> {
    be.matmul(MatmulArgs {
        bias: opt(bias),
        trans_b: true,
        ..MatmulArgs::new(out, inp, w, rows, out_f, in_f)
    })
    .ok_or_err()?;
    Ok(())
}

/// Backward of [`linear`]: `dinp = dout @ w` (overwritten), `dw += dout^T @
/// inp`, `dbias += colsum(dout)` when given.
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
) -> Result<(), TpError> {
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

/// `out[i, :] += bias` for every row: the rank-1 product `ones[rows, 1] @
/// bias[1, c]` accumulated into `out` (exactly `out + bias` in f32). A
/// row-parallel layer's bias goes on after the all-reduce, so it counts once.
pub(crate) fn add_bias_rows(
    be: &mut BackendBox,
    out: BufId,
    bias: BufId,
    ones: BufId,
    rows: usize,
    c: usize,
) -> Result<(), TpError> {
    be.matmul(MatmulArgs {
        beta: 1.0,
        ..MatmulArgs::new(out, ones, bias, rows, c, 1)
    })
    .ok_or_err()?;
    Ok(())
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
) -> Result<(), TpError> {
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

/// Accumulates `dinp`, `dweight`, `dbias` of [`layernorm`].
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
) -> Result<(), TpError> {
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
