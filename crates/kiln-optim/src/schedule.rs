//! Learning-rate schedule: linear warmup, then cosine decay to a floor.

use serde::{Deserialize, Serialize};

/// Linear warmup to `max_lr` over `warmup_steps`, then cosine decay from
/// `max_lr` (at step `warmup_steps`) to `min_lr` (at step `total_steps`);
/// `min_lr` after that. Warmup uses `(step + 1) / warmup_steps` so step 0
/// already trains (the llm.c / nanoGPT convention).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub max_lr: f32,
    pub min_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// A constant learning rate (no warmup, no decay).
    pub fn constant(lr: f32) -> Self {
        LrSchedule {
            max_lr: lr,
            min_lr: lr,
            warmup_steps: 0,
            total_steps: 0,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.min_lr as f64 + coeff * (self.max_lr as f64 - self.min_lr as f64)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> LrSchedule {
        LrSchedule {
            max_lr: 6e-4,
            min_lr: 6e-5,
            warmup_steps: 10,
            total_steps: 110,
        }
    }

    #[test]
    fn warmup_is_linear_from_one_step() {
        let s = sched();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b;
        assert!(close(s.lr(0), 6e-5), "{}", s.lr(0));
        assert!(close(s.lr(4), 3e-4), "{}", s.lr(4));
        assert_eq!(s.lr(9), 6e-4);
    }

    #[test]
    fn cosine_hits_max_mid_and_min() {
        let s = sched();
        assert_eq!(s.lr(10), 6e-4);
        // halfway through the decay the cosine factor is 0.5
        let mid = s.lr(60);
        assert!((mid - (6e-5 + 0.5 * (6e-4 - 6e-5))).abs() < 1e-9, "{mid}");
        // a quarter: 0.5 * (1 + cos(pi/4))
        let q = s.lr(35);
        let want = 6e-5 + 0.5 * (1.0 + std::f32::consts::FRAC_1_SQRT_2) * (6e-4 - 6e-5);
        assert!((q - want).abs() < 1e-9, "{q} vs {want}");
        assert_eq!(s.lr(110), 6e-5);
        assert_eq!(s.lr(10_000), 6e-5);
    }

    #[test]
    fn decays_monotonically_after_warmup() {
        let s = sched();
        for step in 10..110 {
            assert!(s.lr(step + 1) <= s.lr(step), "step {step}");
        }
    }

    #[test]
    fn constant_and_degenerate_schedules() {
        assert_eq!(LrSchedule::constant(1e-3).lr(0), 1e-3);
        assert_eq!(LrSchedule::constant(1e-3).lr(999), 1e-3);
        // total <= warmup: warmup then the floor, never a division by zero
        let s = LrSchedule {
            max_lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 4,
            total_steps: 4,
        };
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(4), 0.1);
    }
}
