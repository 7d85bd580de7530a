//! The training loop: micro-batches with gradient accumulation, global-norm
//! clipping, AdamW on a warmup + cosine schedule, non-finite step guard,
//! metrics per step, checkpoints, and exact resume.
//!
//! Data parallel ([`Trainer::start_parallel`], [`Trainer::resume_parallel`]):
//! the same step on every rank, with the gradients averaged (or, under
//! ZeRO-1, reduce-scattered) and the loss and norm agreed through
//! kiln-parallel's [`DataParallel`] between backward and AdamW. Rank 0 alone
//! writes metrics and checkpoints; a checkpoint is world-size free (full
//! model, full optimizer state, the loader position of one rank reading the
//! global batch), so it resumes at any `--dp` and `--zero`.
//!
//! Tensor and pipeline parallel ([`Trainer::start_ranks`],
//! [`Trainer::resume_ranks`] with [`Ranks::tp`] or [`Ranks::pp`]): each
//! rank trains its shard or stage of the model (the `net`, `tensor` and
//! `pipeline` modules); a checkpoint gathers the whole model, so it too
//! resumes on any layout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_abi::stats::{STAT_GRAD_NORM, STAT_GRAD_SUMSQ, STAT_LOSS, STAT_SKIP, STAT_SLOTS};
use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, Reduce};
use kiln_model::{Gpt, GptConfig, ModelError, Rng};
use kiln_optim::{clip_limit, AdamW, AdamWConfig, LrSchedule, ParamRef};
use kiln_parallel::comm::Communicator;
use kiln_parallel::data_parallel::{agree, buckets, DataParallel, DpError, Shard, Zero};

use crate::checkpoint::{self, TrainingState};
use crate::config::TrainConfig;
use crate::guard::{NonFiniteGuard, Verdict};
use crate::loader::{DataLoader, LoaderOptions, LoaderPosition};
use crate::metrics::{MetricsLog, StepRecord};
use crate::net::{param_refs, Net};
use crate::pipeline::PipeRank;
use crate::scaler::{LossScaler, ScaleChange};
use crate::tensor::TensorRank;
use crate::TrainError;

/// Where a rank sits in a parallel run: its data-parallel group and its
/// tensor-parallel group (the default is one process alone).
#[derive(Default)]
pub struct Ranks {
    pub dp: Option<DataParallel>,
    /// The ranks that hold the other shards of this rank's model.
    pub tp: Option<Box<dyn Communicator>>,
    /// The ranks that run the other stages of this rank's model (rank s
    /// runs stage s).
    pub pp: Option<Box<dyn Communicator>>,
}

impl Ranks {
    /// Rank 0 of the model-parallel groups (the whole model's holder).
    fn model_leader(&self) -> bool {
        [&self.tp, &self.pp]
            .into_iter()
            .all(|c| c.as_ref().is_none_or(|c| c.rank() == 0))
    }
}

/// Hears what the loop does (progress bars, logs). Every method is optional.
pub trait Observer {
    fn on_step(&mut self, _record: &StepRecord) {}
    fn on_warning(&mut self, _message: &str) {}
    fn on_checkpoint(&mut self, _step: u64, _dir: &Path) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Where the initial weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Init<'a> {
    /// A fresh GPT-2 init of the preset named by `TrainConfig::model`.
    Preset,
    /// A checkpoint directory (kiln's or Hugging Face's `save_pretrained`).
    Checkpoint(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps done in total (including those before a resume).
    pub steps: u64,
    /// Loss of the last step run by this process (None if none ran).
    pub last_loss: Option<f32>,
    /// The last checkpoint written or resumed from.
    pub checkpoint: Option<PathBuf>,
}

pub struct Trainer {
    be: BackendBox,
    model: Net,
    opt: AdamW,
    refs: Vec<ParamRef>,
    loader: DataLoader,
    config: TrainConfig,
    schedule: LrSchedule,
    step: u64,
    run_dir: PathBuf,
    data: PathBuf,
    /// Rank 0 only (the other ranks of a data-parallel run write nothing).
    metrics: Option<MetricsLog>,
    guard: NonFiniteGuard,
    rng: Rng,
    started: Instant,
    last_checkpoint: Option<PathBuf>,
    stats: StepStats,
    /// f16 only: the dynamic loss scale.
    scaler: Option<LossScaler>,
    /// Complete checkpoints kept (0 = all); see [`Trainer::set_keep_last`].
    keep_last: usize,
    /// The run directory's exclusive lock, held for the trainer's life
    /// (by rank 0 only in a data-parallel run).
    _lock: Option<kiln_stdx::lock::DirLock>,
    /// Data parallel: the communicator and, under ZeRO-1, this rank's shard
    /// (then `opt` holds only the shard's moments).
    dp: Option<DpRank>,
}

/// One rank's data-parallel state.
struct DpRank {
    dp: DataParallel,
    shard: Option<Shard>,
}

impl DpRank {
    fn leader(dp: &Option<DpRank>) -> bool {
        dp.as_ref().is_none_or(|d| d.dp.is_leader())
    }

