//! Thin wrappers over backend ops that the model calls many times.

use kiln_abi::abi_stable::std_types::ROption;
use kiln_abi::{BackendBox, BufId, IntoBResult, MatmulArgs};

use crate::ModelError;

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
) -> Result<(), ModelError> {
    be.matmul(MatmulArgs {
        out,
        a: inp,
        b: w,
        bias: bias.map_or(ROption::RNone, ROption::RSome),
        m: rows,
        n: out_f,
        k: in_f,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
    })
    .ok_or_err()?;
    Ok(())
}

/// Backward of [`linear`]: `dinp = dout @ w` (overwritten), `dw += dout^T @ inp`,
/// `dbias += column sums of dout`.
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
    be.matmul(MatmulArgs {
        out: dinp,
        a: dout,
        b: w,
        bias: ROption::RNone,
        m: rows,
        n: in_f,
        k: out_f,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    })
    .ok_or_err()?;
    be.matmul(MatmulArgs {
        out: dw,
        a: dout,
        b: inp,
        bias: ROption::RNone,
        m: out_f,
        n: in_f,
        k: rows,
        trans_a: true,
        trans_b: false,
        alpha: 1.0,
        beta: 1.0,
    })
    .ok_or_err()?;
    if let Some(db) = dbias {
        be.bias_backward(db, dout, rows, out_f).ok_or_err()?;
    }
    Ok(())
}

/// Tied lm_head: `logits[rows, Vp] = inp[rows, C] @ wte[Vp, C]^T`.
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
