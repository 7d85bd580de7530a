//! The model one rank trains: the whole [`Gpt`], this rank's tensor-parallel
//! shard of it ([`crate::tensor`]) or its pipeline stage
//! ([`crate::pipeline`]). The trainer's step calls the same few methods on
//! each; only the parallel ones talk to their group.
//!
//! Every parallel rank is cut from the whole model the single process
//! would start or resume with (the same initial weights and optimizer
//! moments), and a checkpoint gathers the whole model back, so a
//! checkpoint is the single process's and resumes on any layout.

use kiln_abi::stats::STAT_GRAD_SUMSQ;
use kiln_abi::{BackendBox, BackendExt, BufId, IntoBResult, Reduce};
use kiln_model::{Gpt, GptConfig, Param};
use kiln_optim::{AdamW, AdamWConfig, AdamWState, ParamRef};
use kiln_parallel::comm::{Communicator, ReduceOp};

use crate::loader::Batch;
use crate::pipeline::PipeRank;
use crate::tensor::TensorRank;
use crate::TrainError;

/// The model one rank trains.
// One per trainer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Net {
    Full(Gpt),
    Tensor(TensorRank),
    Pipeline(PipeRank),
}

impl Net {
    /// The whole model's configuration (on every rank).
    pub fn config(&self) -> &GptConfig {
        match self {
            Net::Full(m) => &m.config,
            Net::Tensor(r) => r.config(),
            Net::Pipeline(r) => &r.gpt().config,
        }
    }

    /// Names of the whole model's parameters, in checkpoint order.
    pub fn param_names(&self) -> Vec<String> {
        let params = match self {
            Net::Full(m) => m.params(),
            Net::Tensor(r) => r.params(),
            Net::Pipeline(r) => r.gpt().params(),
        };
        params.iter().map(|p| p.name.clone()).collect()
    }

    pub fn zero_grad(&mut self, be: &mut BackendBox) -> Result<(), TrainError> {
        match self {
            Net::Full(m) => Ok(m.zero_grad(be)?),
            Net::Tensor(r) => r.zero_grad(be),
            Net::Pipeline(r) => r.zero_grad(be),
        }
    }

    /// Forward and backward of one step's micro-batches (each `b x t`):
    /// gradients of `loss_scale * mean loss` accumulate, and the mean loss
    /// is added into the backend slot `loss_slot`.
    pub fn micro_batches(
        &mut self,
        be: &mut BackendBox,
        batches: &[Batch],
        (b, t): (usize, usize),
        loss_scale: f32,
        loss_slot: BufId,
    ) -> Result<(), TrainError> {
        let k = batches.len() as f32;
        for batch in batches {
            let (tokens, targets) = (&batch.tokens, &batch.targets);
            match self {
                Net::Full(m) => {
                    m.forward_loss_into(be, tokens, targets, b, t, 1.0 / k, loss_slot)?;
                    m.backward(be, loss_scale / k)?;
                }
                Net::Tensor(r) => {
                    let loss = r.forward(be, tokens, targets, b, t)?;
                    add_to_slot(be, loss_slot, loss / k)?;
                    r.backward(be, loss_scale / k)?;
                }
                // The micro-batches go through the stages together.
                Net::Pipeline(r) => {
                    let loss = r.step(be, batches, b, t)?;
                    return add_to_slot(be, loss_slot, loss);
                }
            }
        }
        Ok(())
    }

    /// Adds the squared L2 norm of the whole model's gradient to
    /// `stats[STAT_GRAD_SUMSQ]` (on every rank of a parallel group).
    pub fn grad_sumsq_into(
        &mut self,
        be: &mut BackendBox,
        refs: &[ParamRef],
        stats: BufId,
    ) -> Result<(), TrainError> {
        match self {
            Net::Full(_) => sum_squares(be, refs.iter(), stats),
            Net::Tensor(r) => r.grad_sumsq_into(be, refs, stats),
            Net::Pipeline(r) => r.grad_sumsq_into(be, refs, stats),
        }
    }

