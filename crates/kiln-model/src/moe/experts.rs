//! The experts on the backend: GPT-2 MLPs (`c_fc`, GELU tanh, `c_proj`)
//! run over a block of rows, forward and backward. The routed experts'
//! rows sit one after another in shared buffers (see `dispatch`); each
//! expert runs its matmuls on views of its own rows.

use kiln_abi::{BackendBox, BufId, IntoBResult, Unary};

use crate::ops::{linear, linear_backward};
use crate::{ModelError, Param};

/// The four parameters of one expert MLP.
#[derive(Clone, Copy)]
pub struct MlpParams<'a> {
    pub fc_w: &'a Param,
    pub fc_b: &'a Param,
    pub proj_w: &'a Param,
    pub proj_b: &'a Param,
}

/// Buffers of an MLP over a block of rows: input `[rows, C]`, the `c_fc`
/// output `h` and its GELU `a` `[rows, H]`, the output `[rows, C]`.
#[derive(Clone, Copy, Debug)]
pub struct MlpBufs {
    pub inp: BufId,
    pub h: BufId,
    pub a: BufId,
    pub out: BufId,
}

/// The gradient buffers of [`mlp_backward`]: `dout [rows, C]` in,
/// `dinp [rows, C]` out (overwritten), and `da`, `dh` `[rows, H]` scratch.
#[derive(Clone, Copy, Debug)]
pub struct MlpGrads {
    pub dout: BufId,
    pub dinp: BufId,
    pub da: BufId,
    pub dh: BufId,
}

/// Views of rows `r0..r0 + rows` of buffers with `cols` columns, freed on drop
/// of the guard's list by [`Views::free`].
struct Views(Vec<BufId>);

impl Views {
    fn rows(
        &mut self,
        be: &mut BackendBox,
        buf: BufId,
        r0: usize,
        rows: usize,
        cols: usize,
    ) -> Result<BufId, ModelError> {
        let v = be.view(buf, r0 * cols, rows * cols).ok_or_err()?;
        self.0.push(v);
        Ok(v)
    }

    fn free(self, be: &mut BackendBox) -> Result<(), ModelError> {
        for v in self.0 {
            be.free(v).ok_or_err()?;
        }
        Ok(())
    }
}

/// `out = c_proj(gelu(c_fc(inp)))` over rows `r0..r0 + rows` of `bufs`.
pub fn mlp_forward(
    be: &mut BackendBox,
    w: MlpParams<'_>,
    bufs: MlpBufs,
    r0: usize,
    rows: usize,
    (c, hdim): (usize, usize),
) -> Result<(), ModelError> {
    if rows == 0 {
        return Ok(());
    }
    let mut views = Views(Vec::new());
    let result = (|| {
        let inp = views.rows(be, bufs.inp, r0, rows, c)?;
        let h = views.rows(be, bufs.h, r0, rows, hdim)?;
        let a = views.rows(be, bufs.a, r0, rows, hdim)?;
        let out = views.rows(be, bufs.out, r0, rows, c)?;
        let (fc_w, fc_b) = (w.fc_w.weight(), w.fc_b.weight());
        linear(be, h, inp, fc_w, Some(fc_b), rows, c, hdim)?;
        be.unary_forward(Unary::Gelu, a, h, rows * hdim)
            .ok_or_err()?;
        let (proj_w, proj_b) = (w.proj_w.weight(), w.proj_b.weight());
        linear(be, out, a, proj_w, Some(proj_b), rows, hdim, c)
    })();
    views.free(be)?;
    result
}

/// Backward of [`mlp_forward`] over the same rows: `grads.dinp` is
/// overwritten, the parameter gradients accumulate (none for a frozen one).
pub fn mlp_backward(
    be: &mut BackendBox,
    w: MlpParams<'_>,
    bufs: MlpBufs,
    grads: MlpGrads,
    r0: usize,
    rows: usize,
    (c, hdim): (usize, usize),
) -> Result<(), ModelError> {
    if rows == 0 {
        return Ok(());
    }
    let mut views = Views(Vec::new());
    let result = (|| {
        let inp = views.rows(be, bufs.inp, r0, rows, c)?;
        let h = views.rows(be, bufs.h, r0, rows, hdim)?;
        let a = views.rows(be, bufs.a, r0, rows, hdim)?;
        let dout = views.rows(be, grads.dout, r0, rows, c)?;
        let dinp = views.rows(be, grads.dinp, r0, rows, c)?;
        let da = views.rows(be, grads.da, r0, rows, hdim)?;
        let dh = views.rows(be, grads.dh, r0, rows, hdim)?;
        linear_backward(
            be,
            da,
            w.proj_w.grad,
            w.proj_b.grad,
            dout,
            a,
            w.proj_w.weight(),
            rows,
            hdim,
            c,
        )?;
        be.zero(dh).ok_or_err()?;
        be.unary_backward(Unary::Gelu, dh, h, da, rows * hdim)
            .ok_or_err()?;
        linear_backward(
            be,
            dinp,
            w.fc_w.grad,
            w.fc_b.grad,
            dh,
            inp,
            w.fc_w.weight(),
            rows,
            c,
            hdim,
        )
    })();
    views.free(be)?;
    result
}
