//! The settings of a training run. Everything that decides the numbers a run
//! produces is here, so a checkpoint stores it and a resume replays it.

use serde::{Deserialize, Serialize};

/// A fully resolved training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset ("tiny", "small", "gpt2-124m", "llama-tiny", ...), or "init" when the
    /// weights come from `--init`.
    pub model: String,
    pub vocab_size: usize,
    /// Total optimizer steps of the run (a resume continues toward it).
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip; `None` disables clipping.
    pub grad_clip: Option<f32>,
    pub seed: u64,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// A plain progress line every N steps when stderr is not a terminal.
    pub log_every: u64,
    /// Stop after this many consecutive steps with a non-finite loss or
    /// gradient norm (each is skipped with a warning).
    pub max_bad_steps: u32,
    /// Precision policy: "f32", "bf16" or "f16" (16-bit weights,
    /// activations and gradients; f32 master weights and moments).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Round the 16-bit working weights stochastically after each update
    /// (deterministic in the seed) instead of to nearest even.
    #[serde(default)]
    pub stochastic_rounding: bool,
    /// f16 only: the initial dynamic loss scale (PyTorch GradScaler: 2^16).
    #[serde(default = "default_loss_scale")]
    pub loss_scale_init: f32,
}

fn default_precision() -> String {
    "f32".to_string()
}

fn default_loss_scale() -> f32 {
    crate::scaler::DEFAULT_INIT_SCALE
}

impl TrainConfig {
    /// Defaults for a preset (nanoGPT-like settings scaled for small runs).
    pub fn with_model(model: &str, vocab_size: usize, seq_len: usize) -> Self {
        Self {
            model: model.to_string(),
            vocab_size,
            steps: 1000,
            batch_size: 8,
            seq_len,
            grad_accum: 1,
            lr: 6e-4,
            min_lr: 6e-5,
            warmup: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: Some(1.0),
            seed: 1337,
            checkpoint_every: 0,
            log_every: 10,
            max_bad_steps: 5,
            precision: default_precision(),
            stochastic_rounding: false,
            loss_scale_init: default_loss_scale(),
        }
    }

    /// The precision policy (checked by [`TrainConfig::validate`]).
    pub fn precision(&self) -> kiln_model::Precision {
        kiln_model::Precision::parse(&self.precision).unwrap_or_default()
    }

    /// Checks the values make sense; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("steps", self.steps as usize),
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("grad_accum", self.grad_accum),
            ("vocab_size", self.vocab_size),
            ("log_every", self.log_every as usize),
            ("max_bad_steps", self.max_bad_steps as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(format!(
                "min_lr must be between 0 and lr ({}), got {}",
                self.lr, self.min_lr
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("grad_clip must be positive, got {c}"));
            }
        }
        kiln_model::Precision::parse(&self.precision).map_err(|e| format!("precision: {e}"))?;
        if !(self.loss_scale_init.is_finite() && self.loss_scale_init >= 1.0) {
            return Err(format!(
                "loss_scale_init must be a finite number >= 1, got {}",
                self.loss_scale_init
            ));
        }
        Ok(())
    }

    /// Tokens one optimizer step consumes on one rank.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.seq_len * self.grad_accum
    }
}
