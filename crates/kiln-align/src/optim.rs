//! The optimizer step every alignment method shares: global-norm clipping,
//! AdamW on a warmup + cosine schedule, and the non-finite guard (a step
//! whose loss or gradient norm is NaN/inf is skipped with a warning; too
//! many in a row stop the run). Wraps kiln-optim and kiln-train's guard.

use kiln_abi::{BackendBox, IntoBResult};
use kiln_model::Precision;
use kiln_optim::{clip_scale_unscaling, AdamW, AdamWConfig, LrSchedule, OptimError, ParamRef};
use kiln_train::guard::{NonFiniteGuard, Verdict};
use kiln_train::scaler::{LossScaler, ScaleChange, DEFAULT_INIT_SCALE};
use serde::{Deserialize, Serialize};

use crate::replicas::Replicas;
use crate::AlignError;

/// A loss above this many times the first step's (at least 1) stops a run
/// like a NaN does ([`AlignOptimizer::guard_divergence`]).
pub const DIVERGENCE_FACTOR: f32 = 100.0;

/// Optimizer settings (the same names as the TOML keys of every stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub lr: f32,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f32,
    /// Linear warmup steps.
    pub warmup: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip (None: no clipping).
    pub grad_clip: Option<f32>,
    /// Stop after this many consecutive non-finite steps.
    pub max_bad_steps: u32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-4,
            min_lr: 1e-5,
            warmup: 10,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: Some(1.0),
            max_bad_steps: 5,
        }
    }
}

impl OptimConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), AlignError> {
        let bad = |m: String| Err(AlignError::Config(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "min_lr must be between 0 and lr ({}), got {}",
                self.lr, self.min_lr
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("eps must be positive, got {}", self.eps));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("grad_clip must be positive, got {c}"));
            }
        }
        if self.max_bad_steps == 0 {
            return bad("max_bad_steps must be at least 1".into());
        }
        Ok(())
    }
}

/// What one [`AlignOptimizer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    pub lr: f32,
    /// Global gradient norm before clipping (NaN/inf when skipped for it).
    pub grad_norm: f32,
    /// The update was skipped (non-finite loss or gradient); `consecutive`
    /// bad steps so far.
    pub skipped: Option<u32>,
    /// f16: the loss scale this step's gradients were computed with.
    pub loss_scale: Option<f32>,
    /// f16: the scaled gradients overflowed (finite loss), so the update was
    /// skipped and the scale halved; not a bad step.
    pub overflowed: bool,
}

impl StepOutcome {
    /// Whether the parameters were left unchanged.
    pub fn update_skipped(&self) -> bool {
        self.skipped.is_some() || self.overflowed
    }

    /// The warning to print for an f16 overflow, if this step had one.
    pub fn overflow_warning(&self, stage: &str, step: u64) -> Option<String> {
        let scale = self.loss_scale?;
        self.overflowed.then(|| {
            format!(
                "warning: {stage} step {step}: gradients overflowed f16 at loss scale {scale}; \
                 update skipped, scale now {}",
                scale * kiln_train::scaler::BACKOFF_FACTOR
            )
        })
    }
}

/// AdamW + schedule + clipping + guard over a fixed list of parameters
/// (a model's, plus any head).
pub struct AlignOptimizer {
    adamw: AdamW,
    refs: Vec<ParamRef>,
    schedule: LrSchedule,
    guard: NonFiniteGuard,
    grad_clip: Option<f32>,
    steps: u64,
    /// f16 only: the dynamic loss scale (PyTorch GradScaler's defaults).
    scaler: Option<LossScaler>,
    /// The data-parallel group the gradients are summed over (a single
    /// process by default).
    replicas: Replicas,
}

impl AlignOptimizer {
    /// `total_steps` sets the cosine decay's end.
    pub fn new(
        be: &mut BackendBox,
        refs: Vec<ParamRef>,
        config: &OptimConfig,
        total_steps: u64,
    ) -> Result<Self, AlignError> {
        config.validate()?;
        let adamw = AdamW::new(
            be,
            &refs,
            AdamWConfig {
                beta1: config.beta1,
                beta2: config.beta2,
                eps: config.eps,
                weight_decay: config.weight_decay,
            },
        )?;
        Ok(AlignOptimizer {
            adamw,
            refs,
            schedule: LrSchedule {
                max_lr: config.lr,
                min_lr: config.min_lr,
                warmup_steps: config.warmup.min(total_steps),
                total_steps,
            },
            guard: NonFiniteGuard::new(config.max_bad_steps),
            grad_clip: config.grad_clip,
            steps: 0,
            scaler: None,
            replicas: Replicas::single(),
        })
    }

