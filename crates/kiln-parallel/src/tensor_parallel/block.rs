//! One tensor-parallel GPT-2 block, forward and backward: kiln-model's
//! `block.rs` / `backward.rs` with each matmul on the local slice and the
//! two region boundaries (`f` before c_attn and c_fc, `g` after each c_proj)
//! made explicit.

use kiln_abi::{AttentionArgs, AttentionBackwardArgs, AttentionShape, BackendBox, BufId, DType};
use kiln_abi::{BackendExt, IntoBResult, ROption, Unary};
use kiln_model::Param;

use super::collectives::{f, g, Pass};
use super::ops::add_bias_rows;
use super::TpError;
use crate::comm::Communicator;
use kiln_model::ops::{layernorm, layernorm_backward, linear, linear_backward, LayerNormIo};
use kiln_model::slot;

/// The sizes one rank works with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub t: usize,
    /// Full model width (the residual stream is never split).
    pub c: usize,
    /// This rank's heads (`n_head / tp`) and its attention width `heads * hd`.
    pub heads: usize,
    pub hd: usize,
    /// This rank's MLP width (`4C / tp`).
    pub fc: usize,
    pub eps: f32,
}

impl Dims {
    pub(crate) fn rows(&self) -> usize {
        self.b * self.t
    }
    /// This rank's share of c_attn's output per q, k, v: `heads * hd`.
    pub(crate) fn att(&self) -> usize {
        self.heads * self.hd
    }
    pub(crate) fn shape(&self) -> AttentionShape {
        AttentionShape {
            b: self.b,
            t: self.t,
            nh: self.heads,
            nkv: self.heads,
            hd: self.hd,
            window: 0,
        }
    }
    /// `1/sqrt(hd)` in f32, as kiln-model computes it.
    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }
}

/// What one block keeps from its forward for the backward (local widths
/// where the tensor is split).
pub(crate) struct LayerActs {
    pub ln1: BufId,
    pub ln1_mean: BufId,
    pub ln1_rstd: BufId,
    /// `[rows, 3 * att]`: the local q | k | v.
    pub qkv: BufId,
    /// `[rows, att]`: this rank's heads' outputs.
    pub atty: BufId,
    pub att_workspace: BufId,
    pub residual2: BufId,
    pub ln2: BufId,
    pub ln2_mean: BufId,
    pub ln2_rstd: BufId,
    /// `[rows, fc]` before and after GELU.
    pub fch: BufId,
    pub fch_gelu: BufId,
    /// The block's output, `[rows, C]`.
    pub out: BufId,
}

/// Buffers every block reuses: scratch of the forward and the gradients
/// flowing through the backward.
pub(crate) struct Scratch {
    /// `[rows, C]`: a c_proj's partial then reduced output.
    pub proj: BufId,
    /// `[rows]` of ones, for adding a bias after the all-reduce.
    pub ones: BufId,
    /// `[rows, C]`: d(residual stream), updated block by block.
    pub dres: BufId,
    /// `[rows, C]`: d(a LayerNorm's output), partial then all-reduced.
    pub dln: BufId,
    pub dfch_gelu: BufId,
    pub dfch: BufId,
    pub datty: BufId,
    pub dqkv: BufId,
}

fn alloc(be: &mut BackendBox, n: usize) -> Result<BufId, TpError> {
    Ok(be.alloc_buf(DType::F32, n)?)
}

impl LayerActs {
    pub(crate) fn new(be: &mut BackendBox, d: &Dims, workspace: usize) -> Result<Self, TpError> {
        let (rows, c) = (d.rows(), d.c);
        Ok(LayerActs {
            ln1: alloc(be, rows * c)?,
            ln1_mean: alloc(be, rows)?,
            ln1_rstd: alloc(be, rows)?,
            qkv: alloc(be, rows * 3 * d.att())?,
            atty: alloc(be, rows * d.att())?,
            att_workspace: alloc(be, workspace.max(1))?,
            residual2: alloc(be, rows * c)?,
            ln2: alloc(be, rows * c)?,
            ln2_mean: alloc(be, rows)?,
            ln2_rstd: alloc(be, rows)?,
            fch: alloc(be, rows * d.fc)?,
            fch_gelu: alloc(be, rows * d.fc)?,
            out: alloc(be, rows * c)?,
        })
    }

