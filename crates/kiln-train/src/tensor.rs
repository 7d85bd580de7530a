//! Tensor parallelism in the trainer: the model a step runs, either the
//! whole [`Gpt`] or this rank's [`TpGpt`] shard of it
//! ([`kiln_parallel::tensor_parallel`]).
//!
//! A tensor-parallel rank is made from the full model the single process
//! would start or resume with, and split: the same initial weights and
//! optimizer moments, cut by [`ParamLayout::shard`]. A checkpoint gathers
//! the shards back (weights and moments), so it is the single process's
//! checkpoint and resumes on any layout.
//!
//! The gradient norm counts every element once: each rank sums the squares
//! of its slices of the split parameters, rank 0 alone adds the replicated
//! ones (the same on every rank), and the group sums the totals.

use kiln_abi::stats::STAT_GRAD_SUMSQ;
use kiln_abi::{BackendBox, BackendExt, BufId, IntoBResult, Reduce};
use kiln_model::{Gpt, GptConfig, Param};
use kiln_optim::{AdamW, AdamWState, ParamRef};
use kiln_parallel::comm::{Communicator, ReduceOp};
use kiln_parallel::tensor_parallel::{
    gather_params, param_layouts, ParamLayout, Split, TpError, TpGpt,
};

use crate::TrainError;

/// The model one rank trains.
// One per trainer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Net {
    Full(Gpt),
    Tensor(TensorRank),
}

/// One rank of a tensor-parallel group: its shard and the group.
pub(crate) struct TensorRank {
    model: TpGpt,
    comm: Box<dyn Communicator>,
    layouts: Vec<ParamLayout>,
}

impl Net {
    pub fn config(&self) -> &GptConfig {
        match self {
            Net::Full(m) => &m.config,
            Net::Tensor(t) => &t.model.config,
        }
    }

    /// This rank's parameters (local shapes under tensor parallelism).
    pub fn params(&self) -> &[Param] {
        match self {
            Net::Full(m) => m.params(),
            Net::Tensor(t) => t.model.params(),
        }
    }

    pub fn zero_grad(&mut self, be: &mut BackendBox) -> Result<(), TrainError> {
        match self {
            Net::Full(m) => Ok(m.zero_grad(be)?),
            Net::Tensor(t) => Ok(t.model.zero_grad(be)?),
        }
    }

    /// Adds `weight * loss` of the batch into the backend slot `loss_slot`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_loss_into(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        weight: f32,
        loss_slot: BufId,
    ) -> Result<(), TrainError> {
        match self {
            Net::Full(m) => Ok(m.forward_loss_into(be, tokens, targets, b, t, weight, loss_slot)?),
            Net::Tensor(r) => {
                let loss = r
                    .model
                    .forward(be, r.comm.as_mut(), tokens, targets, b, t)?;
                let mut slot = be.download_f32(loss_slot).map_err(be_err)?;
                slot[0] += weight * loss;
                be.upload_f32(loss_slot, &slot).map_err(be_err)?;
                Ok(())
            }
        }
    }

    /// `grads += d(scale * loss)/d(params)` for the last forward.
    pub fn backward(&mut self, be: &mut BackendBox, scale: f32) -> Result<(), TrainError> {
        match self {
            Net::Full(m) => Ok(m.backward(be, scale)?),
            Net::Tensor(r) => Ok(r.model.backward(be, r.comm.as_mut(), scale)?),
        }
    }

    /// Adds the squared L2 norm of the model's whole gradient to
    /// `stats[STAT_GRAD_SUMSQ]` (on every rank of a tensor-parallel group).
    pub fn grad_sumsq_into(
        &mut self,
        be: &mut BackendBox,
        refs: &[ParamRef],
        stats: BufId,
    ) -> Result<(), TrainError> {
        let counted: Vec<&ParamRef> = match self {
            Net::Full(_) => refs.iter().collect(),
            Net::Tensor(r) => refs
                .iter()
                .zip(&r.layouts)
                .filter(|(_, l)| l.split != Split::Replicated || r.comm.rank() == 0)
                .map(|(p, _)| p)
                .collect(),
        };
        let Net::Tensor(r) = self else {
            return sum_squares(be, &counted, stats);
        };
        // Summed on its own first, so the group adds whole-rank totals.
        let mut block = be.download_f32(stats).map_err(be_err)?;
        let before = block[STAT_GRAD_SUMSQ];
        block[STAT_GRAD_SUMSQ] = 0.0;
        be.upload_f32(stats, &block).map_err(be_err)?;
        sum_squares(be, &counted, stats)?;
        let mut block = be.download_f32(stats).map_err(be_err)?;
        let mut mine = [block[STAT_GRAD_SUMSQ]];
        r.comm
            .all_reduce(&mut mine, ReduceOp::Sum)
            .map_err(TpError::from)?;
        block[STAT_GRAD_SUMSQ] = before + mine[0];
        be.upload_f32(stats, &block).map_err(be_err)?;
        Ok(())
    }

    /// Ends the other ranks of the tensor-parallel group at their next
    /// collective (after an error on this one).
    pub fn poison(&self, reason: &str) {
        if let Net::Tensor(r) = self {
            r.comm.poison(reason);
        }
    }

    /// Rank 0 of the tensor-parallel group (always, without one).
    pub fn is_tp_leader(&self) -> bool {
        match self {
            Net::Full(_) => true,
            Net::Tensor(r) => r.comm.rank() == 0,
        }
    }
}

