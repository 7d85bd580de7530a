//! Reward model: the pretrained / SFT transformer plus a scalar head
//! (`r = h · w + b` on the final hidden state `h`), read at each sequence's
//! LAST real token (the `<|end|>` closing the reply), as TRL's
//! `AutoModelForSequenceClassification` does. Trained with Bradley-Terry
//! ([`crate::loss::reward`]); [`RewardModel::values`] reads the head at every
//! position, which makes a reward model the initial value model of PPO.
//!
//! The head lives in backend buffers (value + grad) so the same AdamW that
//! trains the transformer trains it; its forward and backward are a few
//! host dot products over the hidden states the model hands out.
//!
//! On disk: a [`Policy`] directory in the layout transformers'
//! `GPT2ForSequenceClassification` (`AutoModelForSequenceClassification`,
//! TRL's reward models) loads: `score.weight [1, n_embd]` beside the
//! transformer in `model.safetensors`, `num_labels` 1, and `pad_token_id`
//! `<|endoftext|>` (never inside a chat), so its pooling of the last non-pad
//! token reads the `<|end|>` kiln reads. That layout has no bias: saving
//! folds kiln's `b` into `ln_f.bias` (`β += b·w/|w|²`, which adds exactly
//! `b` to `w·h` and changes no score). Directories of older kiln versions
//! (`score_head.safetensors` with `score.weight` and `score.bias` beside a
//! causal-LM checkpoint) still load.

use std::path::Path;

use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult};
use kiln_model::{Gpt, Rng};
use kiln_optim::ParamRef;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::batch::TokenBatch;
use crate::data::EncodedPair;
use crate::loss::reward::bradley_terry;
use crate::metrics::{MetricsLog, Progress, Record, EVAL, TRAIN};
use crate::optim::{AlignOptimizer, OptimConfig};
use crate::policy::{save_dir_with, Policy};
use crate::replicas::Replicas;
use crate::AlignError;

/// The head file of reward models written before the sequence-classifier
/// layout; still read.
pub const SCORE_HEAD_FILE: &str = "score_head.safetensors";
const WEIGHT_NAME: &str = "score.weight";
const BIAS_NAME: &str = "score.bias";
/// transformers' class for a GPT-2 with a `score` head.
pub const SEQUENCE_CLASSIFIER: &str = "GPT2ForSequenceClassification";
const LN_F_BIAS: &str = "transformer.ln_f.bias";

/// What the last forward read, kept for the head's backward.
struct LastRead {
    /// Final hidden states `[b*t, C]`.
    hidden: Vec<f32>,
    /// Flat positions whose head output was returned, in order.
    positions: Vec<usize>,
    rows: usize,
}

pub struct RewardModel {
    /// Transformer, tokenizer and chat template.
    pub lm: Policy,
    head_w: ParamRef,
    head_b: ParamRef,
    last: Option<LastRead>,
}

impl RewardModel {
    /// A fresh head on `lm` (weight N(0, 1/(C+1)) from `seed`, bias 0).
    pub fn from_policy(be: &mut BackendBox, lm: Policy, seed: u64) -> Result<Self, AlignError> {
        let c = lm.model.config.n_embd;
        let mut rng = Rng::new(seed);
        let std = 1.0 / ((c + 1) as f32).sqrt();
        let w: Vec<f32> = (0..c).map(|_| rng.normal() * std).collect();
        Self::with_head(be, lm, &w, 0.0)
    }

    fn with_head(be: &mut BackendBox, lm: Policy, w: &[f32], b: f32) -> Result<Self, AlignError> {
        let head_w = new_param(be, w, true)?;
        let head_b = new_param(be, &[b], false)?;
        Ok(RewardModel {
            lm,
            head_w,
            head_b,
            last: None,
        })
    }

