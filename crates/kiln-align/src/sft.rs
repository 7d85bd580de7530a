//! Supervised fine-tuning on chats: next-token cross-entropy on the
//! assistant's tokens only (the mask of [`kiln_tokenizer::ChatTemplate::encode`],
//! which includes the `<|end|>` closing each assistant turn, so the model
//! learns to stop). The loss of a step is the mean over all assistant
//! tokens of its micro-batches (TRL's `sum / num_items_in_batch`), not a
//! mean of per-sequence means.
//!
//! By default each chat is one row of a right-padded batch ([`TokenBatch`]).
//! With [`SftConfig::packing`] the chats of a micro-batch are packed
//! first-fit into rows of the model's context ([`PackedBatch`]): every chat
//! keeps its own positions (restarting at 0) and attends only to itself
//! (segmented attention), and no target crosses into the next chat, so the
//! loss and gradients are those of the unpacked batch, with fewer rows and
//! less padding. The summary reports the packing efficiency (real positions
//! over rows x row length) either way.

use kiln_abi::BackendBox;
use kiln_model::{Packing, Rng};
use kiln_tokenizer::EncodedChat;
use serde::{Deserialize, Serialize};

use crate::batch::{LmSequence, PackedBatch, TokenBatch};
use crate::metrics::{MetricsLog, Progress, Record, EVAL, TRAIN};
use crate::optim::{AlignOptimizer, OptimConfig};
use crate::policy::Policy;
use crate::replicas::Replicas;
use crate::AlignError;

/// SFT settings; the TOML file of `kiln sft --config` has these keys
/// (unknown keys are refused; missing ones take these defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Passes over the training chats.
    pub epochs: u32,
    /// Stop after this many optimizer steps (0: run all epochs).
    pub max_steps: u64,
    /// Chats per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f32,
    /// Share of the chats held out for the validation loss (0: none).
    pub eval_fraction: f32,
    /// Evaluate every N steps (0: at the end of every epoch).
    pub eval_every: u64,
    /// Shuffling and the eval split.
    pub seed: u64,
    /// A progress line every N steps when stderr is not a terminal.
    pub log_every: u64,
    pub max_bad_steps: u32,
    /// Pack the chats of each micro-batch into rows of the model's context
    /// (positions restart per chat, no attention across chats) instead of one
    /// padded row per chat. Same loss and gradients, fewer rows. The
    /// validation loss is computed unpacked either way.
    pub packing: bool,
    /// Precision policy: "f32", "bf16" or "f16" (16-bit weights, activations and
    /// gradients; f32 master weights and AdamW moments; f16 adds a dynamic
    /// loss scale).
    #[serde(skip_serializing_if = "crate::precision::is_f32")]
    pub precision: String,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            precision: crate::precision::default_precision(),
            epochs: 3,
            max_steps: 0,
            batch_size: 8,
            grad_accum: 1,
            lr: 3e-4,
            min_lr: 3e-5,
            warmup: 10,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_fraction: 0.1,
            eval_every: 0,
            seed: 1234,
            log_every: 10,
            max_bad_steps: 5,
            packing: false,
        }
    }
}

impl SftConfig {
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
            max_bad_steps: self.max_bad_steps,
        }
    }

    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), AlignError> {
        crate::precision::parse_precision(&self.precision)?;
        for (k, v) in [
            ("epochs", self.epochs as usize),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("log_every", self.log_every as usize),
        ] {
            if v == 0 {
                return Err(AlignError::Config(format!("{k} must be at least 1")));
            }
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(AlignError::Config(format!(
                "eval_fraction must be in [0, 1), got {}",
                self.eval_fraction
            )));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(AlignError::Config(format!(
                "grad_clip must be >= 0 (0 turns clipping off), got {}",
                self.grad_clip
            )));
        }
        self.optim().validate()
    }

    /// Chats per optimizer step.
    pub fn chats_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