    /// The whole model and optimizer, gathered from the group's ranks, on
    /// the group's rank 0 (`None` on the others and for a whole model,
    /// which needs no gathering). Every rank of the group calls it.
    pub fn gather(
        &mut self,
        be: &mut BackendBox,
        opt: &AdamW,
        adamw: AdamWConfig,
    ) -> Result<Option<(Gpt, AdamW)>, TrainError> {
        match self {
            Net::Full(_) => Ok(None),
            Net::Tensor(r) => r.gather(be, opt, adamw),
            Net::Pipeline(r) => r.gather(be, opt, adamw),
        }
    }

    /// Ends the other ranks of the group at their next collective (after
    /// an error on this one).
    pub fn poison(&self, reason: &str) {
        match self {
            Net::Full(_) => {}
            Net::Tensor(r) => r.comm().poison(reason),
            Net::Pipeline(r) => r.comm().poison(reason),
        }
    }

    /// Rank 0 of the model's group (always, for a whole model).
    pub fn is_group_leader(&self) -> bool {
        match self {
            Net::Full(_) => true,
            Net::Tensor(r) => r.comm().rank() == 0,
            Net::Pipeline(r) => r.comm().rank() == 0,
        }
    }
}

/// `stats[STAT_GRAD_SUMSQ] +=` the squares of `refs`' gradients.
pub(crate) fn sum_squares<'a>(
    be: &mut BackendBox,
    refs: impl Iterator<Item = &'a ParamRef>,
    stats: BufId,
) -> Result<(), TrainError> {
    for p in refs {
        be.reduce(Reduce::SumSquares, stats, STAT_GRAD_SUMSQ, p.grad, p.len)
            .ok_or_err()
            .map_err(be_err)?;
    }
    Ok(())
}

/// [`sum_squares`] of this rank's part, summed over `comm`'s ranks: each
/// rank's total is reduced on its own, so the group adds whole-rank sums.
pub(crate) fn group_sum_squares<'a>(
    be: &mut BackendBox,
    refs: impl Iterator<Item = &'a ParamRef>,
    stats: BufId,
    comm: &mut dyn Communicator,
) -> Result<(), TrainError> {
    let mut block = be.download_f32(stats).map_err(be_err)?;
    let before = block[STAT_GRAD_SUMSQ];
    block[STAT_GRAD_SUMSQ] = 0.0;
    be.upload_f32(stats, &block).map_err(be_err)?;
    sum_squares(be, refs, stats)?;
    let mut block = be.download_f32(stats).map_err(be_err)?;
    let mut mine = [block[STAT_GRAD_SUMSQ]];
    comm.all_reduce(&mut mine, ReduceOp::Sum)
        .map_err(kiln_parallel::data_parallel::DpError::from)?;
    block[STAT_GRAD_SUMSQ] = before + mine[0];
    be.upload_f32(stats, &block).map_err(be_err)?;
    Ok(())
}

/// `slot[0] += value` (a one-element view of the step-stats block).
fn add_to_slot(be: &mut BackendBox, slot: BufId, value: f32) -> Result<(), TrainError> {
    let mut v = be.download_f32(slot).map_err(be_err)?;
    v[0] += value;
    be.upload_f32(slot, &v).map_err(be_err)?;
    Ok(())
}

/// A whole model holding `values` and an AdamW holding `state` (both in
/// [`Gpt::params`] order), for a checkpoint.
pub(crate) fn whole_model(
    be: &mut BackendBox,
    config: GptConfig,
    values: &[Vec<f32>],
    state: &AdamWState,
    adamw: AdamWConfig,
) -> Result<(Gpt, AdamW), TrainError> {
    // Seed 0: every value is overwritten just below.
    let mut model = Gpt::new(be, config, 0)?;
    model.write_params(be, values)?;
    let mut opt = AdamW::new(be, &param_refs(model.params()), adamw)?;
    opt.import_state(be, state)?;
    Ok((model, opt))
}

/// The optimizer's view of `params` (all trainable).
pub(crate) fn param_refs(params: &[Param]) -> Vec<ParamRef> {
    params
        .iter()
        .map(|p| ParamRef {
            value: p.value,
            grad: p.grad.expect("a trainable parameter has a gradient buffer"),
            value_16: p.value_16,
            len: p.shape.iter().product(),
            decay: p.decay,
        })
        .collect()
}

pub(crate) fn be_err(e: kiln_abi::BackendError) -> TrainError {
    TrainError::Model(e.into())
}