    /// Whether `dir` holds a reward model written by [`RewardModel::save`]
    /// (config.json names the sequence classifier, or an older kiln's
    /// `score_head.safetensors` is there) rather than a plain policy.
    pub fn is_saved_in(dir: &Path) -> bool {
        if dir.join(SCORE_HEAD_FILE).is_file() {
            return true;
        }
        std::fs::read(dir.join(kiln_model::CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("architectures").cloned())
            .and_then(|a| a.as_array().cloned())
            .is_some_and(|a| {
                a.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|s| s.ends_with("ForSequenceClassification"))
                })
            })
    }

    /// Loads a directory written by [`RewardModel::save`] (or an older
    /// kiln's, with `score_head.safetensors`). `tokenizer` overrides
    /// `dir/tokenizer.json`.
    pub fn load(
        be: &mut BackendBox,
        dir: &Path,
        tokenizer: Option<&Path>,
    ) -> Result<Self, AlignError> {
        let old = dir.join(SCORE_HEAD_FILE);
        if old.is_file() {
            let bytes = std::fs::read(&old).map_err(|e| AlignError::io(&old, e))?;
            let lm = Policy::load(be, dir, tokenizer)?;
            let c = lm.model.config.n_embd;
            let (w, b) = parse_head(&bytes, c).map_err(|p| AlignError::format(&old, p))?;
            return Self::with_head(be, lm, &w, b);
        }
        let tok = crate::policy::load_tokenizer(dir, tokenizer)?;
        let template = kiln_tokenizer::ChatTemplate::for_model_dir(dir, &tok)?;
        let loaded = Gpt::load_pretrained_with(be, dir, &[WEIGHT_NAME, BIAS_NAME])?;
        let weights = dir.join(kiln_model::WEIGHTS_FILE);
        let c = loaded.model.config.n_embd;
        let Some((shape, w)) = loaded.tensors.get(WEIGHT_NAME) else {
            return Err(AlignError::format(
                &weights,
                format!(
                    "no {WEIGHT_NAME} tensor: this is not a reward-model directory (kiln reward \
                     writes one, in the {SEQUENCE_CLASSIFIER} layout)"
                ),
            ));
        };
        if shape != &[1, c] {
            return Err(AlignError::format(
                &weights,
                format!(
                    "{WEIGHT_NAME} has shape {shape:?}; a reward model scores with one label: [1, {c}]"
                ),
            ));
        }
        let b = match loaded.tensors.get(BIAS_NAME) {
            None => 0.0,
            Some((shape, b)) if shape == &[1] => b[0],
            Some((shape, _)) => {
                return Err(AlignError::format(
                    &weights,
                    format!("{BIAS_NAME} has shape {shape:?}, expected [1]"),
                ))
            }
        };
        let w = w.clone();
        let lm = Policy::from_loaded(loaded.model, tok, template, loaded.special)?;
        Self::with_head(be, lm, &w, b)
    }

    /// Writes `dir` (atomic swap) as a `GPT2ForSequenceClassification`
    /// directory with the policy's tokenizer files. A Llama-family model is
    /// written as its family's `*ForSequenceClassification`; RMSNorm has no
    /// bias to fold the head's bias into, so it is kept as `score.bias`,
    /// which kiln reads back and transformers ignores (its scores are then
    /// kiln's minus that constant: the same rankings and preferences).
    pub fn save(&self, be: &mut BackendBox, dir: &Path) -> Result<(), AlignError> {
        let (w, b) = self.head(be)?;
        let mut extras = self.lm.hf_extras();
        let family = self.lm.model.config.llama.as_ref().map(|l| l.family);
        extras.architecture = Some(match family {
            None => SEQUENCE_CLASSIFIER.into(),
            Some(f) => f.sequence_classifier().into(),
        });
        for (key, v) in [
            ("num_labels", serde_json::json!(1)),
            ("id2label", serde_json::json!({"0": "LABEL_0"})),
            ("label2id", serde_json::json!({"LABEL_0": 0})),
        ] {
            extras.config.insert(key.into(), v);
        }
        extras
            .tensors
            .push((WEIGHT_NAME.into(), vec![1, w.len()], w.clone()));
        if b != 0.0 && family.is_some() {
            extras.tensors.push((BIAS_NAME.into(), vec![1], vec![b]));
        } else if b != 0.0 {
            let beta = self
                .lm
                .model
                .params()
                .iter()
                .find(|p| p.name == LN_F_BIAS)
                .map(|p| p.value)
                .ok_or_else(|| AlignError::format(dir, "the model has no ln_f.bias"))?;
            let beta = be.download_f32(beta)?;
            let folded = fold_bias(&beta, &w, b).map_err(|p| AlignError::format(dir, p))?;
            extras.param_overrides.push((LN_F_BIAS.into(), folded));
        }
        save_dir_with(dir, |tmp| self.lm.write_into(be, tmp, &extras))
    }

    /// Transformer parameters followed by the head's weight and bias.
    pub fn param_refs(&self) -> Vec<ParamRef> {
        let mut refs = self.lm.param_refs();
        refs.push(self.head_w);
        refs.push(self.head_b);
        refs
    }

    /// The head's weight and bias, copied to the host.
    pub fn head(&self, be: &mut BackendBox) -> Result<(Vec<f32>, f32), AlignError> {
        let w = be.download_f32(self.head_w.value)?;
        let b = be.download_f32(self.head_b.value)?;
        Ok((w, b[0]))
    }

    /// Reward of each row of `batch` read at its last real token, `[b]`.
    /// Any layout works; use [`TokenBatch::whole`] for complete sequences.
    pub fn scores(
        &mut self,
        be: &mut BackendBox,
        batch: &TokenBatch,
    ) -> Result<Vec<f32>, AlignError> {
        let positions = batch.last_positions();
        self.read(be, batch, positions)
    }

    /// Head output at every position, `[b*t]` (padding positions too: mask
    /// them). On the next-token layout of PPO, position `i` is the value of
    /// the state before token `i+1`.
    pub fn values(
        &mut self,
        be: &mut BackendBox,
        batch: &TokenBatch,
    ) -> Result<Vec<f32>, AlignError> {
        let positions = (0..batch.b * batch.t).collect();
        self.read(be, batch, positions)
    }

    /// `grads += Σ_k d[k] · ∂out_k/∂θ` for the outputs of the last
    /// [`RewardModel::scores`] / [`RewardModel::values`] call (head and
    /// transformer).
    pub fn backward(&mut self, be: &mut BackendBox, d: &[f32]) -> Result<(), AlignError> {
        let last = self.last.take().ok_or_else(|| {
            AlignError::Input("reward backward needs a scores() or values() call first".into())
        })?;
        if d.len() != last.positions.len() {
            return Err(AlignError::Input(format!(
                "reward backward: {} gradients for {} outputs",
                d.len(),
                last.positions.len()
            )));
        }
        let c = self.lm.model.config.n_embd;
        let (w, _) = self.head(be)?;
        let mut dhidden = vec![0f32; last.rows * c];
        let mut dw = vec![0f64; c];
        let mut db = 0f64;
        for (&pos, &g) in last.positions.iter().zip(d) {
            if g == 0.0 {
                continue;
            }
            let h = &last.hidden[pos * c..(pos + 1) * c];
            let dh = &mut dhidden[pos * c..(pos + 1) * c];
            for ((dhj, dwj), (&wj, &hj)) in dh.iter_mut().zip(&mut dw).zip(w.iter().zip(h)) {
                *dhj += g * wj;
                *dwj += g as f64 * hj as f64;
            }
            db += g as f64;
        }
        add_to_grad(be, self.head_w.grad, &dw)?;
        add_to_grad(be, self.head_b.grad, &[db])?;
        self.lm.model.backward_hidden(be, &dhidden)?;
        Ok(())
    }

    /// Rewards of the chosen and rejected replies of `pairs` in one batch
    /// (rows: all chosen, then all rejected). Follow with
    /// [`RewardModel::backward`] on `[d_chosen ++ d_rejected]`.
    pub fn score_pairs(
        &mut self,
        be: &mut BackendBox,
        pairs: &[&EncodedPair],
    ) -> Result<(Vec<f32>, Vec<f32>), AlignError> {
        let seqs: Vec<Vec<u32>> = pairs
            .iter()
            .map(|p| [p.prompt.as_slice(), &p.chosen].concat())
            .chain(
                pairs
                    .iter()
                    .map(|p| [p.prompt.as_slice(), &p.rejected].concat()),
            )
            .collect();
        let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let batch = TokenBatch::whole(&views, self.lm.pad_id()).map_err(AlignError::Input)?;
        let mut r = self.scores(be, &batch)?;
        let rejected = r.split_off(pairs.len());
        Ok((r, rejected))
    }

    fn read(
        &mut self,
        be: &mut BackendBox,
        batch: &TokenBatch,
        positions: Vec<usize>,
    ) -> Result<Vec<f32>, AlignError> {
        self.last = None;
        let c = self.lm.model.config.n_embd;
        let hidden = self
            .lm
            .model
            .forward_hidden(be, &batch.tokens, batch.b, batch.t)?;
        let (w, b) = self.head(be)?;
        let out = positions
            .iter()
            .map(|&pos| {
                let h = &hidden[pos * c..(pos + 1) * c];
                let dot: f64 = h.iter().zip(&w).map(|(&x, &y)| x as f64 * y as f64).sum();
                (dot + b as f64) as f32
            })
            .collect();
        self.last = Some(LastRead {
            hidden,
            positions,
            rows: batch.b * batch.t,
        });
        Ok(out)
    }

    /// Frees the model's and the head's buffers.
    pub fn release(self, be: &mut BackendBox) -> Result<(), AlignError> {
        for p in [self.head_w, self.head_b] {
            be.free(p.value).ok_or_err()?;
            be.free(p.grad).ok_or_err()?;
        }
        self.lm.release(be)
    }

    /// The transformer (e.g. to copy into a value model).
    pub fn model(&self) -> &Gpt {
        &self.lm.model
    }
}