    /// Scales losses dynamically when the model computes in f16 (a no-op
    /// otherwise). Objectives then multiply their upstream gradients by
    /// [`AlignOptimizer::loss_scale`], and [`AlignOptimizer::step`]
    /// unscales before clipping, halving the scale and skipping the update
    /// when the scaled gradients overflow.
    pub fn scale_losses_for(mut self, precision: Precision) -> Self {
        self.scaler = (precision == Precision::F16).then(|| LossScaler::new(DEFAULT_INIT_SCALE));
        self
    }

    /// Sets the initial loss scale (f16 only; tests force an overflow).
    pub fn with_initial_loss_scale(mut self, scale: f32) -> Self {
        if let Some(s) = self.scaler.as_mut() {
            s.scale = scale;
        }
        self
    }

    /// What every objective multiplies its upstream gradients by (1 but in
    /// f16).
    pub fn loss_scale(&self) -> f32 {
        self.scaler.map_or(1.0, |s| s.scale)
    }

    /// Treats a loss above [`DIVERGENCE_FACTOR`] x the first step's as a bad
    /// step (skipped, then the run stops): for objectives whose loss starts
    /// near its largest sane value (SFT's cross-entropy, the reward model's
    /// and DPO's -log sigmoid), not for PPO's, which may start near 0.
    pub fn guard_divergence(mut self) -> Self {
        self.guard = self.guard.with_divergence(DIVERGENCE_FACTOR);
        self
    }

    /// Steps as one rank of a data-parallel group: [`AlignOptimizer::step`]
    /// first sums the gradients over the ranks (the objectives weight them
    /// by the step's global count; see [`crate::replicas`]).
    pub fn with_replicas(mut self, replicas: Replicas) -> Self {
        self.replicas = replicas;
        self
    }

    /// The group this optimizer steps with (for the objectives' sums).
    pub fn replicas(&mut self) -> &mut Replicas {
        &mut self.replicas
    }

    pub fn params(&self) -> &[ParamRef] {
        &self.refs
    }

