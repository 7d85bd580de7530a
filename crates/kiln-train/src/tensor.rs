//! Tensor parallelism in the trainer: this rank's [`TpGpt`] shard of the
//! model ([`kiln_parallel::tensor_parallel`]), cut from the whole model by
//! [`ParamLayout::shard`] and gathered back by [`gather_params`].
//!
//! The gradient norm counts every element once: each rank sums the squares
//! of its slices of the split parameters, rank 0 alone adds the replicated
//! ones (the same on every rank), and the group sums the totals.

use kiln_abi::{BackendBox, BufId};
use kiln_model::{Gpt, GptConfig, Param};
use kiln_optim::{AdamW, AdamWConfig, AdamWState, ParamRef};
use kiln_parallel::comm::Communicator;
use kiln_parallel::tensor_parallel::{
    gather_params, param_layouts, ParamLayout, Split, TpError, TpGpt,
};

use crate::net::{group_sum_squares, param_refs, whole_model};
use crate::TrainError;

/// One rank of a tensor-parallel group: its shard and the group.
pub(crate) struct TensorRank {
    model: TpGpt,
    comm: Box<dyn Communicator>,
    layouts: Vec<ParamLayout>,
}

impl TensorRank {
    /// Cuts `model` and its optimizer `state` (whole, as one process holds
    /// them) into this rank's shard, with an AdamW over it; frees `model`.
    pub fn split(
        be: &mut BackendBox,
        model: Gpt,
        state: &AdamWState,
        comm: Box<dyn Communicator>,
        adamw: AdamWConfig,
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
        let refs = param_refs(tp_model.params());
        let mut opt = AdamW::new(be, &refs, adamw)?;
        opt.import_state(be, &local)?;
        let me = TensorRank {
            model: tp_model,
            comm,
            layouts,
        };
        Ok((me, refs, opt))
    }

    pub fn config(&self) -> &GptConfig {
        &self.model.config
    }

    /// This rank's parameters (local shapes).
    pub fn params(&self) -> &[Param] {
        self.model.params()
    }

    pub fn comm(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    pub fn zero_grad(&mut self, be: &mut BackendBox) -> Result<(), TrainError> {
        Ok(self.model.zero_grad(be)?)
    }

    /// The batch's mean loss (the same on every rank of the group).
    pub fn forward(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<f32, TrainError> {
        Ok(self
            .model
            .forward(be, self.comm.as_mut(), tokens, targets, b, t)?)
    }

    pub fn backward(&mut self, be: &mut BackendBox, scale: f32) -> Result<(), TrainError> {
        Ok(self.model.backward(be, self.comm.as_mut(), scale)?)
    }

    /// The whole gradient's sum of squares into `stats` (see the module doc).
    pub fn grad_sumsq_into(
        &mut self,
        be: &mut BackendBox,
        refs: &[ParamRef],
        stats: BufId,
    ) -> Result<(), TrainError> {
        let first = self.comm.rank() == 0;
        let counted = refs
            .iter()
            .zip(&self.layouts)
            .filter(|(_, l)| l.split != Split::Replicated || first)
            .map(|(p, _)| p);
        group_sum_squares(be, counted, stats, self.comm.as_mut())
    }

    /// The whole model and optimizer on the group's rank 0 (`None` on the
    /// others), from every rank's shard. Every rank calls it.
    pub fn gather(
        &mut self,
        be: &mut BackendBox,
        opt: &AdamW,
        adamw: AdamWConfig,
    ) -> Result<Option<(Gpt, AdamW)>, TrainError> {
        let config = self.model.config.clone();
        let values = self.gather_all(&config, self.model.read_params(be)?)?;
        let mine = opt.export_state(be)?;
        let m = self.gather_all(&config, mine.m)?;
        let v = self.gather_all(&config, mine.v)?;
        if self.comm.rank() != 0 {
            return Ok(None);
        }
        let state = AdamWState {
            step: mine.step,
            m,
            v,
        };
        whole_model(be, config, &values, &state, adamw).map(Some)
    }

    /// The whole tensors from every rank's local pieces (all-gathered: the
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
