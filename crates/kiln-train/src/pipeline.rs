//! Pipeline parallelism in the trainer: this rank runs one stage (a layer
//! range, [`kiln_model::Stage`]) of the model, and a step's `--grad-accum`
//! micro-batches go through the stages on the 1F1B schedule
//! ([`kiln_parallel::pipeline`]).
//!
//! - The stage is cut from the whole model the single process would start
//!   or resume with; its optimizer covers only the parameters it owns
//!   ([`kiln_model::Stage::owned_params`]: the embeddings on the first
//!   stage, its blocks, the final norm and head on the last; a tied `wte`
//!   on both, whose gradient the runner sums, so both update it alike).
//! - The gradient norm counts the tied `wte` once (on the first stage).
//! - A checkpoint sums every stage's owned tensors, zeros elsewhere, over
//!   the group (exact: one stage contributes each element), so the first
//!   stage holds the whole model and optimizer state.

use kiln_abi::{BackendBox, BufId};
use kiln_model::{split_layers, Gpt, Stage};
use kiln_optim::{AdamW, AdamWConfig, AdamWState, ParamRef};
use kiln_parallel::comm::{Communicator, ReduceOp};
use kiln_parallel::data_parallel::DpError;
use kiln_parallel::pipeline::{run_stage, MicroBatch, PipelineError, Schedule};

use crate::loader::Batch;
use crate::net::{group_sum_squares, param_refs, whole_model};
use crate::TrainError;

/// One stage of a pipeline group.
pub(crate) struct PipeRank {
    stage: Stage,
    comm: Box<dyn Communicator>,
    /// The parameters this stage updates ([`Gpt::params`] indices), in the
    /// order of its optimizer's refs.
    owned: Vec<usize>,
}

impl PipeRank {
    /// This rank's stage of `model`, with an AdamW over the parameters it
    /// owns holding their part of `state` (the whole model's).
    pub fn split(
        be: &mut BackendBox,
        model: Gpt,
        state: &AdamWState,
        comm: Box<dyn Communicator>,
        adamw: AdamWConfig,
    ) -> Result<(PipeRank, Vec<ParamRef>, AdamW), TrainError> {
        let (p, s) = (comm.world(), comm.rank());
        let n = model.config.n_layer;
        if n < p {
            return Err(TrainError::Config(format!(
                "--pp {p}: the model has {n} layers, fewer than the stages; use --pp {n} or \
                 less, or a deeper model"
            )));
        }
        let layers = split_layers(n, p).swap_remove(s);
        let stage = Stage::new(model, layers)?;
        let owned = stage.owned_params();
        let all = param_refs(stage.gpt().params());
        let refs: Vec<ParamRef> = owned.iter().map(|&i| all[i]).collect();
        let pick = |moments: &[Vec<f32>]| owned.iter().map(|&i| moments[i].clone()).collect();
        let local = AdamWState {
            step: state.step,
            m: pick(&state.m),
            v: pick(&state.v),
        };
        let mut opt = AdamW::new(be, &refs, adamw)?;
        opt.import_state(be, &local)?;
        Ok((PipeRank { stage, comm, owned }, refs, opt))
    }

    /// The whole model the stage holds (only its own parameters are
    /// current; see the module doc).
    pub fn gpt(&self) -> &Gpt {
        self.stage.gpt()
    }

    pub fn comm(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    pub fn zero_grad(&mut self, be: &mut BackendBox) -> Result<(), TrainError> {
        Ok(self.stage.gpt_mut().zero_grad(be)?)
    }

    /// One step's micro-batches through the pipeline; the step's mean loss
    /// (the same on every stage).
    pub fn step(
        &mut self,
        be: &mut BackendBox,
        batches: &[Batch],
        b: usize,
        t: usize,
    ) -> Result<f32, TrainError> {
        let micro: Vec<MicroBatch<'_>> = batches
            .iter()
            .map(|x| MicroBatch {
                tokens: &x.tokens,
                targets: &x.targets,
            })
            .collect();
        let comm = self.comm.as_mut();
        let report = run_stage(comm, be, &mut self.stage, Schedule::OneFOneB, &micro, b, t)
            .map_err(pipeline_err)?;
        Ok(report.loss)
    }

    /// The parameter this stage owns but another stage counts: a tied `wte`
    /// on a last stage that is not also the first.
    fn counted_elsewhere(&self) -> Option<usize> {
        self.stage
            .tied_embedding()
            .filter(|_| !self.stage.is_first())
    }

    /// The whole gradient's sum of squares into `stats` (the tied `wte`
    /// once), on every stage.
    pub fn grad_sumsq_into(
        &mut self,
        be: &mut BackendBox,
        refs: &[ParamRef],
        stats: BufId,
    ) -> Result<(), TrainError> {
        let skip = self.counted_elsewhere();
        let counted = refs
            .iter()
            .zip(&self.owned)
            .filter(|&(_, &i)| Some(i) != skip)
            .map(|(r, _)| r);
        group_sum_squares(be, counted, stats, self.comm.as_mut())
    }

    /// The whole model and optimizer on the first stage (`None` on the
    /// others). Every stage calls it.
    pub fn gather(
        &mut self,
        be: &mut BackendBox,
        opt: &AdamW,
        adamw: AdamWConfig,
    ) -> Result<Option<(Gpt, AdamW)>, TrainError> {
        let values = self.stage.gpt().read_params(be)?;
        let lens: Vec<usize> = values.iter().map(Vec::len).collect();
        let skip = self.counted_elsewhere();
        let mine: Vec<Option<usize>> = (0..lens.len())
            .map(|i| {
                self.owned
                    .iter()
                    .position(|&o| o == i)
                    .filter(|_| Some(i) != skip)
            })
            .collect();
        let state = opt.export_state(be)?;
        // Each kind (values, m, v) laid end to end, zeros where not mine.
        let mut gathered = Vec::with_capacity(3);
        for kind in 0..3 {
            let mut flat = Vec::with_capacity(lens.iter().sum());
            for (i, &len) in lens.iter().enumerate() {
                match (kind, mine[i]) {
                    (0, Some(_)) => flat.extend_from_slice(&values[i]),
                    (1, Some(k)) => flat.extend_from_slice(&state.m[k]),
                    (2, Some(k)) => flat.extend_from_slice(&state.v[k]),
                    _ => flat.resize(flat.len() + len, 0.0),
                }
            }
            self.comm
                .all_reduce(&mut flat, ReduceOp::Sum)
                .map_err(DpError::from)?;
            gathered.push(split_flat(&flat, &lens));
        }
        if self.comm.rank() != 0 {
            return Ok(None);
        }
        let v = gathered.pop().expect("three kinds");
        let m = gathered.pop().expect("three kinds");
        let whole = AdamWState {
            step: state.step,
            m,
            v,
        };
        let config = self.stage.gpt().config.clone();
        whole_model(be, config, &gathered[0], &whole, adamw).map(Some)
    }
}

/// `flat` cut into consecutive pieces of `lens`.
fn split_flat(flat: &[f32], lens: &[usize]) -> Vec<Vec<f32>> {
    let mut at = 0;
    lens.iter()
        .map(|&len| {
            at += len;
            flat[at - len..at].to_vec()
        })
        .collect()
}

fn pipeline_err(e: PipelineError) -> TrainError {
    match e {
        PipelineError::Model(e) => TrainError::Model(e),
        PipelineError::Comm(e) => TrainError::Parallel(DpError::from(e)),
        PipelineError::Input(m) => TrainError::Config(format!("pipeline: {m}")),
    }
}