    pub(crate) fn buffers(&self) -> [BufId; 13] {
        [
            self.ln1,
            self.ln1_mean,
            self.ln1_rstd,
            self.qkv,
            self.atty,
            self.att_workspace,
            self.residual2,
            self.ln2,
            self.ln2_mean,
            self.ln2_rstd,
            self.fch,
            self.fch_gelu,
            self.out,
        ]
    }

    fn ln1_io(&self, inp: BufId, w: &[Param]) -> LayerNormIo {
        LayerNormIo {
            out: self.ln1,
            mean: self.ln1_mean,
            rstd: self.ln1_rstd,
            inp,
            weight: w[slot::LN1_W].value,
            bias: w[slot::LN1_B].value,
        }
    }

    fn ln2_io(&self, w: &[Param]) -> LayerNormIo {
        LayerNormIo {
            out: self.ln2,
            mean: self.ln2_mean,
            rstd: self.ln2_rstd,
            inp: self.residual2,
            weight: w[slot::LN2_W].value,
            bias: w[slot::LN2_B].value,
        }
    }
}

impl Scratch {
    pub(crate) fn new(be: &mut BackendBox, d: &Dims) -> Result<Self, TpError> {
        let (rows, c) = (d.rows(), d.c);
        let ones = be.from_f32(&vec![1.0; rows])?;
        Ok(Scratch {
            proj: alloc(be, rows * c)?,
            ones,
            dres: alloc(be, rows * c)?,
            dln: alloc(be, rows * c)?,
            dfch_gelu: alloc(be, rows * d.fc)?,
            dfch: alloc(be, rows * d.fc)?,
            datty: alloc(be, rows * d.att())?,
            dqkv: alloc(be, rows * 3 * d.att())?,
        })
    }

    pub(crate) fn buffers(&self) -> [BufId; 8] {
        [
            self.proj,
            self.ones,
            self.dres,
            self.dln,
            self.dfch_gelu,
            self.dfch,
            self.datty,
            self.dqkv,
        ]
    }
}

/// `acts.out = block(inp)` on this rank's slices; `w` is the block's 12
/// local parameters.
pub(crate) fn block_forward(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    d: &Dims,
    w: &[Param],
    acts: &LayerActs,
    s: &Scratch,
    inp: BufId,
) -> Result<(), TpError> {
    let (rows, c, att) = (d.rows(), d.c, d.att());
    let p = |i: usize| w[i].value;

    // Attention: LN (replicated) -> f -> local heads' q|k|v -> attention ->
    // c_proj on those heads' columns (a partial sum) -> g -> bias once.
    layernorm(be, &acts.ln1_io(inp, w), rows, c, d.eps)?;
    f(be, comm, acts.ln1, Pass::Forward)?;
    let qkv_b = Some(p(slot::QKV_B));
    linear(
        be,
        acts.qkv,
        acts.ln1,
        p(slot::QKV_W),
        qkv_b,
        rows,
        c,
        3 * att,
    )?;
    be.attention_forward(AttentionArgs {
        out: acts.atty,
        workspace: acts.att_workspace,
        qkv: acts.qkv,
        segments: ROption::RNone,
        shape: d.shape(),
        scale: d.scale(),
    })
    .ok_or_err()?;
    linear(
        be,
        s.proj,
        acts.atty,
        p(slot::ATTN_PROJ_W),
        None,
        rows,
        att,
        c,
    )?;
    g(be, comm, s.proj, Pass::Forward)?;
    add_bias_rows(be, s.proj, p(slot::ATTN_PROJ_B), s.ones, rows, c)?;
    be.add(acts.residual2, inp, s.proj, rows * c).ok_or_err()?;

    // MLP: LN -> f -> c_fc on the local hidden features -> GELU -> c_proj
    // on those features' columns -> g -> bias once.
    layernorm(be, &acts.ln2_io(w), rows, c, d.eps)?;
    f(be, comm, acts.ln2, Pass::Forward)?;
    let fc_b = Some(p(slot::FC_B));
    linear(be, acts.fch, acts.ln2, p(slot::FC_W), fc_b, rows, c, d.fc)?;
    be.unary_forward(Unary::Gelu, acts.fch_gelu, acts.fch, rows * d.fc)
        .ok_or_err()?;
    linear(
        be,
        s.proj,
        acts.fch_gelu,
        p(slot::FC_PROJ_W),
        None,
        rows,
        d.fc,
        c,
    )?;
    g(be, comm, s.proj, Pass::Forward)?;
    add_bias_rows(be, s.proj, p(slot::FC_PROJ_B), s.ones, rows, c)?;
    be.add(acts.out, acts.residual2, s.proj, rows * c)
        .ok_or_err()?;
    Ok(())
}