    /// (rank, world) of a trainer, (0, 1) without data parallelism.
    fn place(dp: &Option<DataParallel>) -> (usize, usize) {
        dp.as_ref().map_or((0, 1), |d| (d.rank(), d.world()))
    }
}

/// The step-stats block on the backend (`kiln_abi::stats`): the loss, the
/// gradient norm and the skip decision of one step stay there until the
/// step's single host read.
struct StepStats {
    block: BufId,
    loss_slot: BufId,
}

impl StepStats {
    fn new(be: &mut BackendBox) -> Result<Self, ModelError> {
        let block = be.alloc_buf(DType::F32, STAT_SLOTS)?;
        let loss_slot = be.view_of(block, STAT_LOSS, 1)?;
        Ok(StepStats { block, loss_slot })
    }
}

/// Takes `run_dir`'s exclusive lock (a second run into it is refused with
/// the holder's PID) and removes what killed runs left there.
fn claim_run_dir(run_dir: &Path) -> Result<kiln_stdx::lock::DirLock, TrainError> {
    kiln_stdx::lock::DirLock::claim(run_dir).map_err(|e| TrainError::RunDir {
        path: run_dir.to_path_buf(),
        problem: e.to_string(),
    })
}

/// Refuses a run that would reach a step whose `step_*` directory exists
/// but misses a file (in `after+1..=until`): it could neither be resumed
/// from nor rewritten.
fn refuse_incomplete_checkpoints(run_dir: &Path, after: u64, until: u64) -> Result<(), TrainError> {
    let bad = checkpoint::incomplete_checkpoints(run_dir)?;
    let Some((step, dir)) = bad.into_iter().find(|(s, _)| *s > after && *s <= until) else {
        return Ok(());
    };
    Err(TrainError::RunDir {
        path: run_dir.to_path_buf(),
        problem: format!(
            "{} (step {step}) is not a complete checkpoint (it lacks model.safetensors, \
             config.json or {}), so it cannot be resumed from and this run would collide \
             with it; remove it (rm -r {}) and rerun",
            dir.display(),
            checkpoint::STATE_FILE,
            dir.display()
        ),
    })
}

impl Trainer {
    /// Starts a new run in `run_dir` (created if needed). Refuses a run
    /// directory that already holds checkpoints (resume it instead).
    pub fn start(
        be: BackendBox,
        config: TrainConfig,
        data: &Path,
        run_dir: &Path,
        init: Init<'_>,
    ) -> Result<Self, TrainError> {
        Self::start_ranks(be, config, data, run_dir, init, Ranks::default())
    }

    /// [`Trainer::start`] as one rank of a data-parallel run:
    /// `config.batch_size` is per rank, so the step sees `world` times as
    /// many sequences, split by rank. Every rank calls it (and then every
    /// step and checkpoint) in lockstep.
    pub fn start_parallel(
        be: BackendBox,
        config: TrainConfig,
        data: &Path,
        run_dir: &Path,
        init: Init<'_>,
        dp: DataParallel,
    ) -> Result<Self, TrainError> {
        let ranks = Ranks {
            dp: Some(dp),
            ..Ranks::default()
        };
        Self::start_ranks(be, config, data, run_dir, init, ranks)
    }