fn new_param(be: &mut BackendBox, values: &[f32], decay: bool) -> Result<ParamRef, AlignError> {
    let value = be.from_f32(values)?;
    let grad = be.alloc_buf(DType::F32, values.len())?;
    Ok(ParamRef {
        value,
        grad,
        value_16: None,
        len: values.len(),
        decay,
    })
}

/// `grad += delta` (backward ops accumulate, and so does the head).
fn add_to_grad(be: &mut BackendBox, grad: BufId, delta: &[f64]) -> Result<(), AlignError> {
    let mut g = be.download_f32(grad)?;
    for (x, &d) in g.iter_mut().zip(delta) {
        *x = (*x as f64 + d) as f32;
    }
    be.upload_f32(grad, &g)?;
    Ok(())
}

/// `β + b·w/|w|²`: the final LayerNorm bias that makes `w·h` grow by
/// exactly `b` (`h = γ⊙n + β`), so a bias-free head scores the same.
fn fold_bias(beta: &[f32], w: &[f32], b: f32) -> Result<Vec<f32>, String> {
    let norm2: f64 = w.iter().map(|&x| x as f64 * x as f64).sum();
    if norm2 == 0.0 {
        return Err(
            "the score head's weight is all zeros, so its bias cannot be \
                    folded into ln_f.bias for the sequence-classifier layout"
                .into(),
        );
    }
    let k = b as f64 / norm2;
    Ok(beta
        .iter()
        .zip(w)
        .map(|(&x, &wj)| (x as f64 + k * wj as f64) as f32)
        .collect())
}

