//! `kiln pretrain`: next-token pretraining of a GPT-2-style model on token
//! shards, with checkpoints, exact `--resume` and metrics.jsonl.
//!
//! `--dp N` runs N data-parallel ranks as threads of this process
//! (`--batch-size` per rank, `--zero 0|1`, `--comm-timeout-s`); `--tp M`
//! splits each rank's model over M tensor-parallel ranks (`--dp N --tp M`
//! is N x M threads), `--pp S` into S pipeline stages. Rank 0 alone prints
//! and writes. Built with `--features mpi`, `mpirun -np N kiln
//! pretrain` runs one rank per process instead (cmd/pretrain_mpi.rs). See
//! docs/parallel.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln_abi::BackendBox;
use kiln_model::{Gpt, GptConfig, SampleOptions};
use kiln_parallel::comm::{Communicator, GridComms, ProcessGrid, ThreadComm};
use kiln_parallel::data_parallel::{DataParallel, Zero};
use kiln_train::checkpoint::{latest_checkpoint, read_training_state};
use kiln_train::loader::{is_val_name, shards_of, TokenSource};
use kiln_train::progress::Progress;
use kiln_train::{Init, Quiet, Ranks, TrainConfig, Trainer};
use serde::Deserialize;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .bin token shard, or a directory of them: its training shards are
    /// trained on, its validation shards (`val` in the name, or meta.json's)
    /// give the held-out loss at the end.
    #[arg(long)]
    data: PathBuf,
    /// Allow --data to be a file named as validation data (`val.bin`, ...).
    #[arg(long)]
    train_on_val: bool,
    /// Run directory (metrics.jsonl, checkpoints/).
    #[arg(long)]
    out: PathBuf,
    /// TOML file with training settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    pub(super) backend: crate::backend::BackendArg,
    /// Start from the weights in this checkpoint directory.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Keep only the newest N checkpoints (the newest complete one always
    /// stays); older ones are removed as new ones are written. 0 keeps all.
    #[arg(long, default_value_t = 0)]
    keep_last: usize,
    /// Data-parallel ranks, run as threads of this process; --batch-size is
    /// per rank (the global batch is N times it). Rank 0 prints and writes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    dp: usize,
    /// Tensor-parallel ranks per model (Megatron: heads, MLP and vocabulary
    /// split over them; GPT-2 presets, f32). Under mpirun the data-parallel
    /// size is the launch's ranks / N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(super) tp: usize,
    /// Pipeline stages per model (the layers split into N contiguous
    /// stages, 1F1B over the --grad-accum micro-batches; f32). Under mpirun
    /// the data-parallel size is the launch's ranks / (tp x pp).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(super) pp: usize,
    /// ZeRO stage of a data-parallel run: 0 (every rank holds the whole
    /// optimizer state) or 1 (optimizer state and master weights sharded).
    #[arg(long, default_value_t = 0, value_name = "0|1")]
    pub(super) zero: u8,
    /// Seconds a rank waits in one collective before it fails the run,
    /// naming the rank(s) it waited for.
    #[arg(long, default_value_t = 600, value_name = "S")]
    pub(super) comm_timeout_s: u64,
}