    /// [`Trainer::start`] as one rank of any parallel layout (`ranks`).
    /// Every rank of every group calls it (and then every step and
    /// checkpoint) in lockstep.
    pub fn start_ranks(
        mut be: BackendBox,
        config: TrainConfig,
        data: &Path,
        run_dir: &Path,
        init: Init<'_>,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        check_parallel_config(&config, &ranks)?;
        let leader = ranks.model_leader() && ranks.dp.as_ref().is_none_or(|d| d.is_leader());
        let Ranks { dp, tp, pp } = ranks;
        let (rank, world) = DpRank::place(&dp);
        if let Some((step, dir)) = checkpoint::latest_checkpoint(run_dir)? {
            return Err(TrainError::RunDir {
                path: run_dir.to_path_buf(),
                problem: format!(
                    "already holds checkpoints (newest: step {step} in {}); pass --resume to \
                     continue that run, or choose another --out",
                    dir.display()
                ),
            });
        }
        let lock = leader.then(|| claim_run_dir(run_dir)).transpose()?;
        refuse_incomplete_checkpoints(run_dir, 0, config.steps)?;
        let loader = open_loader(data, &config, rank, world)?;
        let model = match init {
            Init::Preset => {
                let mc = GptConfig::preset(&config.model, config.vocab_size)?;
                if config.seq_len > mc.max_seq_len {
                    return Err(TrainError::Config(format!(
                        "--seq-len {} is longer than model {}'s {} positions; use --seq-len {} \
                         or less, or a larger model",
                        config.seq_len, config.model, mc.max_seq_len, mc.max_seq_len
                    )));
                }
                Gpt::new(&mut be, mc, config.seed)?
            }
            Init::Checkpoint(dir) => {
                let model = Gpt::load_pretrained(&mut be, dir)?;
                check_model_fits(&model.config, &config, dir)?;
                model
            }
        };
        let mut model = model;
        let (refs, opt) = setup_precision(&mut be, &mut model, &config, None)?;
        let (model, refs, opt) = split_model(&mut be, model, refs, opt, &config, tp, pp)?;
        let (opt, dp) = shard_optimizer(&mut be, &refs, opt, &config, dp)?;
        let metrics = if leader {
            std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
            let metrics_path = run_dir.join("metrics.jsonl");
            Some(MetricsLog::open(&metrics_path, 0).map_err(|e| TrainError::io(&metrics_path, e))?)
        } else {
            None
        };
        let stats = StepStats::new(&mut be)?;
        let scaler = new_scaler(&config);
        Ok(Self {
            scaler,
            schedule: schedule(&config),
            guard: NonFiniteGuard::new(config.max_bad_steps),
            rng: Rng::new(config.seed ^ 0x5EED_5A4D_1E5F_0000),
            be,
            model,
            opt,
            refs,
            loader,
            config,
            step: 0,
            run_dir: run_dir.to_path_buf(),
            data: data.to_path_buf(),
            metrics,
            started: Instant::now(),
            last_checkpoint: None,
            stats,
            keep_last: 0,
            _lock: lock,
            dp,
        })
    }

    /// Continues the run in `run_dir` from the checkpoint `ckpt_dir`.
    /// `config` must equal the saved one except for the settings that do
    /// not change the numbers of the steps already taken (`steps`,
    /// `checkpoint_every`, `log_every`, `max_bad_steps`).
    pub fn resume(
        be: BackendBox,
        config: TrainConfig,
        data: &Path,
        run_dir: &Path,
        ckpt_dir: &Path,
    ) -> Result<Self, TrainError> {
        Self::resume_ranks(be, config, data, run_dir, ckpt_dir, Ranks::default())
    }

    /// [`Trainer::resume`] as one rank of a data-parallel run, from a
    /// checkpoint of any world size and ZeRO stage: the per-rank
    /// `config.batch_size` times the world size must equal the checkpoint's
    /// global batch.
    pub fn resume_parallel(
        be: BackendBox,
        config: TrainConfig,
        data: &Path,
        run_dir: &Path,
        ckpt_dir: &Path,
        dp: DataParallel,
    ) -> Result<Self, TrainError> {
        let ranks = Ranks {
            dp: Some(dp),
            ..Ranks::default()
        };
        Self::resume_ranks(be, config, data, run_dir, ckpt_dir, ranks)
    }