#[cfg(test)]
fn serialize_head(w: &[f32], b: f32) -> Result<Vec<u8>, String> {
    let wb: Vec<u8> = bytemuck_bytes(w);
    let bb: Vec<u8> = bytemuck_bytes(&[b]);
    let views = vec![
        (
            WEIGHT_NAME.to_string(),
            safetensors::tensor::TensorView::new(Dtype::F32, vec![1, w.len()], &wb)
                .map_err(|e| e.to_string())?,
        ),
        (
            BIAS_NAME.to_string(),
            safetensors::tensor::TensorView::new(Dtype::F32, vec![1], &bb)
                .map_err(|e| e.to_string())?,
        ),
    ];
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

fn parse_head(bytes: &[u8], c: usize) -> Result<(Vec<f32>, f32), String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
        let t = st
            .tensor(name)
            .map_err(|_| format!("tensor {name} is missing"))?;
        if t.dtype() != Dtype::F32 {
            return Err(format!("tensor {name} is {:?}, expected F32", t.dtype()));
        }
        if t.shape() != shape {
            return Err(format!(
                "tensor {name} has shape {:?}, the model (n_embd {c}) needs {shape:?}",
                t.shape()
            ));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let w = read(WEIGHT_NAME, &[1, c])?;
    let b = read(BIAS_NAME, &[1])?;
    Ok((w, b[0]))
}

#[cfg(test)]
fn bytemuck_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---- training ----

/// A preference pair with its optional Bradley-Terry margin.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardExample {
    pub pair: EncodedPair,
    /// Required reward gap `m` (TRL's `margin` column); None: 0.
    pub margin: Option<f32>,
}

/// The optional `"margin"` number of each record line `lines` (1-based) of
/// the preference file `path` (TRL's margin column; the pair readers do not
/// keep it). A margin that is not a finite number is an error naming
/// `FILE:LINE`.
pub fn read_margins(path: &Path, lines: &[usize]) -> Result<Vec<Option<f32>>, AlignError> {
    let text = std::fs::read_to_string(path).map_err(|e| AlignError::io(path, e))?;
    let all: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .map(|&n| {
            let bad = |problem: String| {
                AlignError::Data(crate::data::DataError::Line {
                    path: path.to_path_buf(),
                    line: n,
                    problem,
                })
            };
            let line = all
                .get(n.wrapping_sub(1))
                .ok_or_else(|| bad("no such line".into()))?;
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            match v.get("margin") {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(m) => match m.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x as f32)),
                    _ => Err(bad(format!("\"margin\" must be a number, got {m}"))),
                },
            }
        })
        .collect()
}

/// Reward-model settings; the TOML file of `kiln reward --config` has these
/// keys (unknown keys are refused; missing ones take these defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub epochs: u32,
    /// Stop after this many optimizer steps (0: run all epochs).
    pub max_steps: u64,
    /// Pairs per micro-batch (each pair is two rows).
    pub batch_size: usize,
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
    /// Reward centering `c · mean((r⁺ + r⁻)²)` (TRL's
    /// center_rewards_coefficient; 0.01 is the recommended value; 0: off).
    pub center_coef: f32,
    /// Share of the pairs held out for accuracy (0: none).
    pub eval_fraction: f32,
    /// Evaluate every N steps (0: at the end of every epoch).
    pub eval_every: u64,
    /// Shuffling, the eval split and the head's init.
    pub seed: u64,
    /// Batch pairs of similar length (less padding, same pairs per epoch).
    /// Off by default: on the embedded tasks it saved 20% of the time but
    /// cost 1.5 points of held-out accuracy (homogeneous batches).
    pub group_by_length: bool,
    pub log_every: u64,
    pub max_bad_steps: u32,
    /// Precision policy: "f32", "bf16" or "f16" (16-bit weights, activations and
    /// gradients; f32 master weights and AdamW moments; f16 adds a dynamic
    /// loss scale).
    #[serde(skip_serializing_if = "crate::precision::is_f32")]
    pub precision: String,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            precision: crate::precision::default_precision(),
            epochs: 2,
            max_steps: 0,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-4,
            min_lr: 1e-5,
            warmup: 10,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            center_coef: 0.0,
            eval_fraction: 0.1,
            eval_every: 0,
            seed: 1234,
            group_by_length: false,
            log_every: 10,
            max_bad_steps: 5,
        }
    }
}