    /// Steps taken (skipped ones included).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f32 {
        self.schedule.lr(self.steps)
    }

    /// Sets every gradient to zero (call before accumulating a step).
    pub fn zero_grad(&self, be: &mut BackendBox) -> Result<(), AlignError> {
        for p in &self.refs {
            be.zero(p.grad).ok_or_err()?;
        }
        Ok(())
    }

    /// Clips, checks and applies one update from the accumulated gradients
    /// (of `loss_scale() * loss`). `loss` is the step's loss (checked for
    /// NaN/inf with the grad norm); under data parallelism, the global one,
    /// and the gradients are summed over the ranks first.
    pub fn step(&mut self, be: &mut BackendBox, loss: f32) -> Result<StepOutcome, AlignError> {
        self.replicas.sum_grads(be, &self.refs)?;
        let loss_scale = self.loss_scale();
        let clipped = clip_scale_unscaling(be, &self.refs, self.grad_clip, 1.0 / loss_scale);
        let (grad_norm, scale, finite) = match clipped {
            Ok((norm, scale)) => (norm, scale, true),
            Err(OptimError::NonFiniteGradNorm { norm }) => (norm as f32, 0.0, false),
            Err(e) => return Err(e.into()),
        };
        let lr = self.schedule.lr(self.steps);
        // f16: a finite loss with overflowing gradients is the scaler's
        // business (halve and skip), not a bad step.
        let overflowed = self.scaler.is_some() && !finite && loss.is_finite();
        if let Some(scaler) = self.scaler.as_mut() {
            let change = scaler.update(overflowed);
            debug_assert!(overflowed == (change == ScaleChange::Backoff));
        }
        let guard_norm = if overflowed { 0.0 } else { grad_norm };
        let skipped = match self.guard.check(loss, guard_norm) {
            Verdict::Apply if overflowed => None,
            Verdict::Apply => {
                self.adamw.step(be, &self.refs, lr, scale)?;
                None
            }
            Verdict::Skip { consecutive } => Some(consecutive),
            Verdict::Stop { limit } => {
                return Err(AlignError::NonFinite {
                    step: self.steps + 1,
                    limit,
                    loss,
                    grad_norm,
                })
            }
        };
        self.steps += 1;
        Ok(StepOutcome {
            lr,
            grad_norm,
            skipped,
            loss_scale: self.scaler.map(|_| loss_scale),
            overflowed,
        })
    }

    /// Frees the optimizer's moment buffers.
    pub fn release(self, be: &mut BackendBox) -> Result<(), AlignError> {
        self.adamw.release(be)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::{BackendExt, DType};

    fn one_param(be: &mut BackendBox, value: &[f32]) -> ParamRef {
        let v = be.from_f32(value).unwrap();
        let g = be.alloc_buf(DType::F32, value.len()).unwrap();
        ParamRef {
            value: v,
            grad: g,
            value_16: None,
            len: value.len(),
            decay: false,
        }
    }

    #[test]
    fn steps_move_against_the_gradient_and_skip_non_finite() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let p = one_param(&mut be, &[1.0, -1.0]);
        let cfg = OptimConfig {
            warmup: 0,
            max_bad_steps: 2,
            ..OptimConfig::default()
        };
        let mut opt = AlignOptimizer::new(&mut be, vec![p], &cfg, 10).unwrap();
        be.upload_f32(p.grad, &[0.5, -0.5]).unwrap();
        let out = opt.step(&mut be, 1.0).unwrap();
        assert!(out.skipped.is_none());
        assert!((out.grad_norm - 0.5f32.sqrt()).abs() < 1e-6);
        let v = be.download_f32(p.value).unwrap();
        assert!(v[0] < 1.0 && v[1] > -1.0, "{v:?}");
        // NaN loss: skipped, weights untouched; twice in a row stops.
        let before = be.download_f32(p.value).unwrap();
        let out = opt.step(&mut be, f32::NAN).unwrap();
        assert_eq!(out.skipped, Some(1));
        assert_eq!(be.download_f32(p.value).unwrap(), before);
        be.upload_f32(p.grad, &[f32::INFINITY, 0.0]).unwrap();
        let e = opt.step(&mut be, 1.0).unwrap_err();
        assert!(matches!(e, AlignError::NonFinite { step: 3, .. }), "{e}");
        opt.zero_grad(&mut be).unwrap();
        assert_eq!(be.download_f32(p.grad).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = OptimConfig {
            min_lr: 1.0,
            ..OptimConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("min_lr"), "{e}");
    }

    #[test]
    fn f16_unscales_before_clipping_and_backs_off_on_overflow_without_counting_bad_steps() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let cfg = OptimConfig {
            warmup: 0,
            max_bad_steps: 2,
            ..OptimConfig::default()
        };
        let (g, scale) = ([3.0f32, -4.0], 1024.0f32);
        // f32 on g, and f16's optimizer on scale * g, make the same update.
        let plain = one_param(&mut be, &[1.0, -1.0]);
        let mut f32_opt = AlignOptimizer::new(&mut be, vec![plain], &cfg, 10).unwrap();
        assert_eq!(f32_opt.loss_scale(), 1.0);
        be.upload_f32(plain.grad, &g).unwrap();
        let a = f32_opt.step(&mut be, 1.0).unwrap();
        assert_eq!((a.loss_scale, a.overflowed), (None, false));
        let p = one_param(&mut be, &[1.0, -1.0]);
        let mut opt = AlignOptimizer::new(&mut be, vec![p], &cfg, 10)
            .unwrap()
            .scale_losses_for(Precision::F16)
            .with_initial_loss_scale(scale);
        assert_eq!(opt.loss_scale(), scale);
        be.upload_f32(p.grad, &g.map(|x| x * scale)).unwrap();
        let b = opt.step(&mut be, 1.0).unwrap();
        assert_eq!(b.loss_scale, Some(scale));
        assert!(!b.update_skipped());
        assert!((b.grad_norm - a.grad_norm).abs() < 1e-5, "{b:?} vs {a:?}");
        let (va, vb) = (
            be.download_f32(plain.value).unwrap(),
            be.download_f32(p.value).unwrap(),
        );
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-6, "{va:?} vs {vb:?}");
        }
        // Overflowing (scaled) gradients with a finite loss: skipped, the
        // scale halves, and three in a row do not stop the run (limit 2).
        for k in 1..=3 {
            be.upload_f32(p.grad, &[f32::INFINITY, 1.0]).unwrap();
            let out = opt.step(&mut be, 1.0).unwrap();
            assert!(out.overflowed && out.skipped.is_none(), "{out:?}");
            assert_eq!(out.loss_scale, Some(scale / 2f32.powi(k - 1)));
            assert!(out
                .overflow_warning("sft", 1 + k as u64)
                .unwrap()
                .contains("overflowed"));
            assert_eq!(be.download_f32(p.value).unwrap(), vb);
        }
        assert_eq!(opt.loss_scale(), scale / 8.0);
        // A NaN loss is still a bad step (counted by the guard).
        let out = opt.step(&mut be, f32::NAN).unwrap();
        assert_eq!((out.skipped, out.overflowed), (Some(1), false));
    }
}