fn sum_squares(be: &mut BackendBox, refs: &[&ParamRef], stats: BufId) -> Result<(), TrainError> {
    for p in refs {
        be.reduce(Reduce::SumSquares, stats, STAT_GRAD_SUMSQ, p.grad, p.len)
            .ok_or_err()
            .map_err(be_err)?;
    }
    Ok(())
}

impl TensorRank {
    /// Cuts `model` and its optimizer `state` (full, as one process holds
    /// them) into this rank's shard, with an AdamW over it; frees `model`.
    pub fn split(
        be: &mut BackendBox,
        model: Gpt,
        state: &AdamWState,
        comm: Box<dyn Communicator>,
        adamw: kiln_optim::AdamWConfig,
    ) -> Result<(TensorRank, Vec<ParamRef>, AdamW), TrainError> {
        let (tp, rank) = (comm.world(), comm.rank());
        let config = model.config.clone();
        let full = model.read_params(be)?;
        model.release(be)?;
        let tp_model = TpGpt::from_full(be, config.clone(), tp, rank, &full)?;
        drop(full);
        let layouts = param_layouts(&config);
        let cut = |moments: &[Vec<f32>]| -> Vec<Vec<f32>> {
            layouts
                .iter()
                .zip(moments)
                .map(|(l, m)| l.shard(m, tp, rank))
                .collect()
        };
        let local = AdamWState {
            step: state.step,
            m: cut(&state.m),
            v: cut(&state.v),
        };
        let refs = shard_refs(tp_model.params());
        let mut opt = AdamW::new(be, &refs, adamw)?;
        opt.import_state(be, &local)?;
        let me = TensorRank {
            model: tp_model,
            comm,
            layouts,
        };
        Ok((me, refs, opt))
    }

    /// The full model and optimizer (on this group's rank 0; `None` on the
    /// others), gathered from every rank's shard. Every rank calls it.
    pub fn gather(
        &mut self,
        be: &mut BackendBox,
        opt: &AdamW,
        adamw: kiln_optim::AdamWConfig,
    ) -> Result<Option<(Gpt, AdamW)>, TrainError> {
        let config = self.model.config.clone();
        let values = self.gather_all(&config, self.model.read_params(be)?)?;
        let mine = opt.export_state(be)?;
        let m = self.gather_all(&config, mine.m)?;
        let v = self.gather_all(&config, mine.v)?;
        if self.comm.rank() != 0 {
            return Ok(None);
        }
        // Seed 0: every value is overwritten just below.
        let mut full = Gpt::new(be, config, 0)?;
        full.write_params(be, &values)?;
        let refs = shard_refs(full.params());
        let mut full_opt = AdamW::new(be, &refs, adamw)?;
        full_opt.import_state(
            be,
            &AdamWState {
                step: mine.step,
                m,
                v,
            },
        )?;
        Ok(Some((full, full_opt)))
    }

    /// The full tensors from every rank's local pieces (all-gathered: the
    /// pieces of one parameter have the same length on every rank).
    fn gather_all(
        &mut self,
        config: &GptConfig,
        local: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let tp = self.comm.world();
        let mut shards: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(local.len()); tp];
        for piece in &local {
            let mut all = vec![0f32; piece.len() * tp];
            self.comm
                .all_gather(piece, &mut all)
                .map_err(TpError::from)?;
            for (r, shard) in shards.iter_mut().enumerate() {
                shard.push(all[r * piece.len()..(r + 1) * piece.len()].to_vec());
            }
        }
        Ok(gather_params(config, &shards)?)
    }
}

/// The optimizer's view of `params` (all trainable, f32).
pub(crate) fn shard_refs(params: &[Param]) -> Vec<ParamRef> {
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

fn be_err(e: kiln_abi::BackendError) -> TrainError {
    TrainError::Model(e.into())
}
