//! Dynamic loss scaling for f16 training, with PyTorch `GradScaler`'s
//! defaults (`torch/amp/grad_scaler.py`): start at 2^16, halve and skip the
//! step when a gradient overflows, double after 2000 clean steps in a row.
//! Gradients are unscaled before clipping (the backend's `step_control`
//! divides the norm by the scale before comparing it with the limit).

use serde::{Deserialize, Serialize};

pub const DEFAULT_INIT_SCALE: f32 = 65536.0;
pub const GROWTH_FACTOR: f32 = 2.0;
pub const BACKOFF_FACTOR: f32 = 0.5;
pub const GROWTH_INTERVAL: u32 = 2000;

/// The scale and its clean-step count (saved in training state: resume is exact).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    /// Clean steps since the last change of scale.
    pub good_steps: u32,
}

/// What one step did to the scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleChange {
    Kept,
    /// Overflow: the step was skipped and the scale halved.
    Backoff,
    /// `GROWTH_INTERVAL` clean steps: the scale doubled.
    Growth,
}

impl LossScaler {
    pub fn new(init_scale: f32) -> Self {
        LossScaler {
            scale: init_scale,
            good_steps: 0,
        }
    }

    /// Updates after a step whose gradients did (`overflow`) or did not
    /// overflow.
    pub fn update(&mut self, overflow: bool) -> ScaleChange {
        if overflow {
            self.scale *= BACKOFF_FACTOR;
            self.good_steps = 0;
            return ScaleChange::Backoff;
        }
        self.good_steps += 1;
        if self.good_steps >= GROWTH_INTERVAL {
            let grown = self.scale * GROWTH_FACTOR;
            // An f32 overflow of the scale itself is never useful.
            if grown.is_finite() {
                self.scale = grown;
            }
            self.good_steps = 0;
            return ScaleChange::Growth;
        }
        ScaleChange::Kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_overflow_and_grows_after_the_interval() {
        let mut s = LossScaler::new(DEFAULT_INIT_SCALE);
        assert_eq!(s.update(true), ScaleChange::Backoff);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert_eq!(s.update(false), ScaleChange::Kept);
        }
        assert_eq!(s.update(false), ScaleChange::Growth);
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.good_steps, 0);
        // An overflow resets the clean-step count.
        s.update(false);
        s.update(true);
        assert_eq!(s.good_steps, 0);
    }
}