impl RewardConfig {
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
        if !(self.center_coef.is_finite() && self.center_coef >= 0.0) {
            return Err(AlignError::Config(format!(
                "center_coef must be >= 0, got {}",
                self.center_coef
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

    pub fn pairs_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

/// Held-out figures of a reward model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RewardEval {
    pub loss: f64,
    pub accuracy: f64,
    pub margin: f64,
    pub mean_chosen: f64,
    pub mean_rejected: f64,
}

/// How a reward-model run went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardSummary {
    pub steps: u64,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    pub eval_before: Option<RewardEval>,
    pub eval: Option<RewardEval>,
    pub pairs_per_s: f64,
    pub skipped_steps: u64,
    pub seconds: f64,
}

/// Bradley-Terry loss (with margins, no centering) and accuracy over
/// `pairs`, in batches of `batch_size` pairs; None when there is none.
pub fn evaluate(
    be: &mut BackendBox,
    rm: &mut RewardModel,
    pairs: &[RewardExample],
    batch_size: usize,
) -> Result<Option<RewardEval>, AlignError> {
    evaluate_across(be, rm, pairs, batch_size, &mut Replicas::single())
}

/// [`evaluate`] with the pairs shared among data-parallel ranks: each
/// scores its part; the pair-weighted sums are added up.
fn evaluate_across(
    be: &mut BackendBox,
    rm: &mut RewardModel,
    pairs: &[RewardExample],
    batch_size: usize,
    replicas: &mut Replicas,
) -> Result<Option<RewardEval>, AlignError> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let (mut rc, mut rr, mut m) = (Vec::new(), Vec::new(), Vec::new());
    for group in replicas.part(pairs).chunks(batch_size.max(1)) {
        let refs: Vec<&EncodedPair> = group.iter().map(|e| &e.pair).collect();
        let (c, r) = rm.score_pairs(be, &refs)?;
        rc.extend(c);
        rr.extend(r);
        m.extend(group.iter().map(|e| e.margin.unwrap_or(0.0)));
    }
    rm.last = None;
    // Sums over this rank's pairs (a rank may have none), then over all.
    let mut sums = [0f64; 6];
    if !rc.is_empty() {
        let out = bradley_terry(&rc, &rr, Some(&m), 0.0).map_err(AlignError::Input)?;
        let n = rc.len() as f64;
        sums = [
            out.loss * n,
            out.accuracy * n,
            out.margin * n,
            out.mean_chosen * n,
            out.mean_rejected * n,
            n,
        ];
    }
    replicas.sum(&mut sums)?;
    let n = sums[5];
    Ok(Some(RewardEval {
        loss: sums[0] / n,
        accuracy: sums[1] / n,
        margin: sums[2] / n,
        mean_chosen: sums[3] / n,
        mean_rejected: sums[4] / n,
    }))
}

fn eval_record(step: u64, e: &RewardEval) -> Record {
    Record::new(step, EVAL)
        .with("loss", e.loss)
        .with("accuracy", e.accuracy)
        .with("margin", e.margin)
        .with("rewards/chosen", e.mean_chosen)
        .with("rewards/rejected", e.mean_rejected)
}

/// Trains `rm` (transformer + head) on `train`, measuring held-out accuracy
/// on `eval`.
pub fn train_reward(
    be: &mut BackendBox,
    rm: &mut RewardModel,
    train: &[RewardExample],
    eval: &[RewardExample],
    config: &RewardConfig,
    metrics: Option<&mut MetricsLog>,
    progress: &Progress,
) -> Result<RewardSummary, AlignError> {
    let single = Replicas::single();
    train_reward_across(be, rm, train, eval, config, metrics, progress, single)
}

/// [`train_reward`] as one rank of a data-parallel group: `batch_size` is
/// per rank, so a step takes `world` times [`RewardConfig::pairs_per_step`]
/// pairs (the same order on every rank; each takes its part). Every rank
/// returns the same summary; give `metrics` to rank 0 only.
#[allow(clippy::too_many_arguments)]
pub fn train_reward_across(
    be: &mut BackendBox,
    rm: &mut RewardModel,
    train: &[RewardExample],
    eval: &[RewardExample],
    config: &RewardConfig,
    mut metrics: Option<&mut MetricsLog>,
    progress: &Progress,
    replicas: Replicas,
) -> Result<RewardSummary, AlignError> {
    config.validate()?;
    if train.is_empty() {
        return Err(AlignError::Config("no training pairs".into()));
    }
    let per_step = config.pairs_per_step() * replicas.world();
    let steps_per_epoch = train.len().div_ceil(per_step) as u64;
    let mut total = steps_per_epoch * config.epochs as u64;
    if config.max_steps > 0 {
        total = total.min(config.max_steps);
    }
    crate::precision::apply_precision(be, &mut rm.lm.model, &config.precision)?;
    let mut opt = AlignOptimizer::new(be, rm.param_refs(), &config.optim(), total)?
        .guard_divergence()
        .scale_losses_for(rm.lm.model.precision())
        .with_replicas(replicas);
    let log = |r: &Record, metrics: &mut Option<&mut MetricsLog>| -> Result<(), AlignError> {
        if let Some(m) = metrics.as_deref_mut() {
            m.append(r).map_err(|e| AlignError::io(m.path(), e))?;
        }
        progress.record(r);
        Ok(())
    };
    let eval_before = evaluate_across(be, rm, eval, config.batch_size, opt.replicas())?;
    if let Some(e) = &eval_before {
        log(&eval_record(0, e), &mut metrics)?;
    }
    let mut summary = RewardSummary {
        steps: 0,
        train_pairs: train.len(),
        eval_pairs: eval.len(),
        first_loss: f32::NAN,
        last_loss: f32::NAN,
        eval_before,
        eval: eval_before,
        pairs_per_s: 0.0,
        skipped_steps: 0,
        seconds: 0.0,
    };
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let started = std::time::Instant::now();
    let (mut train_secs, mut pairs_done) = (0f64, 0usize);
    'epochs: for epoch in 0..config.epochs {
        crate::sft::shuffle(&mut order, &mut rng);
        if config.group_by_length {
            // Micro-batches of similar length; steps stay whole micro-batches.
            let lens: Vec<usize> = train.iter().map(|e| e.pair.max_len()).collect();
            crate::batch::group_by_length(&mut order, &lens, config.batch_size, &mut rng);
        }
        for (k, step_ids) in order.chunks(per_step).enumerate() {
            if opt.steps() >= total {
                break 'epochs;
            }
            let t0 = std::time::Instant::now();
            opt.zero_grad(be)?;
            let (mut loss, mut acc, mut margin) = (0f64, 0f64, 0f64);
            // Shares of the whole step (all ranks' pairs), so the ranks' sums
            // add up to the step's means.
            let n_step = step_ids.len() as f64;
            for micro in opt.replicas().part(step_ids).chunks(config.batch_size) {
                let refs: Vec<&EncodedPair> = micro.iter().map(|&i| &train[i].pair).collect();
                let margins: Vec<f32> = micro
                    .iter()
                    .map(|&i| train[i].margin.unwrap_or(0.0))
                    .collect();
                let (rc, rr) = rm.score_pairs(be, &refs)?;
                let out = bradley_terry(&rc, &rr, Some(&margins), config.center_coef)
                    .map_err(AlignError::Input)?;
                // The step's loss is the mean over all its pairs.
                let share = micro.len() as f64 / n_step;
                loss += share * out.loss;
                acc += share * out.accuracy;
                margin += share * out.margin;
                let d: Vec<f32> = out
                    .d_chosen
                    .iter()
                    .chain(&out.d_rejected)
                    .map(|&g| (g as f64 * share * opt.loss_scale() as f64) as f32)
                    .collect();
                rm.backward(be, &d)?;
            }
            let mut sums = [loss, acc, margin];
            opt.replicas().sum(&mut sums)?;
            let [loss, acc, margin] = sums;
            let loss = loss as f32;
            let out = opt.step(be, loss)?;
            let secs = t0.elapsed().as_secs_f64();
            train_secs += secs;
            pairs_done += step_ids.len();
            let step = opt.steps();
            if let Some(w) = out.overflow_warning("reward", step) {
                summary.skipped_steps += 1;
                progress.line(&w);
            }
            if let Some(n) = out.skipped {
                summary.skipped_steps += 1;
                progress.line(&format!(
                    "warning: reward step {step}: non-finite or diverging loss {loss} or grad norm {}; \
                     update skipped ({n} in a row, stopping at {})",
                    out.grad_norm, config.max_bad_steps
                ));
            }
            if step == 1 {
                summary.first_loss = loss;
            }
            summary.last_loss = loss;
            let rec = Record::new(step, TRAIN)
                .with("loss", loss as f64)
                .with("accuracy", acc)
                .with("margin", margin)
                .with("lr", out.lr as f64)
                .with("grad_norm", out.grad_norm as f64)
                .with_optional("loss_scale", out.loss_scale.map(f64::from))
                .with("pairs_per_s", n_step / secs.max(1e-9))
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
                let e = evaluate_across(be, rm, eval, config.batch_size, opt.replicas())?;
                if let Some(e) = &e {
                    log(&eval_record(step, e), &mut metrics)?;
                }
                summary.eval = e;
            }
        }
    }
    summary.steps = opt.steps();
    summary.pairs_per_s = pairs_done as f64 / train_secs.max(1e-9);
    summary.seconds = started.elapsed().as_secs_f64();
    opt.release(be)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tiny_policy;