    /// [`Trainer::resume`] as one rank of any parallel layout, from a
    /// checkpoint of any layout (it holds the whole model).
    pub fn resume_ranks(
        mut be: BackendBox,
        config: TrainConfig,
        data: &Path,
        run_dir: &Path,
        ckpt_dir: &Path,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        check_parallel_config(&config, &ranks)?;
        let leader = ranks.model_leader() && ranks.dp.as_ref().is_none_or(|d| d.is_leader());
        let Ranks { dp, tp, pp } = ranks;
        let (rank, world) = DpRank::place(&dp);
        let (state, opt_state) = checkpoint::read_training_state(ckpt_dir)?;
        check_resume_config(&state.config, &global_config(&config, world), ckpt_dir)?;
        if config.steps < state.step {
            return Err(TrainError::Config(format!(
                "--steps {} is below the checkpoint's step {} ({}); a resume continues toward \
                 a total at least that large",
                config.steps,
                state.step,
                ckpt_dir.display()
            )));
        }
        let lock = leader.then(|| claim_run_dir(run_dir)).transpose()?;
        refuse_incomplete_checkpoints(run_dir, state.step, config.steps)?;
        let mut loader = open_loader(data, &config, rank, world)?;
        loader.seek(&rank_position(&state.loader, rank, world, ckpt_dir)?)?;
        let mut model = Gpt::load_pretrained(&mut be, ckpt_dir)?;
        check_model_fits(&model.config, &config, ckpt_dir)?;
        let names: Vec<String> = model.params().iter().map(|p| p.name.clone()).collect();
        if names != state.param_names {
            return Err(TrainError::checkpoint(
                ckpt_dir,
                "the optimizer state's parameter list does not match the model's",
            ));
        }
        let (refs, opt) =
            setup_precision(&mut be, &mut model, &config, Some((&opt_state, ckpt_dir)))?;
        let (model, refs, opt) = split_model(&mut be, model, refs, opt, &config, tp, pp)?;
        let (opt, dp) = shard_optimizer(&mut be, &refs, opt, &config, dp)?;
        let metrics = if leader {
            let metrics_path = run_dir.join("metrics.jsonl");
            Some(
                MetricsLog::open(&metrics_path, state.step)
                    .map_err(|e| TrainError::io(&metrics_path, e))?,
            )
        } else {
            None
        };
        let mut guard = NonFiniteGuard::new(config.max_bad_steps);
        guard.set_consecutive(state.bad_steps);
        let stats = StepStats::new(&mut be)?;
        let scaler = match (new_scaler(&config), state.loss_scaler) {
            (Some(_), Some(saved)) => Some(saved),
            (fresh, _) => fresh,
        };
        Ok(Self {
            scaler,
            schedule: schedule(&config),
            rng: Rng::from_state(state.rng),
            guard,
            be,
            model,
            opt,
            refs,
            loader,
            config,
            step: state.step,
            run_dir: run_dir.to_path_buf(),
            data: data.to_path_buf(),
            metrics,
            started: Instant::now(),
            last_checkpoint: Some(ckpt_dir.to_path_buf()),
            stats,
            keep_last: 0,
            _lock: lock,
            dp,
        })
    }

    /// Keep only the newest `n` complete checkpoints (0 keeps all): older
    /// ones are removed after each new one is written.
    pub fn set_keep_last(&mut self, n: usize) {
        self.keep_last = n;
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The whole model and its backend; `None` under tensor or pipeline
    /// parallelism, where this rank holds only its part (load a checkpoint
    /// instead).
    pub fn model_mut(&mut self) -> Option<(&mut Gpt, &mut BackendBox)> {
        match &mut self.model {
            Net::Full(m) => Some((m, &mut self.be)),
            Net::Tensor(_) | Net::Pipeline(_) => None,
        }
    }

    /// The model's configuration (the whole model's, on every rank).
    pub fn model_config(&self) -> &GptConfig {
        self.model.config()
    }

    /// Rank 0 of the whole run: the one that reports and writes.
    fn is_leader(&self) -> bool {
        DpRank::leader(&self.dp) && self.model.is_group_leader()
    }

    /// Bytes of the optimizer's state (AdamW moments) on the backend.
    pub fn optimizer_state_bytes(&mut self) -> Result<usize, TrainError> {
        Ok(self.opt.state_bytes(&mut self.be)?)
    }

    /// The trainer's RNG (saved in checkpoints).
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Runs to `config.steps`, checkpointing every `checkpoint_every` steps
    /// and at the end.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<RunSummary, TrainError> {
        let mut last_loss = None;
        // Decided before any step, so every rank of a parallel run agrees
        // (rank 0 may be writing checkpoints meanwhile).
        let at_end = checkpoint::checkpoint_dir(&self.run_dir, self.config.steps);
        let end_written = self.step == self.config.steps && at_end.exists();
        while self.step < self.config.steps {
            let record = self.train_step(obs)?;
            last_loss = Some(record.loss);
            let every = self.config.checkpoint_every;
            if every > 0 && self.step.is_multiple_of(every) && self.step < self.config.steps {
                self.save_checkpoint(obs)?;
            }
        }
        if !end_written {
            self.save_checkpoint(obs)?;
        }
        Ok(RunSummary {
            steps: self.step,
            last_loss,
            checkpoint: self.last_checkpoint.clone(),
        })
    }

    /// One optimizer step over `grad_accum` micro-batches. In a parallel
    /// run an error here poisons the communicator, so the other ranks stop
    /// at their next collective instead of waiting for this one.
    pub fn train_step(&mut self, obs: &mut dyn Observer) -> Result<StepRecord, TrainError> {
        let result = self.local_step(obs);
        self.poison_on_error(result)
    }

    fn poison_on_error<T>(&self, result: Result<T, TrainError>) -> Result<T, TrainError> {
        if let Err(e) = &result {
            if let Some(d) = &self.dp {
                d.dp.poison(&e.to_string());
            }
            self.model.poison(&e.to_string());
        }
        result
    }