/// Settings a flag or the TOML file can give (the file's keys are these
/// names with underscores); unset ones take the defaults.
#[derive(clap::Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Model preset: tiny, mini, small, gpt2-124m, llama-tiny or llama-mini.
    #[arg(long)]
    model: Option<String>,
    /// Total optimizer steps of the run.
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per sequence (default: the model's context length).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Learning rate at the end of the cosine decay.
    #[arg(long)]
    min_lr: Option<f32>,
    /// Linear warmup steps.
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Write a checkpoint every N steps (one is always written at the end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Vocabulary size (default: from --init, else from the data).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Global gradient-norm clip.
    #[arg(long)]
    grad_clip: Option<f32>,
    /// Plain progress line every N steps when stderr is not a terminal.
    #[arg(long)]
    log_every: Option<u64>,
    /// Precision policy: f32, bf16 or f16 (16-bit weights, activations and
    /// gradients with f32 master weights and AdamW moments; f16 adds a
    /// dynamic loss scale).
    #[arg(long)]
    precision: Option<String>,
    /// Round the 16-bit working weights stochastically after each update.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    stochastic_rounding: Option<bool>,
    /// f16: the initial loss scale (default 65536, as PyTorch's GradScaler).
    #[arg(long)]
    loss_scale_init: Option<f32>,
    #[arg(skip)]
    beta1: Option<f32>,
    #[arg(skip)]
    beta2: Option<f32>,
    #[arg(skip)]
    eps: Option<f32>,
    #[arg(skip)]
    max_bad_steps: Option<u32>,
}

impl Settings {
    /// `self` with `over`'s values where it has them.
    fn overridden_by(self, over: Settings) -> Settings {
        macro_rules! pick { ($($f:ident),*) => { Settings { $($f: over.$f.or(self.$f)),* } } }
        pick!(
            model,
            steps,
            batch_size,
            seq_len,
            grad_accum,
            lr,
            min_lr,
            warmup,
            weight_decay,
            seed,
            checkpoint_every,
            threads,
            vocab_size,
            grad_clip,
            log_every,
            precision,
            stochastic_rounding,
            loss_scale_init,
            beta1,
            beta2,
            eps,
            max_bad_steps
        )
    }

    fn apply(&self, c: &mut TrainConfig) {
        macro_rules! set { ($($f:ident),*) => { $(if let Some(v) = self.$f.clone() { c.$f = v; })* } }
        set!(
            model,
            steps,
            batch_size,
            seq_len,
            grad_accum,
            lr,
            min_lr,
            warmup,
            weight_decay,
            seed,
            checkpoint_every,
            vocab_size,
            log_every,
            precision,
            stochastic_rounding,
            loss_scale_init,
            beta1,
            beta2,
            eps,
            max_bad_steps
        );
        if let Some(clip) = self.grad_clip {
            c.grad_clip = Some(clip);
        }
    }
}

fn read_config_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "config {}: {} (valid keys are the pretrain flags with underscores, e.g. batch_size)",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => read_config_file(p)?,
        None => Settings::default(),
    };
    let settings = file.overridden_by(std::mem::take(&mut args.settings));
    if args.data.is_file() && is_val_name(&args.data) && !args.train_on_val {
        bail!(
            "--data {}: the file is named as validation data; training on it leaves nothing \
             held out. Pass the training shard (or the directory), or --train-on-val if you mean it",
            args.data.display()
        );
    }
    let resume_from = if args.resume {
        let found = latest_checkpoint(&args.out)?;
        if found.is_none() {
            eprintln!(
                "note: no complete checkpoint in {}; starting a new run",
                args.out.join("checkpoints").display()
            );
        }
        found
    } else {
        None
    };

    let zero = Zero::from_level(args.zero).map_err(anyhow::Error::msg)?;
    if args.dp == 0 || args.tp == 0 || args.pp == 0 {
        bail!(
            "--dp {} --tp {} --pp {}: a run needs at least one rank of each",
            args.dp,
            args.tp,
            args.pp
        );
    }
    // Under mpirun/srun (an MPI build; main refused the launch otherwise)
    // the launch's world is the data-parallel size times --tp times --pp.
    let launch = super::launch::multi_process()?;
    let split = args.tp * args.pp;
    let dp = match &launch {
        Some(l) if !l.world.is_multiple_of(split) => bail!(
            "--tp {} --pp {}: this process is {l}, and {} ranks do not split into model \
             groups of {split}; launch a multiple of {split} processes",
            args.tp,
            args.pp,
            l.world,
        ),
        Some(l) if args.dp != 1 && args.dp * split != l.world => bail!(
            "--dp {}: this process is {l}; under a launcher every process is one rank, so \
             --dp must be 1 or the launch's {} ranks / (--tp x --pp = {split})",
            args.dp,
            l.world,
        ),
        Some(l) => l.world / split,
        None => args.dp,
    };
    let leader = launch.as_ref().is_none_or(|l| l.rank == 0);
    let config = match &resume_from {
        Some((step, dir)) => {
            if leader {
                eprintln!("resuming from step {step}: {}", dir.display());
            }
            resumed_config(&settings, dir, dp)?
        }
        None => fresh_config(&settings, &args)?,
    };
    if let Some(l) = &launch {
        return run_mpi(config, &args, &resume_from, settings.threads, zero, l);
    }
    if args.dp == 1 && split == 1 && zero == Zero::Off {
        let be = crate::backend::open(&args.backend, settings.threads)?;
        let trainer = open_trainer(be, config, &args, &resume_from, Ranks::default())?;
        return train_and_report(trainer, &args);
    }
    run_threads(config, &args, &resume_from, settings.threads, zero)
}