/// The block's backward: `s.dres` holds d(block output) on entry and
/// d(block input) on return; gradients accumulate into `w`'s local grads.
pub(crate) fn block_backward(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    d: &Dims,
    w: &[Param],
    acts: &LayerActs,
    s: &Scratch,
    inp: BufId,
) -> Result<(), TpError> {
    let (rows, c, att) = (d.rows(), d.c, d.att());
    let p = |i: usize| w[i].value;
    let dw = |i: usize| w[i].grad.expect("TpGpt parameters always have gradients");

    // MLP. g's backward is the identity: every rank's partial c_proj output
    // gets the whole d(residual); the replicated bias's grad is the same
    // everywhere.
    be.bias_backward(dw(slot::FC_PROJ_B), s.dres, rows, c)
        .ok_or_err()?;
    let (w_fp, dw_fp) = (p(slot::FC_PROJ_W), Some(dw(slot::FC_PROJ_W)));
    linear_backward(
        be,
        s.dfch_gelu,
        dw_fp,
        None,
        s.dres,
        acts.fch_gelu,
        w_fp,
        rows,
        d.fc,
        c,
    )?;
    be.zero(s.dfch).ok_or_err()?;
    be.unary_backward(Unary::Gelu, s.dfch, acts.fch, s.dfch_gelu, rows * d.fc)
        .ok_or_err()?;
    let (w_fc, dw_fc, db_fc) = (p(slot::FC_W), Some(dw(slot::FC_W)), Some(dw(slot::FC_B)));
    linear_backward(
        be, s.dln, dw_fc, db_fc, s.dfch, acts.ln2, w_fc, rows, c, d.fc,
    )?;
    // f's backward: each rank's d(ln2) covers only its hidden features.
    f(be, comm, s.dln, Pass::Backward)?;
    let (dln_w, dln_b) = (Some(dw(slot::LN2_W)), Some(dw(slot::LN2_B)));
    layernorm_backward(be, s.dres, dln_w, dln_b, s.dln, &acts.ln2_io(w), rows, c)?;

    // Attention, the same way round.
    be.bias_backward(dw(slot::ATTN_PROJ_B), s.dres, rows, c)
        .ok_or_err()?;
    let (w_ap, dw_ap) = (p(slot::ATTN_PROJ_W), Some(dw(slot::ATTN_PROJ_W)));
    linear_backward(
        be, s.datty, dw_ap, None, s.dres, acts.atty, w_ap, rows, att, c,
    )?;
    be.zero(s.dqkv).ok_or_err()?;
    be.attention_backward(AttentionBackwardArgs {
        dqkv: s.dqkv,
        dout: s.datty,
        qkv: acts.qkv,
        out: acts.atty,
        workspace: acts.att_workspace,
        segments: ROption::RNone,
        shape: d.shape(),
        scale: d.scale(),
    })
    .ok_or_err()?;
    let (w_qkv, dw_qkv, db_qkv) = (p(slot::QKV_W), Some(dw(slot::QKV_W)), Some(dw(slot::QKV_B)));
    linear_backward(
        be,
        s.dln,
        dw_qkv,
        db_qkv,
        s.dqkv,
        acts.ln1,
        w_qkv,
        rows,
        c,
        3 * att,
    )?;
    f(be, comm, s.dln, Pass::Backward)?;
    let (dln_w, dln_b) = (Some(dw(slot::LN1_W)), Some(dw(slot::LN1_B)));
    layernorm_backward(
        be,
        s.dres,
        dln_w,
        dln_b,
        s.dln,
        &acts.ln1_io(inp, w),
        rows,
        c,
    )?;
    Ok(())
}