    fn local_step(&mut self, obs: &mut dyn Observer) -> Result<StepRecord, TrainError> {
        let t0 = Instant::now();
        let (b, t, k) = (
            self.config.batch_size,
            self.config.seq_len,
            self.config.grad_accum,
        );
        self.model.zero_grad(&mut self.be)?;
        // f16: gradients are computed for `loss_scale * loss`, so small ones
        // survive in f16; step_control unscales them before clipping.
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        self.be
            .zero(self.stats.block)
            .ok_or_err()
            .map_err(ModelError::from)?;
        let mut batches = Vec::with_capacity(k);
        for _ in 0..k {
            let batch = self.loader.next_batch()?;
            if let Some(&bad) = batch
                .tokens
                .iter()
                .chain(&batch.targets)
                .find(|&&x| x as usize >= self.config.vocab_size)
            {
                return Err(TrainError::Config(format!(
                    "token data {} holds token id {bad}, outside the model's vocabulary of {}; \
                     pass a larger --vocab-size (or the tokenizer's vocabulary size)",
                    self.data.display(),
                    self.config.vocab_size
                )));
            }
            batches.push(batch);
        }
        // The loss stays on the backend: the step reads the host once, below.
        self.model.micro_batches(
            &mut self.be,
            &batches,
            (b, t),
            loss_scale,
            self.stats.loss_slot,
        )?;
        // Norm, clipping factor and skip flag on the backend; AdamW reads them
        // there and skips a non-finite step itself.
        match &mut self.dp {
            None => {
                self.model
                    .grad_sumsq_into(&mut self.be, &self.refs, self.stats.block)?;
                step_control(
                    &mut self.be,
                    self.stats.block,
                    self.config.grad_clip,
                    1.0 / loss_scale,
                )?;
            }
            Some(d) => d.combine_gradients(
                &mut self.be,
                &mut self.model,
                &self.refs,
                self.stats.block,
                self.config.grad_clip,
                1.0 / loss_scale,
            )?,
        }
        let lr = self.schedule.lr(self.step);
        let shard = self.dp.as_ref().and_then(|d| d.shard.as_ref());
        let opt_refs = shard.map_or(&self.refs, |s| &s.refs);
        self.opt
            .step_controlled(&mut self.be, opt_refs, lr, self.stats.block)?;
        if let Some(DpRank {
            dp,
            shard: Some(shard),
        }) = &mut self.dp
        {
            shard.all_gather_values(&mut self.be, dp.comm(), &self.refs)?;
        }
        // The one host read of the step (it also waits for the step's work).
        let stats = self
            .be
            .download_f32(self.stats.block)
            .map_err(ModelError::from)?;
        let (loss, grad_norm) = (stats[STAT_LOSS], stats[STAT_GRAD_NORM]);
        let applied = stats[STAT_SKIP] == 0.0;
        self.opt.finish_step(applied);
        // f16: a finite loss with overflowing gradients is the scaler's
        // business (halve and skip), not a bad step.
        let overflow = !applied && loss.is_finite();
        if let Some(scaler) = self.scaler.as_mut() {
            match scaler.update(overflow) {
                ScaleChange::Backoff => obs.on_warning(&format!(
                    "step {}: gradients overflowed f16 at loss scale {loss_scale}; update \
                     skipped, scale now {}",
                    self.step + 1,
                    scaler.scale
                )),
                ScaleChange::Growth | ScaleChange::Kept => {}
            }
        }
        let guard_norm = if overflow && self.scaler.is_some() {
            0.0
        } else {
            grad_norm
        };
        let skipped = !applied;
        match self.guard.check(loss, guard_norm) {
            Verdict::Apply => {}
            Verdict::Skip { consecutive } => {
                obs.on_warning(&format!(
                    "step {}: non-finite loss {loss} or grad norm {grad_norm}; update skipped \
                     ({consecutive} in a row, stopping at {})",
                    self.step + 1,
                    self.config.max_bad_steps
                ));
            }
            Verdict::Stop { limit } => {
                return Err(TrainError::NonFinite {
                    step: self.step + 1,
                    limit,
                    loss,
                    grad_norm,
                })
            }
        };
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        let record = StepRecord {
            step: self.step,
            loss,
            lr,
            grad_norm,
            tokens_per_s: (b * t * k * self.world()) as f64 / secs.max(1e-9),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            skipped,
            loss_scale: self.scaler.map(|_| loss_scale),
        };
        if let Some(metrics) = &mut self.metrics {
            metrics
                .append(&record)
                .map_err(|e| TrainError::io(metrics.path(), e))?;
        }
        if self.is_leader() {
            obs.on_step(&record);
        }
        Ok(record)
    }

    /// Writes the checkpoint of the current step. In a parallel run every
    /// rank calls it (ZeRO-1 gathers the optimizer state) and rank 0 writes.
    pub fn save_checkpoint(&mut self, obs: &mut dyn Observer) -> Result<PathBuf, TrainError> {
        let result = self.write_checkpoint(obs);
        self.poison_on_error(result)
    }