#[cfg(feature = "mpi")]
fn run_mpi(
    config: TrainConfig,
    args: &Args,
    resume_from: &Option<(u64, PathBuf)>,
    threads: Option<usize>,
    zero: Zero,
    launch: &kiln_parallel::launch::Launch,
) -> anyhow::Result<()> {
    super::pretrain_mpi::run(config, args, resume_from, threads, zero, launch)
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(
    _: TrainConfig,
    _: &Args,
    _: &Option<(u64, PathBuf)>,
    _: Option<usize>,
    _: Zero,
    launch: &kiln_parallel::launch::Launch,
) -> anyhow::Result<()> {
    // main's launch check refuses a multi-process launch in this build.
    bail!("this process is {launch}, and this kiln was built without MPI")
}

/// The config of a resumed run: the checkpoint's (whose batch is global),
/// then the flags; without --batch-size the global batch is split over the
/// `dp` ranks.
fn resumed_config(settings: &Settings, dir: &Path, dp: usize) -> anyhow::Result<TrainConfig> {
    let (state, _) = read_training_state(dir)?;
    let mut config = state.config.clone();
    settings.apply(&mut config);
    if settings.batch_size.is_none() {
        let global = state.config.batch_size;
        if !global.is_multiple_of(dp) {
            bail!(
                "--dp {dp}: the checkpoint's global batch of {global} sequences does not split \
                 into {dp} equal per-rank batches; use a --dp that divides {global}"
            );
        }
        config.batch_size = global / dp;
    }
    Ok(config)
}

/// A new or resumed trainer (one rank's, placed by `ranks`).
pub(super) fn open_trainer(
    be: kiln_abi::BackendBox,
    config: TrainConfig,
    args: &Args,
    resume_from: &Option<(u64, PathBuf)>,
    ranks: Ranks,
) -> anyhow::Result<Trainer> {
    let mut trainer = match resume_from {
        Some((_, dir)) => Trainer::resume_ranks(be, config, &args.data, &args.out, dir, ranks)?,
        None => {
            let init = match &args.init {
                Some(d) => Init::Checkpoint(d),
                None => Init::Preset,
            };
            Trainer::start_ranks(be, config, &args.data, &args.out, init, ranks)?
        }
    };
    trainer.set_keep_last(args.keep_last);
    Ok(trainer)
}

/// One rank's place in the run from its grid communicators: a
/// data-parallel group when there are several replicas (or ZeRO asks for
/// one), tensor-parallel and pipeline groups when the model is split.
pub(super) fn ranks_of<C: Communicator + 'static>(comms: GridComms<C>, zero: Zero) -> Ranks {
    let GridComms { dp, tp, pp, .. } = comms;
    let group = |c: C| (c.world() > 1).then(|| Box::new(c) as Box<dyn Communicator>);
    Ranks {
        dp: (dp.world() > 1 || zero != Zero::Off).then(|| DataParallel::new(Box::new(dp), zero)),
        tp: group(tp),
        pp: group(pp),
    }
}