    fn tiny_rm(be: &mut BackendBox, seed: u64) -> RewardModel {
        let p = tiny_policy(be, seed, 48);
        RewardModel::from_policy(be, p, seed + 100).unwrap()
    }

    fn ids(rm: &RewardModel, text: &str) -> Vec<u32> {
        rm.lm.tokenizer.encode_ordinary(text)
    }

    #[test]
    fn score_is_read_at_the_last_real_token_and_padding_changes_nothing() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut rm = tiny_rm(&mut be, 5);
        let a = ids(&rm, "The sun is bright.");
        let b = ids(&rm, "The rain is cold and bad, and the sun is not.");
        let alone = rm
            .scores(&mut be, &TokenBatch::whole(&[&a], 0).unwrap())
            .unwrap();
        // a padded to b's length with two different pad ids
        for pad in [0, 17] {
            let both = rm
                .scores(&mut be, &TokenBatch::whole(&[&a, &b], pad).unwrap())
                .unwrap();
            assert!(
                (both[0] - alone[0]).abs() < 1e-5,
                "{} vs {}",
                both[0],
                alone[0]
            );
        }
        // it is the head at the last position of the unpadded sequence
        let values = rm
            .values(&mut be, &TokenBatch::whole(&[&a, &b], 0).unwrap())
            .unwrap();
        let t = b.len();
        assert!((values[a.len() - 1] - alone[0]).abs() < 1e-5);
        assert!(
            (values[a.len()] - alone[0]).abs() > 1e-6,
            "a padding position read"
        );
        // and it depends on the last token
        let mut a2 = a.clone();
        *a2.last_mut().unwrap() = b[0];
        let other = rm
            .scores(&mut be, &TokenBatch::whole(&[&a2], 0).unwrap())
            .unwrap();
        assert!((other[0] - alone[0]).abs() > 1e-6);
        assert_eq!(values.len(), 2 * t);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut rm = tiny_rm(&mut be, 11);
        let a = ids(&rm, "An apple is a red fruit.");
        let b = ids(&rm, "Hello.");
        let batch = TokenBatch::whole(&[&a, &b], 0).unwrap();
        // objective: 0.7 r_a - 1.3 r_b
        let d = [0.7f32, -1.3];
        let objective = |rm: &mut RewardModel, be: &mut BackendBox| -> f64 {
            let r = rm.scores(be, &batch).unwrap();
            d[0] as f64 * r[0] as f64 + d[1] as f64 * r[1] as f64
        };
        for p in rm.param_refs() {
            be.zero(p.grad).ok_or_err().unwrap();
        }
        rm.scores(&mut be, &batch).unwrap();
        rm.backward(&mut be, &d).unwrap();
        let refs = rm.param_refs();
        // head weight, head bias, ln_f bias, and one attention weight
        let n = refs.len();
        let lnf_b = n - 3;
        let qkv_w = 4;
        let mut rng = Rng::new(3);
        for &k in &[n - 2, n - 1, lnf_b, qkv_w] {
            let grad = be.download_f32(refs[k].grad).unwrap();
            let value = be.download_f32(refs[k].value).unwrap();
            for _ in 0..3 {
                let j = (rng.next_u64() % value.len() as u64) as usize;
                let h = 1e-2f32;
                let mut v = value.clone();
                v[j] = value[j] + h;
                be.upload_f32(refs[k].value, &v).unwrap();
                let up = objective(&mut rm, &mut be);
                v[j] = value[j] - h;
                be.upload_f32(refs[k].value, &v).unwrap();
                let down = objective(&mut rm, &mut be);
                be.upload_f32(refs[k].value, &value).unwrap();
                let fd = (up - down) / (2.0 * h as f64);
                let tol = 2e-3 + 2e-2 * fd.abs();
                assert!(
                    (fd - grad[j] as f64).abs() < tol,
                    "param {k} elem {j}: fd {fd} vs analytic {}",
                    grad[j]
                );
            }
        }
    }

    /// A Llama-family reward model keeps its head's bias as `score.bias`
    /// under its family's sequence-classifier class, and loads back with
    /// the same scores.
    #[test]
    fn llama_save_load_round_trip_keeps_the_bias() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let tok = crate::testutil::chat_tokenizer();
        let cfg = kiln_model::GptConfig::new_llama(
            kiln_model::LlamaFamily::Qwen2,
            tok.vocab_size(),
            48,
            2,
            4,
            2,
            32,
            40,
            true,
        );
        let model = Gpt::new(&mut be, cfg, 4).unwrap();
        let p = Policy::new(model, tok).unwrap();
        let mut rm = RewardModel::from_policy(&mut be, p, 5).unwrap();
        be.upload_f32(rm.head_b.value, &[0.75]).unwrap();
        let a = ids(&rm, "Paris is the capital.");
        let b = ids(&rm, "No.");
        let batch = TokenBatch::whole(&[&a, &b], 0).unwrap();
        let before = rm.scores(&mut be, &batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm");
        rm.save(&mut be, &path).unwrap();
        assert!(RewardModel::is_saved_in(&path));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"][0], "Qwen2ForSequenceClassification");
        assert_eq!(config["model_type"], "qwen2");
        let mut back = RewardModel::load(&mut be, &path, None).unwrap();
        assert_eq!(back.head(&mut be).unwrap(), rm.head(&mut be).unwrap());
        assert_eq!(back.scores(&mut be, &batch).unwrap(), before);
    }

    #[test]
    fn save_load_round_trip() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut rm = tiny_rm(&mut be, 2);
        // a bias far from 0, so that folding it into ln_f.bias is tested
        be.upload_f32(rm.head_b.value, &[0.75]).unwrap();
        let a = ids(&rm, "Paris is the capital.");
        let b = ids(&rm, "No.");
        let batch = TokenBatch::whole(&[&a, &b], 0).unwrap();
        let before = rm.scores(&mut be, &batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm");
        rm.save(&mut be, &path).unwrap();
        for f in [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert!(path.join(f).is_file(), "{f} missing");
        }
        assert!(!path.join(SCORE_HEAD_FILE).exists());
        assert!(RewardModel::is_saved_in(&path));
        // transformers' sequence-classifier layout: score.weight, no bias
        let bytes = std::fs::read(path.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let c = rm.lm.model.config.n_embd;
        assert_eq!(st.tensor(WEIGHT_NAME).unwrap().shape(), [1, c]);
        assert!(st.tensor(BIAS_NAME).is_err());
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"][0], SEQUENCE_CLASSIFIER);
        assert_eq!(config["num_labels"], 1);
        let eot = rm
            .lm
            .tokenizer
            .special_id(kiln_tokenizer::ENDOFTEXT)
            .unwrap();
        assert_eq!(config["pad_token_id"], eot);

        let mut back = RewardModel::load(&mut be, &path, None).unwrap();
        let (w, bias) = back.head(&mut be).unwrap();
        assert_eq!((w, bias), (rm.head(&mut be).unwrap().0, 0.0));
        let after = back.scores(&mut be, &batch).unwrap();
        for (x, y) in before.iter().zip(&after) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{before:?} vs {after:?}"
            );
        }
        // a policy directory is not a reward model
        let pdir = dir.path().join("policy");
        rm.lm.save(&mut be, &pdir).unwrap();
        assert!(!RewardModel::is_saved_in(&pdir));
        let e = RewardModel::load(&mut be, &pdir, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("score.weight") && e.contains("not a reward-model"),
            "{e}"
        );
        // saving again replaces the directory
        rm.save(&mut be, &path).unwrap();
        assert!(RewardModel::load(&mut be, &path, None).is_ok());
    }

    #[test]
    fn reward_models_of_older_kiln_versions_still_load() {
        // The old layout: a causal-LM directory plus score_head.safetensors.
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut rm = tiny_rm(&mut be, 3);
        be.upload_f32(rm.head_b.value, &[-0.5]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        rm.lm.model.save_pretrained(&mut be, &path).unwrap();
        kiln_tokenizer::formats::hf::save(
            &rm.lm.tokenizer,
            &path.join(crate::policy::TOKENIZER_FILE),
        )
        .unwrap();
        let (w, b) = rm.head(&mut be).unwrap();
        std::fs::write(path.join(SCORE_HEAD_FILE), serialize_head(&w, b).unwrap()).unwrap();
        assert!(RewardModel::is_saved_in(&path));
        let mut back = RewardModel::load(&mut be, &path, None).unwrap();
        assert_eq!(back.head(&mut be).unwrap(), (w, b));
        let a = ids(&rm, "Paris is the capital.");
        let batch = TokenBatch::whole(&[&a], 0).unwrap();
        assert_eq!(
            back.scores(&mut be, &batch).unwrap(),
            rm.scores(&mut be, &batch).unwrap()
        );
    }

    #[test]
    fn folding_the_bias_adds_it_to_every_dot_product() {
        let (beta, w) = ([0.1f32, -0.2, 0.3], [0.5f32, 2.0, -1.0]);
        let folded = fold_bias(&beta, &w, 1.25).unwrap();
        let dot = |v: &[f32]| v.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>();
        assert!((dot(&folded) - (dot(&beta) + 1.25)).abs() < 1e-6);
        assert!(fold_bias(&beta, &[0.0; 3], 1.0).is_err());
    }

    /// Replies made of "good"/"fine" words (chosen) vs "bad"/"cold" words
    /// (rejected) with random filler; held-out pairs use unseen prompts.
    fn separable_pairs(rm: &RewardModel, n: usize, seed: u64) -> Vec<RewardExample> {
        let mut rng = Rng::new(seed);
        let good = ["good", "warm", "bright"];
        let bad = ["bad", "cold", "not"];
        let filler = [
            "the sun", "the rain", "a cat", "an apple", "Paris", "one", "two",
        ];
        let pick =
            |rng: &mut Rng, xs: &[&'static str]| xs[(rng.next_u64() % xs.len() as u64) as usize];
        let tpl = &rm.lm.template;
        let tok = &rm.lm.tokenizer;
        (0..n)
            .map(|_| {
                let prompt = format!("Say {} things.", pick(&mut rng, &filler));
                let f = pick(&mut rng, &filler);
                let chosen = format!("{f} is {}", pick(&mut rng, &good));
                let rejected = format!("{f} is {}", pick(&mut rng, &bad));
                let p = tpl
                    .encode_prompt(tok, &[kiln_tokenizer::Message::user(prompt)])
                    .unwrap();
                let reply = |s: &str| {
                    let mut v = tok.encode_ordinary(s);
                    v.push(tpl.end_id());
                    v
                };
                RewardExample {
                    pair: EncodedPair {
                        prompt: p,
                        chosen: reply(&chosen),
                        rejected: reply(&rejected),
                    },
                    margin: None,
                }
            })
            .collect()
    }

    #[test]
    fn learns_a_separable_preference_set() {
        let mut be = kiln_tensor::cpu_backend(Some(2));
        let mut rm = tiny_rm(&mut be, 21);
        let train = separable_pairs(&rm, 96, 1);
        let eval = separable_pairs(&rm, 40, 2);
        let config = RewardConfig {
            epochs: 3,
            batch_size: 8,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 4,
            center_coef: 0.01,
            ..RewardConfig::default()
        };
        let progress = Progress::hidden("reward", 36);
        let s = train_reward(&mut be, &mut rm, &train, &eval, &config, None, &progress).unwrap();
        let before = s.eval_before.unwrap();
        let after = s.eval.unwrap();
        assert!(
            after.accuracy >= 0.9,
            "held-out accuracy {}",
            after.accuracy
        );
        assert!(
            after.loss < before.loss,
            "{} -> {}",
            before.loss,
            after.loss
        );
        assert!(
            (s.first_loss - std::f32::consts::LN_2).abs() < 0.3,
            "{}",
            s.first_loss
        );
        // evaluate() agrees with the summary
        let again = evaluate(&mut be, &mut rm, &eval, 5).unwrap().unwrap();
        assert!((again.accuracy - after.accuracy).abs() < 1e-9);
    }

    #[test]
    fn head_file_with_the_wrong_width_is_refused() {
        let bytes = serialize_head(&[0.0; 8], 0.0).unwrap();
        let e = parse_head(&bytes, 64).unwrap_err();
        assert!(e.contains("[1, 8]") && e.contains("[1, 64]"), "{e}");
        let (w, b) = parse_head(&serialize_head(&[1.0, 2.0], 3.0).unwrap(), 2).unwrap();
        assert_eq!((w, b), (vec![1.0, 2.0], 3.0));
    }
}