    fn write_checkpoint(&mut self, obs: &mut dyn Observer) -> Result<PathBuf, TrainError> {
        let gathered = self.gathered_optimizer()?;
        let whole = self.gathered_model()?;
        if !self.is_leader() {
            return Ok(checkpoint::checkpoint_dir(&self.run_dir, self.step));
        }
        let world = self.world();
        let position = self.loader.position();
        let state = TrainingState {
            format: checkpoint::new_state_format(),
            step: self.step,
            config: global_config(&self.config, world),
            loader: LoaderPosition {
                batch_size: position.batch_size * world,
                rank: 0,
                world: 1,
                ..position
            },
            data: self.data.clone(),
            bad_steps: self.guard.consecutive(),
            rng: self.rng.state(),
            param_names: self.model.param_names(),
            loss_scaler: self.scaler,
        };
        let (model, opt) = match (&whole, &self.model) {
            (Some((model, opt)), _) => (model, opt),
            (None, Net::Full(model)) => (model, gathered.as_ref().unwrap_or(&self.opt)),
            (None, _) => unreachable!("a model-parallel leader gathers the whole model"),
        };
        let written = checkpoint::write_checkpoint(&mut self.be, &self.run_dir, model, &state, opt);
        if let Some(full) = gathered {
            full.release(&mut self.be)?;
        }
        if let Some((model, opt)) = whole {
            model.release(&mut self.be)?;
            opt.release(&mut self.be)?;
        }
        let dir = written?;
        obs.on_checkpoint(self.step, &dir);
        self.last_checkpoint = Some(dir.clone());
        if self.keep_last > 0 {
            checkpoint::prune_checkpoints(&self.run_dir, self.keep_last)?;
        }
        Ok(dir)
    }

    /// Data-parallel ranks (1 without data parallelism).
    pub fn world(&self) -> usize {
        self.dp.as_ref().map_or(1, |d| d.dp.world())
    }

    /// This rank (0 without data parallelism).
    pub fn rank(&self) -> usize {
        self.dp.as_ref().map_or(0, |d| d.dp.rank())
    }

    /// Tensor or pipeline parallel: the whole model and optimizer,
    /// gathered from the parts held by data-parallel rank 0's group, on its
    /// rank 0 (`None` elsewhere and for a whole model).
    fn gathered_model(&mut self) -> Result<Option<(Gpt, AdamW)>, TrainError> {
        if !DpRank::leader(&self.dp) {
            return Ok(None);
        }
        self.model
            .gather(&mut self.be, &self.opt, adamw_config(&self.config))
    }