/// `--dp N --tp M --pp S`: N x M x S thread ranks, each with its own backend; rank 0
/// reports. The error shown is rank 0's, else the lowest failing rank's (a
/// rank that failed first is named in the others' messages).
fn run_threads(
    config: TrainConfig,
    args: &Args,
    resume_from: &Option<(u64, PathBuf)>,
    threads: Option<usize>,
    zero: Zero,
) -> anyhow::Result<()> {
    let grid = ProcessGrid {
        tp: args.tp,
        dp: args.dp,
        pp: args.pp,
    };
    let n = grid.world();
    // The cores are shared between the ranks unless --threads says otherwise.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = threads.unwrap_or((cores / n).max(1));
    let timeout = std::time::Duration::from_secs(args.comm_timeout_s.max(1));
    eprintln!(
        "parallel: {n} thread ranks (dp {} x tp {} x pp {}), batch {} per data-parallel rank \
         (global batch {}), zero {}, {threads} compute thread(s) per rank, collective timeout \
         {}s",
        grid.dp,
        grid.tp,
        grid.pp,
        config.batch_size,
        config.batch_size * grid.dp,
        args.zero,
        timeout.as_secs()
    );
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = ThreadComm::grid(grid, timeout)
            .into_iter()
            .enumerate()
            .map(|(rank, comms)| {
                let config = config.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    let ranks = ranks_of(comms, zero);
                    let be = crate::backend::open(&args.backend, Some(threads))?;
                    let trainer = open_trainer(be, config, args, resume_from, ranks)?;
                    if rank == 0 {
                        train_and_report(trainer, args)
                    } else {
                        let mut trainer = trainer;
                        trainer.run(&mut Quiet)?;
                        Ok(())
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("rank {rank} panicked")))
                    .with_context(|| format!("parallel rank {rank}"))
            })
            .collect()
    });
    match results.into_iter().find(Result::is_err) {
        Some(err) => err,
        None => Ok(()),
    }
}

/// Runs `trainer` to the end with a progress bar, then prints the summary,
/// the held-out loss and samples.
pub(super) fn train_and_report(mut trainer: Trainer, args: &Args) -> anyhow::Result<()> {
    let c = trainer.config().clone();
    let world = trainer.world();
    eprintln!(
        "pretrain: model {} (vocab {}), {} steps of {} x {} tokens x {} micro-batches, lr {} -> {}, run dir {}",
        c.model,
        c.vocab_size,
        c.steps,
        c.batch_size * world,
        c.seq_len,
        c.grad_accum,
        c.lr,
        c.min_lr,
        args.out.display()
    );
    let mut progress = Progress::new(trainer.step_count(), c.steps, c.log_every);
    let summary = trainer.run(&mut progress);
    progress.finish();
    let summary = summary?;
    let last_checkpoint = summary.checkpoint.clone();
    println!(
        "done: {} steps, last loss {}, checkpoint {}",
        summary.steps,
        summary
            .last_loss
            .map(|l| format!("{l:.4}"))
            .unwrap_or_else(|| "- (nothing left to run)".into()),
        summary
            .checkpoint
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let (seq_len, batch) = (c.seq_len, c.batch_size);
    if let Some((model, be)) = trainer.model_mut() {
        print_held_out(model, be, &args.data, seq_len, batch);
        return print_samples(model, be, &args.data);
    }
    // Tensor or pipeline parallel: this rank holds a part; the checkpoint
    // is whole.
    let Some(dir) = last_checkpoint else {
        return Ok(());
    };
    drop(trainer);
    let mut be = crate::backend::open(&args.backend, None)?;
    let mut model = Gpt::load_pretrained(&mut be, &dir)?;
    print_held_out(&mut model, &mut be, &args.data, seq_len, batch);
    print_samples(&mut model, &mut be, &args.data)
}

/// The held-out loss on a data directory's validation shards, if it has any.
fn print_held_out(model: &mut Gpt, be: &mut BackendBox, data: &Path, seq_len: usize, batch: usize) {
    if !data.is_dir() || shards_of(data).map_or(true, |(_, val)| val.is_empty()) {
        return;
    }
    match kiln_train::eval::evaluate(be, model, data, seq_len, batch) {
        Ok(r) => println!(
            "held-out: loss {:.4}, ppl {:.2} over {} tokens of {}'s validation shards",
            r.loss,
            r.ppl,
            r.tokens,
            data.display()
        ),
        Err(e) => eprintln!("note: no held-out loss: {e}"),
    }
}

/// The config of a new run: defaults of the model, then the file, then flags.
fn fresh_config(s: &Settings, args: &Args) -> anyhow::Result<TrainConfig> {
    let (model, vocab, max_t) = match &args.init {
        Some(dir) => {
            if s.model.is_some() {
                bail!("--model and --init both given; --init's config.json decides the model");
            }
            let cfg = read_model_config(dir)?;
            (
                "init".to_string(),
                s.vocab_size.unwrap_or(cfg.vocab_size),
                cfg.max_seq_len,
            )
        }
        None => {
            let name = s.model.clone().unwrap_or_else(|| "tiny".to_string());
            let vocab = match s.vocab_size {
                Some(v) => v,
                None => vocab_from_data(&args.data)?,
            };
            let preset = GptConfig::preset(&name, vocab)?;
            (name, vocab, preset.max_seq_len)
        }
    };
    let mut config = TrainConfig::with_model(&model, vocab, s.seq_len.unwrap_or(max_t));
    s.apply(&mut config);
    if s.warmup.is_none() {
        // Short runs would spend all their steps warming up otherwise.
        config.warmup = (config.steps / 10).min(100);
    }
    config.model = model;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("pretrain settings: {e}"))?;
    Ok(config)
}