/// How an SFT run went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SftSummary {
    pub steps: u64,
    pub train_chats: usize,
    pub eval_chats: usize,
    /// Loss of the first and last optimizer step (nats per assistant token).
    pub first_loss: f32,
    pub last_loss: f32,
    /// Validation loss before training and after the last step.
    pub eval_loss_before: Option<f32>,
    pub eval_loss: Option<f32>,
    /// Assistant tokens learned from (summed over steps).
    pub trained_tokens: u64,
    /// Input positions (real tokens, padding excluded) per second of training.
    pub tokens_per_s: f64,
    pub skipped_steps: u64,
    pub seconds: f64,
    /// Whether chats were packed several to a row.
    pub packing: bool,
    /// Rows of all training micro-batches (one per chat without packing).
    pub rows: u64,
    /// Real input positions over all positions (rows x row length) of the
    /// training micro-batches: 1 means no padding.
    pub packing_efficiency: f64,
}

/// Splits `chats` into (train, eval): a `fraction` of them, chosen by
/// `seed`, is held out (at least 1 when `fraction > 0` and there are 2+
/// chats; never all). Both keep the input order.
pub fn split_eval<T: Clone>(items: &[T], fraction: f32, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let n_eval = if fraction <= 0.0 || n < 2 {
        0
    } else {
        ((n as f64 * fraction as f64).round() as usize).clamp(1, n - 1)
    };
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut Rng::new(seed ^ 0xE7A1_5EED));
    let mut held = vec![false; n];
    for &i in &order[..n_eval] {
        held[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (item, h) in items.iter().zip(held) {
        if h {
            eval.push(item.clone());
        } else {
            train.push(item.clone());
        }
    }
    (train, eval)
}

/// Fisher-Yates with kiln's deterministic RNG.
pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The next-token batch of `chats` (assistant tokens are the targets).
pub fn chat_batch(chats: &[&EncodedChat], pad: u32) -> Result<TokenBatch, AlignError> {
    let seqs: Vec<LmSequence<'_>> = chats
        .iter()
        .map(|c| LmSequence {
            ids: &c.ids,
            learn: &c.assistant_mask,
        })
        .collect();
    TokenBatch::next_token(&seqs, pad).map_err(AlignError::Input)
}

/// The chats of `chats` packed first-fit into rows of at most `t_max`
/// positions (see [`PackedBatch::next_token`]).
pub fn packed_chat_batch(
    chats: &[&EncodedChat],
    t_max: usize,
    pad: u32,
) -> Result<PackedBatch, AlignError> {
    let seqs: Vec<LmSequence<'_>> = chats
        .iter()
        .map(|c| LmSequence {
            ids: &c.ids,
            learn: &c.assistant_mask,
        })
        .collect();
    PackedBatch::next_token(&seqs, t_max, pad).map_err(AlignError::Input)
}

/// One SFT micro-batch: one chat per row, or packed rows with the
/// positions and segments that keep their chats apart.
#[derive(Debug, Clone)]
pub struct SftBatch {
    pub batch: TokenBatch,
    pub packing: Option<Packing>,
}

impl From<TokenBatch> for SftBatch {
    fn from(batch: TokenBatch) -> Self {
        SftBatch {
            batch,
            packing: None,
        }
    }
}

impl From<PackedBatch> for SftBatch {
    fn from(p: PackedBatch) -> Self {
        SftBatch {
            batch: p.batch,
            packing: Some(p.packing),
        }
    }
}

impl SftBatch {
    /// The micro-batch of `chats`, packed into rows of `t_max` positions
    /// when `packing`.
    pub fn of_chats(
        chats: &[&EncodedChat],
        packing: bool,
        t_max: usize,
        pad: u32,
    ) -> Result<SftBatch, AlignError> {
        Ok(if packing {
            packed_chat_batch(chats, t_max, pad)?.into()
        } else {
            chat_batch(chats, pad)?.into()
        })
    }

    /// Per-position losses of the batch (the model keeps the activations
    /// for a backward).
    fn token_losses(
        &self,
        be: &mut BackendBox,
        policy: &mut Policy,
    ) -> Result<Vec<f32>, AlignError> {
        let b = &self.batch;
        Ok(match &self.packing {
            None => policy
                .model
                .forward_token_losses(be, &b.tokens, &b.targets, b.b, b.t)?,
            Some(p) => policy
                .model
                .forward_token_losses_packed(be, &b.tokens, &b.targets, p, b.b, b.t)?,
        })
    }
}

/// Mean loss per assistant token over `chats` (nats), in batches of
/// `batch_size`; None when there is no chat.
pub fn eval_loss(
    be: &mut BackendBox,
    policy: &mut Policy,
    chats: &[EncodedChat],
    batch_size: usize,
) -> Result<Option<f32>, AlignError> {
    eval_loss_across(be, policy, chats, batch_size, &mut Replicas::single())
}

/// [`eval_loss`] with the chats shared among data-parallel ranks: each
/// scores its part, and the sums and counts are added up.
fn eval_loss_across(
    be: &mut BackendBox,
    policy: &mut Policy,
    chats: &[EncodedChat],
    batch_size: usize,
    replicas: &mut Replicas,
) -> Result<Option<f32>, AlignError> {
    let (mut sum, mut count) = (0f64, 0usize);
    let refs: Vec<&EncodedChat> = replicas.part(chats).iter().collect();
    for group in refs.chunks(batch_size.max(1)) {
        let batch = chat_batch(group, policy.pad_id())?;
        let losses = policy.model.forward_token_losses(
            be,
            &batch.tokens,
            &batch.targets,
            batch.b,
            batch.t,
        )?;
        for (i, &l) in losses.iter().enumerate() {
            if batch.is_counted(i) {
                sum += l as f64;
                count += 1;
            }
        }
    }
    let mut totals = [sum, count as f64];
    replicas.sum(&mut totals)?;
    Ok((totals[1] > 0.0).then(|| (totals[0] / totals[1]) as f32))
}

/// The SFT loss of one optimizer step over `batches` (mean over all their
/// counted targets) and `grads += loss_scale * ∂loss/∂θ` (`loss_scale` is 1
/// but in f16). Returns (loss, counted).
pub fn accumulate_grads(
    be: &mut BackendBox,
    policy: &mut Policy,
    batches: &[SftBatch],
    loss_scale: f32,
) -> Result<(f32, usize), AlignError> {
    let counted: usize = batches.iter().map(|b| b.batch.counted()).sum();
    if counted == 0 {
        return Ok((0.0, 0));
    }
    let loss_sum = accumulate_weighted(be, policy, batches, loss_scale / counted as f32)?;
    Ok(((loss_sum / counted as f64) as f32, counted))
}

/// `grads += w * ∂(Σ counted losses)/∂θ` over `batches`; returns the sum of
/// their counted losses. `w` is `loss_scale` over the step's counted
/// targets (all ranks' under data parallelism).
fn accumulate_weighted(
    be: &mut BackendBox,
    policy: &mut Policy,
    batches: &[SftBatch],
    w: f32,
) -> Result<f64, AlignError> {
    let mut loss_sum = 0f64;
    for sft_batch in batches {
        let losses = sft_batch.token_losses(be, policy)?;
        let batch = &sft_batch.batch;
        let mut weights = vec![0f32; losses.len()];
        for (i, (&l, wi)) in losses.iter().zip(&mut weights).enumerate() {
            if batch.is_counted(i) {
                loss_sum += l as f64;
                *wi = w;
            }
        }
        policy.model.backward_weighted(be, &weights)?;
    }
    Ok(loss_sum)
}

/// Fine-tunes `policy` on `train`, evaluating on `eval`; records go to
/// `metrics` (when given) and `progress`.
pub fn train_sft(
    be: &mut BackendBox,
    policy: &mut Policy,
    train: &[EncodedChat],
    eval: &[EncodedChat],
    config: &SftConfig,
    metrics: Option<&mut MetricsLog>,
    progress: &Progress,
) -> Result<SftSummary, AlignError> {
    let single = Replicas::single();
    train_sft_across(be, policy, train, eval, config, metrics, progress, single)
}

/// [`train_sft`] as one rank of a data-parallel group: `config.batch_size`
/// is per rank, so a step takes `world` times [`SftConfig::chats_per_step`]
/// chats (the same shuffled order on every rank; each takes its part).
/// Every rank returns the same summary; give `metrics` to rank 0 only.
#[allow(clippy::too_many_arguments)]
pub fn train_sft_across(
    be: &mut BackendBox,
    policy: &mut Policy,
    train: &[EncodedChat],
    eval: &[EncodedChat],
    config: &SftConfig,
    mut metrics: Option<&mut MetricsLog>,
    progress: &Progress,
    replicas: Replicas,
) -> Result<SftSummary, AlignError> {
    config.validate()?;
    if train.is_empty() {
        return Err(AlignError::Config("no training chats".into()));
    }
    let max_len = policy.max_seq_len() + 1;
    if let Some((i, c)) = train
        .iter()
        .chain(eval)
        .enumerate()
        .find(|(_, c)| c.ids.len() > max_len)
    {
        // data::encode_chats refuses these with file:line; this guards
        // library callers.
        return Err(AlignError::Input(format!(
            "chat {i} has {} tokens; the model's context is {} (kiln never truncates)",
            c.ids.len(),
            policy.max_seq_len()
        )));
    }
    let per_step = config.chats_per_step() * replicas.world();
    let steps_per_epoch = train.len().div_ceil(per_step) as u64;
    let mut total = steps_per_epoch * config.epochs as u64;
    if config.max_steps > 0 {
        total = total.min(config.max_steps);
    }
    crate::precision::apply_precision(be, &mut policy.model, &config.precision)?;
    let mut opt = AlignOptimizer::new(be, policy.param_refs(), &config.optim(), total)?
        .guard_divergence()
        .scale_losses_for(policy.model.precision())
        .with_replicas(replicas);
    let log = |r: &Record, metrics: &mut Option<&mut MetricsLog>| -> Result<(), AlignError> {
        if let Some(m) = metrics.as_deref_mut() {
            m.append(r).map_err(|e| AlignError::io(m.path(), e))?;
        }
        progress.record(r);
        Ok(())
    };

    let eval_bs = config.batch_size;
    let eval_loss_before = eval_loss_across(be, policy, eval, eval_bs, opt.replicas())?;
    if let Some(l) = eval_loss_before {
        log(&Record::new(0, EVAL).with("loss", l as f64), &mut metrics)?;
    }

    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut summary = SftSummary {
        steps: 0,
        train_chats: train.len(),
        eval_chats: eval.len(),
        first_loss: f32::NAN,
        last_loss: f32::NAN,
        eval_loss_before,
        eval_loss: eval_loss_before,
        trained_tokens: 0,
        tokens_per_s: 0.0,
        skipped_steps: 0,
        seconds: 0.0,
        packing: config.packing,
        rows: 0,
        packing_efficiency: 0.0,
    };
    let t_max = policy.max_seq_len();
    let mut cells = 0u64;
    let started = std::time::Instant::now();
    let mut train_secs = 0f64;
    let mut positions = 0u64;
    'epochs: for epoch in 0..config.epochs {
        shuffle(&mut order, &mut rng);
        for (k, step_chats) in order.chunks(per_step).enumerate() {
            if opt.steps() >= total {
                break 'epochs;
            }
            let t0 = std::time::Instant::now();
            let mine = opt.replicas().part(step_chats);
            let chats: Vec<&EncodedChat> = mine.iter().map(|&i| &train[i]).collect();
            let batches: Vec<SftBatch> = chats
                .chunks(config.batch_size)
                .map(|g| SftBatch::of_chats(g, config.packing, t_max, policy.pad_id()))
                .collect::<Result<_, _>>()?;
            // The step's counted targets over all ranks weight every gradient.
            let mut counted = [batches.iter().map(|b| b.batch.counted()).sum::<usize>() as f64];
            opt.replicas().sum(&mut counted)?;
            let counted = counted[0] as usize;
            opt.zero_grad(be)?;
            let w = opt.loss_scale() / counted.max(1) as f32;
            let mut sums = [
                accumulate_weighted(be, policy, &batches, w)?,
                batches.iter().map(|b| b.batch.real_tokens()).sum::<usize>() as f64,
                batches.iter().map(|b| b.batch.b).sum::<usize>() as f64,
                batches.iter().map(|b| b.batch.b * b.batch.t).sum::<usize>() as f64,
            ];
            opt.replicas().sum(&mut sums)?;
            let loss = (sums[0] / counted.max(1) as f64) as f32;
            let [real, rows, step_cells] = [sums[1], sums[2], sums[3]].map(|x| x as usize);
            summary.rows += rows as u64;
            cells += step_cells as u64;
            let out = opt.step(be, loss)?;
            let secs = t0.elapsed().as_secs_f64();
            train_secs += secs;
            positions += real as u64;
            let step = opt.steps();
            if let Some(w) = out.overflow_warning("sft", step) {
                summary.skipped_steps += 1;
                progress.line(&w);
            }
            if let Some(n) = out.skipped {
                summary.skipped_steps += 1;
                progress.line(&format!(
                    "warning: sft step {step}: non-finite or diverging loss {loss} or grad norm {}; update \
                     skipped ({n} in a row, stopping at {})",
                    out.grad_norm, config.max_bad_steps
                ));
            }
            if step == 1 {
                summary.first_loss = loss;
            }
            summary.last_loss = loss;
            summary.trained_tokens += counted as u64;
            let rec = Record::new(step, TRAIN)
                .with("loss", loss as f64)
                .with("lr", out.lr as f64)
                .with("grad_norm", out.grad_norm as f64)
                .with_optional("loss_scale", out.loss_scale.map(f64::from))
                .with("tokens", counted as f64)
                .with("tokens_per_s", real as f64 / secs.max(1e-9))
                .with("rows", rows as f64)
                .with("efficiency", real as f64 / step_cells.max(1) as f64)
                .with(
                    "epoch",
                    epoch as f64 + (k + 1) as f64 / steps_per_epoch as f64,
                )
                .with("elapsed_s", started.elapsed().as_secs_f64());
            log(&rec, &mut metrics)?;
            let end_of_epoch = (k + 1) as u64 == steps_per_epoch;
            let due = if config.eval_every > 0 {
                step.is_multiple_of(config.eval_every)
            } else {
                end_of_epoch
            };
            if !eval.is_empty() && (due || step == total) {
                let l = eval_loss_across(be, policy, eval, eval_bs, opt.replicas())?;
                summary.eval_loss = l;
                if let Some(l) = l {
                    log(
                        &Record::new(step, EVAL).with("loss", l as f64),
                        &mut metrics,
                    )?;
                }
            }
        }
    }
    summary.steps = opt.steps();
    summary.tokens_per_s = positions as f64 / train_secs.max(1e-9);
    summary.packing_efficiency = positions as f64 / cells.max(1) as f64;
    summary.seconds = started.elapsed().as_secs_f64();
    opt.release(be)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::IGNORE;
    use crate::testutil::{close, tiny_policy};
    use kiln_model::SampleOptions;
    use kiln_tokenizer::Message;

    fn chats(policy: &Policy) -> Vec<EncodedChat> {
        let convs = [
            ("What is the capital of France?", "Paris is the capital."),
            ("Name a red fruit.", "An apple."),
            ("How many legs does a cat have?", "A cat has four legs."),
            ("Say hello.", "Hello there, friend!"),
        ];
        convs
            .iter()
            .map(|(q, a)| {
                policy
                    .template
                    .encode(
                        &policy.tokenizer,
                        &[
                            Message::system("Be brief."),
                            Message::user(*q),
                            Message::assistant(*a),
                        ],
                    )
                    .unwrap()
            })
            .collect()
    }

    fn grads_of(be: &mut BackendBox, p: &mut Policy, batches: &[TokenBatch]) -> (f32, Vec<f32>) {
        let batches: Vec<SftBatch> = batches.iter().cloned().map(SftBatch::from).collect();
        p.model.zero_grad(be).unwrap();
        let (loss, _) = accumulate_grads(be, p, &batches, 1.0).unwrap();
        (loss, p.model.read_grads(be).unwrap().concat())
    }

    /// `batch` with `extra` more padding columns holding `pad`.
    fn widen(batch: &TokenBatch, extra: usize, pad: u32) -> TokenBatch {
        let t = batch.t + extra;
        let mut out = TokenBatch {
            b: batch.b,
            t,
            tokens: vec![pad; batch.b * t],
            targets: vec![IGNORE; batch.b * t],
            lengths: batch.lengths.clone(),
        };
        for r in 0..batch.b {
            for i in 0..batch.lengths[r] {
                out.tokens[r * t + i] = batch.tokens[r * batch.t + i];
                out.targets[r * t + i] = batch.targets[r * batch.t + i];
            }
        }
        out
    }

    #[test]
    fn only_assistant_tokens_and_their_end_are_targets() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let p = tiny_policy(&mut be, 1, 64);
        let cs = chats(&p);
        let refs: Vec<&EncodedChat> = cs.iter().collect();
        let batch = chat_batch(&refs, p.pad_id()).unwrap();
        for (r, c) in cs.iter().enumerate() {
            for i in 1..c.ids.len() {
                let want = if c.assistant_mask[i] {
                    c.ids[i]
                } else {
                    IGNORE
                };
                assert_eq!(batch.targets[r * batch.t + i - 1], want, "chat {r} pos {i}");
            }
            // the last target is the <|end|> closing the reply
            assert_eq!(
                batch.targets[r * batch.t + c.ids.len() - 2],
                p.template.end_id()
            );
        }
        let assistant: usize = cs.iter().map(|c| c.assistant_tokens()).sum();
        assert_eq!(batch.counted(), assistant);
        drop(p);
    }

    #[test]
    fn loss_and_grads_ignore_prompt_targets_and_padding() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut p = tiny_policy(&mut be, 7, 64);
        let cs = chats(&p);
        let refs: Vec<&EncodedChat> = cs.iter().collect();
        let batch = chat_batch(&refs, p.pad_id()).unwrap();
        let (loss, grads) = grads_of(&mut be, &mut p, std::slice::from_ref(&batch));

        // Every position with its real next token as target: the masked loss
        // is the mean over assistant positions only.
        let mut full = batch.clone();
        for (r, c) in cs.iter().enumerate() {
            for i in 1..c.ids.len() {
                full.targets[r * full.t + i - 1] = c.ids[i];
            }
        }
        let all = p
            .model
            .forward_token_losses(&mut be, &full.tokens, &full.targets, full.b, full.t)
            .unwrap();
        let (mut s, mut n) = (0f64, 0usize);
        for (i, &l) in all.iter().enumerate() {
            if batch.is_counted(i) {
                s += l as f64;
                n += 1;
            }
        }
        assert!(
            (loss as f64 - s / n as f64).abs() < 1e-5,
            "{loss} vs {}",
            s / n as f64
        );
        // Prompt positions WITH real targets but weight 0: same gradient.
        p.model.zero_grad(&mut be).unwrap();
        let w: Vec<f32> = (0..all.len())
            .map(|i| {
                if batch.is_counted(i) {
                    1.0 / n as f32
                } else {
                    0.0
                }
            })
            .collect();
        p.model.backward_weighted(&mut be, &w).unwrap();
        let g2 = p.model.read_grads(&mut be).unwrap().concat();
        close(&grads, &g2, 1e-5).unwrap();
        // ...whereas learning the prompt too gives another loss and gradient.
        let (full_loss, full_grads) = grads_of(&mut be, &mut p, std::slice::from_ref(&full));
        assert!((full_loss - loss).abs() > 1e-3);
        assert!(close(&grads, &full_grads, 1e-3).is_err());

        // Other pad id and 5 more padding columns: nothing changes.
        let padded = widen(&batch, 5, 3);
        let (loss_p, grads_p) = grads_of(&mut be, &mut p, &[padded]);
        assert!((loss_p - loss).abs() < 1e-6, "{loss_p} vs {loss}");
        close(&grads, &grads_p, 1e-5).unwrap();
        // Two micro-batches give the mean over all their tokens (not a mean of means).
        let halves = [
            chat_batch(&refs[..1], p.pad_id()).unwrap(),
            chat_batch(&refs[1..], p.pad_id()).unwrap(),
        ];
        let (loss_h, grads_h) = grads_of(&mut be, &mut p, &halves);
        assert!((loss_h - loss).abs() < 1e-5);
        close(&grads, &grads_h, 1e-5).unwrap();
    }

    #[test]
    fn overfits_a_few_chats_and_greedy_generation_reproduces_an_answer() {
        let mut be = kiln_tensor::cpu_backend(Some(2));
        let mut p = tiny_policy(&mut be, 3, 64);
        let cs = chats(&p);
        let config = SftConfig {
            epochs: 150,
            batch_size: 4,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 5,
            eval_fraction: 0.0,
            ..SftConfig::default()
        };
        let progress = Progress::hidden("sft", 150);
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::create(&dir.path().join("metrics.jsonl")).unwrap();
        let s = train_sft(
            &mut be,
            &mut p,
            &cs,
            &[],
            &config,
            Some(&mut log),
            &progress,
        )
        .unwrap();
        assert_eq!(s.steps, 150);
        assert!(s.first_loss > 3.0, "{}", s.first_loss);
        assert!(
            s.last_loss < 0.1 * s.first_loss,
            "{} -> {}",
            s.first_loss,
            s.last_loss
        );
        let records = crate::metrics::read_metrics(log.path()).unwrap();
        assert_eq!(records.len(), 150);
        assert!(records.iter().all(|r| r.get("grad_norm").is_some()));

        let prompt = p
            .template
            .encode_prompt(
                &p.tokenizer,
                &[
                    Message::system("Be brief."),
                    Message::user("Name a red fruit."),
                ],
            )
            .unwrap();
        let opts = SampleOptions {
            max_new_tokens: 20,
            temperature: 0.0,
            ..SampleOptions::default()
        };
        let out = p.generate(&mut be, &prompt, &opts).unwrap();
        let (text, ended) = p.template.decode_reply(&p.tokenizer, &out);
        assert_eq!(text, "An apple.");
        assert!(ended, "the reply must end with <|end|>");
    }

    #[test]
    fn packing_gives_the_same_loss_gradients_and_step_with_fewer_rows() {
        let mut be = kiln_tensor::cpu_backend(Some(2));
        let t_max = 128;
        let mut p = tiny_policy(&mut be, 11, t_max);
        // Three copies of the chats: enough to fill packed rows.
        let cs: Vec<EncodedChat> = (0..3).flat_map(|_| chats(&p)).collect();
        let refs: Vec<&EncodedChat> = cs.iter().collect();
        let pad = p.pad_id();
        let plain = SftBatch::of_chats(&refs, false, t_max, pad).unwrap();
        let packed = SftBatch::of_chats(&refs, true, t_max, pad).unwrap();
        assert_eq!(plain.batch.b, cs.len());
        assert!(packed.batch.b < plain.batch.b, "{} rows", packed.batch.b);
        assert!(packed.batch.t <= t_max);
        assert_eq!(packed.batch.counted(), plain.batch.counted());
        assert_eq!(packed.batch.real_tokens(), plain.batch.real_tokens());

        let grads = |be: &mut BackendBox, p: &mut Policy, b: &SftBatch| {
            p.model.zero_grad(be).unwrap();
            let (loss, counted) = accumulate_grads(be, p, std::slice::from_ref(b), 1.0).unwrap();
            (loss, counted, p.model.read_grads(be).unwrap().concat())
        };
        let (loss_a, counted_a, grads_a) = grads(&mut be, &mut p, &plain);
        let (loss_b, counted_b, grads_b) = grads(&mut be, &mut p, &packed);
        assert_eq!(counted_a, counted_b);
        let rel = ((loss_a - loss_b) / loss_a).abs();
        assert!(rel <= 1e-5, "loss {loss_a} vs packed {loss_b}");
        close(&grads_a, &grads_b, 1e-5).unwrap();

        // One optimizer step through train_sft each way, from the same weights.
        let init = p.model.read_params(&mut be).unwrap();
        let progress = Progress::hidden("sft", 1);
        let step = |be: &mut BackendBox, p: &mut Policy, packing: bool| {
            p.model.write_params(be, &init).unwrap();
            let config = SftConfig {
                epochs: 1,
                max_steps: 1,
                batch_size: cs.len(),
                eval_fraction: 0.0,
                packing,
                ..SftConfig::default()
            };
            let s = train_sft(be, p, &cs, &[], &config, None, &progress).unwrap();
            (s, p.model.read_params(be).unwrap())
        };
        let (s_a, w_a) = step(&mut be, &mut p, false);
        let (s_b, w_b) = step(&mut be, &mut p, true);
        assert_eq!((s_a.steps, s_b.steps), (1, 1));
        assert!(((s_a.first_loss - s_b.first_loss) / s_a.first_loss).abs() <= 1e-5);
        assert_eq!(s_a.trained_tokens, s_b.trained_tokens);
        // Compared over all weights at once: a gradient that is 0 in exact
        // arithmetic (the attention key bias: softmax ignores a constant
        // shift) is ~1e-12 rounding noise either way, and Adam scales its
        // update to lr * g / (|g| + eps), so per-tensor that tensor differs.
        close(&w_a.concat(), &w_b.concat(), 1e-5).unwrap();
        assert_ne!(w_a, init, "the step moved the weights");
        // (train_sft shuffles, so its packed rows may differ from `packed`'s.)
        assert_eq!(s_a.rows, cs.len() as u64);
        assert!(s_b.rows < s_a.rows);
        assert!(!s_a.packing && s_b.packing);
        assert!(
            s_b.packing_efficiency > s_a.packing_efficiency && s_b.packing_efficiency <= 1.0,
            "{} vs {}",
            s_b.packing_efficiency,
            s_a.packing_efficiency
        );
        let lens: Vec<usize> = cs.iter().map(|c| c.ids.len()).collect();
        let max_rel = |a: &[f32], b: &[f32]| {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
                / scale
        };
        eprintln!(
            "chat lengths {lens:?}: rows {} -> {}, efficiency {:.3} -> {:.3}; loss {loss_a} vs \
             {loss_b}; max relative diff: grads {:e}, weights after the step {:e}",
            s_a.rows,
            s_b.rows,
            s_a.packing_efficiency,
            s_b.packing_efficiency,
            max_rel(&grads_a, &grads_b),
            max_rel(&w_a.concat(), &w_b.concat())
        );
    }

    #[test]
    fn a_chat_longer_than_the_context_is_still_an_error_with_packing() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut p = tiny_policy(&mut be, 12, 16);
        let cs = chats(&p);
        assert!(cs[0].ids.len() > 17);
        let config = SftConfig {
            packing: true,
            eval_fraction: 0.0,
            ..SftConfig::default()
        };
        let progress = Progress::hidden("sft", 1);
        let e = train_sft(&mut be, &mut p, &cs, &[], &config, None, &progress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("context"), "{e}");
        let refs: Vec<&EncodedChat> = cs.iter().collect();
        let e = packed_chat_batch(&refs, 16, p.pad_id())
            .unwrap_err()
            .to_string();
        assert!(e.contains("rows hold 16"), "{e}");
    }

    #[test]
    fn eval_split_is_deterministic_and_disjoint() {
        let items: Vec<u32> = (0..20).collect();
        let (tr, ev) = split_eval(&items, 0.25, 9);
        assert_eq!(ev.len(), 5);
        assert_eq!(tr.len(), 15);
        let mut all = [tr.clone(), ev.clone()].concat();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(split_eval(&items, 0.25, 9), (tr, ev.clone()));
        assert_ne!(split_eval(&items, 0.25, 10).1, ev);
        assert_eq!(split_eval(&items[..1], 0.5, 1).1.len(), 0);
        assert_eq!(split_eval(&items[..2], 0.01, 1).1.len(), 1);
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let e = serde_json::from_str::<SftConfig>(r#"{"epochs": 2, "learning_rate": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("learning_rate"), "{e}");
        let c: SftConfig = serde_json::from_str(r#"{"epochs": 2}"#).unwrap();
        assert_eq!(c.epochs, 2);
        assert!(
            !c.packing,
            "configs written before packing existed still load"
        );
        let c: SftConfig = serde_json::from_str(r#"{"packing": true}"#).unwrap();
        assert!(c.packing);
        assert_eq!(c.batch_size, SftConfig::default().batch_size);
        assert!(SftConfig {
            batch_size: 0,
            ..SftConfig::default()
        }
        .validate()
        .is_err());
    }
}