    /// ZeRO-1: the full optimizer (on rank 0; `None` on the others and
    /// when the optimizer is not sharded) from every rank's shard.
    fn gathered_optimizer(&mut self) -> Result<Option<AdamW>, TrainError> {
        let Some(DpRank {
            dp,
            shard: Some(shard),
        }) = &mut self.dp
        else {
            return Ok(None);
        };
        let mine = self.opt.export_state(&mut self.be)?;
        let full = shard.gather_state(dp.comm(), &mine)?;
        if !dp.is_leader() {
            return Ok(None);
        }
        let mut opt = AdamW::new(&mut self.be, &self.refs, adamw_config(&self.config))?;
        opt.import_state(&mut self.be, &full)?;
        Ok(Some(opt))
    }
}

impl DpRank {
    /// Between backward and AdamW: the gradients averaged across ranks
    /// (whole, or this rank's shard under ZeRO-1), the loss averaged, and
    /// the norm, clip factor and skip flag computed from the global
    /// gradient, the same on every rank.
    fn combine_gradients(
        &mut self,
        be: &mut BackendBox,
        model: &mut Net,
        refs: &[ParamRef],
        stats: BufId,
        grad_clip: Option<f32>,
        inv_loss_scale: f32,
    ) -> Result<(), TrainError> {
        let bucket_bytes = self.dp.bucket_bytes();
        let comm = self.dp.comm();
        match &self.shard {
            None => {
                buckets::all_reduce_grads(be, comm, refs, bucket_bytes)?;
                agree::agree_stats(be, comm, stats, false)?;
                model.grad_sumsq_into(be, refs, stats)?;
                step_control(be, stats, grad_clip, inv_loss_scale)?;
            }
            Some(shard) => {
                shard.reduce_scatter_grads(be, comm, refs)?;
                for r in &shard.refs {
                    be.reduce(Reduce::SumSquares, stats, STAT_GRAD_SUMSQ, r.grad, r.len)
                        .ok_or_err()
                        .map_err(DpError::from)?;
                }
                agree::agree_stats(be, comm, stats, true)?;
                be.step_control(stats, clip_limit(grad_clip)?, inv_loss_scale)
                    .ok_or_err()
                    .map_err(DpError::from)?;
            }
        }
        Ok(())
    }
}

/// What a data-parallel run cannot do (yet), refused before any work.
fn check_parallel_config(config: &TrainConfig, ranks: &Ranks) -> Result<(), TrainError> {
    let split = match (&ranks.tp, &ranks.pp) {
        (Some(_), Some(_)) => {
            return Err(TrainError::Config(
                "--tp and --pp together are not supported yet; use one of them (with --dp)".into(),
            ))
        }
        (Some(_), None) => Some("--tp"),
        (None, Some(_)) => Some("--pp"),
        (None, None) => None,
    };
    let dp = &ranks.dp;
    if let Some(flag) = split {
        if config.precision().is_mixed() {
            return Err(TrainError::Config(format!(
                "{flag} trains in f32 for now; --precision {} needs {flag} 1",
                config.precision
            )));
        }
        if dp.as_ref().is_some_and(|d| d.zero() != Zero::Off) {
            return Err(TrainError::Config(format!(
                "--zero 1 with {flag} is not supported yet; use --zero 0 with {flag}"
            )));
        }
    }
    match dp {
        Some(d) if d.zero() == Zero::Stage1 && config.precision().is_mixed() => {
            Err(TrainError::Config(format!(
                "--zero 1 shards f32 master weights only; --precision {} needs --zero 0 for now",
                config.precision
            )))
        }
        _ => Ok(()),
    }
}

/// Norm to clip factor and skip flag, on the backend (after the gradient
/// sum of squares is in the stats block).
fn step_control(
    be: &mut BackendBox,
    stats: BufId,
    grad_clip: Option<f32>,
    inv_loss_scale: f32,
) -> Result<(), TrainError> {
    be.step_control(stats, clip_limit(grad_clip)?, inv_loss_scale)
        .ok_or_err()
        .map_err(ModelError::from)?;
    Ok(())
}

/// The model this rank trains: the whole one, or (with a tensor-parallel
/// group) its shard, cut from the whole one with its optimizer state.
fn split_model(
    be: &mut BackendBox,
    model: Gpt,
    refs: Vec<ParamRef>,
    opt: AdamW,
    config: &TrainConfig,
    tp: Option<Box<dyn Communicator>>,
    pp: Option<Box<dyn Communicator>>,
) -> Result<(Net, Vec<ParamRef>, AdamW), TrainError> {
    if tp.is_none() && pp.is_none() {
        return Ok((Net::Full(model), refs, opt));
    }
    let state = opt.export_state(be)?;
    opt.release(be)?;
    let adamw = adamw_config(config);
    if let Some(comm) = tp {
        let (rank, refs, opt) = TensorRank::split(be, model, &state, comm, adamw)?;
        return Ok((Net::Tensor(rank), refs, opt));
    }
    let comm = pp.expect("one of tp and pp");
    let (rank, refs, opt) = PipeRank::split(be, model, &state, comm, adamw)?;
    Ok((Net::Pipeline(rank), refs, opt))
}

/// ZeRO-1: replaces the full optimizer by one over this rank's shard,
/// keeping the shard's part of its state (zeros on a new run).
fn shard_optimizer(
    be: &mut BackendBox,
    refs: &[ParamRef],
    full: AdamW,
    config: &TrainConfig,
    dp: Option<DataParallel>,
) -> Result<(AdamW, Option<DpRank>), TrainError> {
    let Some(dp) = dp else {
        return Ok((full, None));
    };
    if dp.zero() == Zero::Off {
        return Ok((full, Some(DpRank { dp, shard: None })));
    }
    let shard = Shard::new(be, refs, dp.rank(), dp.world())?;
    let state = full.export_state(be)?;
    full.release(be)?;
    let mut opt = AdamW::new(be, &shard.refs, adamw_config(config))?;
    opt.import_state(be, &shard.slice_state(&state))?;
    Ok((
        opt,
        Some(DpRank {
            dp,
            shard: Some(shard),
        }),
    ))
}

/// The config as one process would run it: `world` ranks of per-rank
/// batch B are one rank of batch `world * B` (what checkpoints store).
fn global_config(config: &TrainConfig, world: usize) -> TrainConfig {
    TrainConfig {
        batch_size: config.batch_size * world,
        ..config.clone()
    }
}

/// A checkpoint's loader position (one rank reading the global batch) as
/// rank `rank` of `world` continues it: rank r's batch k is windows
/// `[(k*world + r)*B, ..+B)`, the r-th part of the single rank's batch k.
fn rank_position(
    saved: &LoaderPosition,
    rank: usize,
    world: usize,
    ckpt_dir: &Path,
) -> Result<LoaderPosition, TrainError> {
    if saved.world != 1 || !saved.batch_size.is_multiple_of(world) {
        return Err(TrainError::checkpoint(
            ckpt_dir,
            format!(
                "its loader position (global batch {} over {} rank(s)) cannot be split over \
                 {world} data-parallel ranks; use a --dp that divides {}",
                saved.batch_size, saved.world, saved.batch_size
            ),
        ));
    }
    Ok(LoaderPosition {
        batch_size: saved.batch_size / world,
        rank,
        world,
        ..saved.clone()
    })
}

/// Puts the model in the run's precision policy and builds the optimizer
/// over its parameters (with a saved state on resume, after which the
/// 16-bit working copies are rewritten exactly as the last update did).
fn setup_precision(
    be: &mut BackendBox,
    model: &mut Gpt,
    config: &TrainConfig,
    saved: Option<(&kiln_optim::AdamWState, &Path)>,
) -> Result<(Vec<ParamRef>, AdamW), TrainError> {
    let precision = config.precision();
    if precision.is_mixed() {
        let info = be
            .info()
            .into_result()
            .map_err(|e| TrainError::Config(e.into_string()))?;
        for op in [
            "matmul",
            "norm_forward",
            "attention_forward",
            "crossentropy_forward",
        ] {
            info.require(op, precision.compute_dtype())
                .map_err(TrainError::Config)?;
        }
    }
    model.set_precision(be, precision)?;
    let refs = param_refs(model.params());
    let mut opt = AdamW::new(be, &refs, adamw_config(config))?;
    if config.stochastic_rounding {
        opt.set_rounding(kiln_abi::Rounding::Stochastic, config.seed);
    }
    if let Some((state, ckpt_dir)) = saved {
        opt.import_state(be, state).map_err(|e| {
            TrainError::checkpoint(ckpt_dir.join(checkpoint::STATE_FILE), e.to_string())
        })?;
    }
    opt.refresh_copies(be, &refs)?;
    Ok((refs, opt))
}

/// The f16 policy's loss scaler (none for f32 and bf16).
fn new_scaler(config: &TrainConfig) -> Option<LossScaler> {
    (config.precision() == kiln_model::Precision::F16)
        .then(|| LossScaler::new(config.loss_scale_init))
}

fn open_loader(
    data: &Path,
    config: &TrainConfig,
    rank: usize,
    world: usize,
) -> Result<DataLoader, TrainError> {
    Ok(DataLoader::open(
        data,
        LoaderOptions {
            batch_size: config.batch_size,
            seq_len: config.seq_len,
            seed: config.seed,
            shuffle: true,
            rank,
            world,
        },
    )?)
}

fn adamw_config(c: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        weight_decay: c.weight_decay,
    }
}