fn read_model_config(dir: &Path) -> anyhow::Result<GptConfig> {
    // Loading the config alone is cheap; the weights load in Trainer::start.
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("checkpoint {}: cannot read", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("checkpoint {}: not valid JSON", path.display()))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .ok_or_else(|| anyhow::anyhow!("checkpoint {}: no integer `{k}`", path.display()))
    };
    Ok(GptConfig::new(
        field("vocab_size")?,
        field("n_positions")?,
        field("n_layer")?,
        field("n_head")?,
        field("n_embd")?,
    ))
}

/// The vocabulary the data needs: max token + 1, rounded up to 256 for byte
/// data and to a multiple of 64 otherwise (padding is free; a later token id
/// from the same tokenizer then still fits).
fn vocab_from_data(data: &Path) -> anyhow::Result<usize> {
    let source = TokenSource::open(data, 1)?;
    let max = source
        .max_token()?
        .ok_or_else(|| anyhow::anyhow!("token data {}: holds no tokens", data.display()))?;
    let need = max as usize + 1;
    let vocab = if need <= 256 {
        256
    } else {
        need.div_ceil(64) * 64
    };
    eprintln!(
        "vocab size {vocab} (largest token id in the data is {max}; set --vocab-size to choose)"
    );
    Ok(vocab)
}

/// A few continuations of the data's first tokens, as token ids (greedy,
/// then sampled), so a run ends with something to look at.
fn print_samples(model: &mut Gpt, be: &mut BackendBox, data: &Path) -> anyhow::Result<()> {
    let mut source = TokenSource::open(data, 16)?;
    let mut window = vec![0u32; 17];
    source.read_window(0, &mut window)?;
    let prompt = &window[..8];
    for (label, temperature, top_k) in [("greedy", 0.0, None), ("sampled", 1.0, Some(40))] {
        let opts = SampleOptions {
            max_new_tokens: 24,
            temperature,
            top_k,
            top_p: None,
            seed: 1,
            stop_token: None,
        };
        let new = model.generate(be, prompt, &opts)?;
        println!("sample ({label}): prompt {} -> {}", ids(prompt), ids(&new));
    }
    Ok(())
}

fn ids(v: &[u32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
