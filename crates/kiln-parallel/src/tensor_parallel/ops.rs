//! The one backend call a tensor-parallel block needs beyond kiln-model's
//! `ops` (linear, LayerNorm): the bias added after an all-reduce.

use kiln_abi::{BackendBox, BufId, IntoBResult, MatmulArgs};

use super::TpError;

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