fn schedule(c: &TrainConfig) -> LrSchedule {
    LrSchedule {
        max_lr: c.lr,
        min_lr: c.min_lr,
        warmup_steps: c.warmup,
        total_steps: c.steps,
    }
}

fn check_model_fits(mc: &GptConfig, c: &TrainConfig, dir: &Path) -> Result<(), TrainError> {
    if mc.vocab_size != c.vocab_size {
        return Err(TrainError::checkpoint(
            dir,
            format!(
                "model vocabulary is {}, the run's is {} (set --vocab-size {} or drop it)",
                mc.vocab_size, c.vocab_size, mc.vocab_size
            ),
        ));
    }
    if c.seq_len > mc.max_seq_len {
        return Err(TrainError::checkpoint(
            dir,
            format!(
                "model has {} positions, --seq-len {} is longer; use --seq-len {} or less",
                mc.max_seq_len, c.seq_len, mc.max_seq_len
            ),
        ));
    }
    Ok(())
}

/// A resume may change how long the run goes and how it reports, never what
/// the steps compute.
fn check_resume_config(
    saved: &TrainConfig,
    now: &TrainConfig,
    dir: &Path,
) -> Result<(), TrainError> {
    let replayable = TrainConfig {
        steps: saved.steps,
        checkpoint_every: saved.checkpoint_every,
        log_every: saved.log_every,
        max_bad_steps: saved.max_bad_steps,
        ..now.clone()
    };
    if &replayable == saved {
        return Ok(());
    }
    let a = serde_json::to_value(saved).unwrap_or_default();
    let b = serde_json::to_value(&replayable).unwrap_or_default();
    let diffs: Vec<String> = a
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: checkpoint {v}, now {}",
                b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    Err(TrainError::checkpoint(
        dir,
        format!(
            "--resume keeps the run's settings, but these differ: {}; drop those flags (or start a new run with another --out)",
            diffs.join("; ")
        ),
    ))
}
