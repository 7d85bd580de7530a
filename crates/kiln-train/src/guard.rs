//! Non-finite loss / gradient detection: a bad step is skipped (weights and
//! optimizer state untouched) with a warning; too many in a row stop the run,
//! because by then the model or the data is broken and continuing only burns
//! compute.

/// What to do with the step just computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Loss and gradient norm are finite: apply the update.
    Apply,
    /// Skip this update; `consecutive` bad steps so far (including this one).
    Skip { consecutive: u32 },
    /// `limit` bad steps in a row: stop the run.
    Stop { limit: u32 },
}

#[derive(Debug, Clone)]
pub struct NonFiniteGuard {
    limit: u32,
    consecutive: u32,
    /// With [`NonFiniteGuard::with_divergence`]: a finite loss above this
    /// many times the first applied step's (floored at 1) is a bad step too.
    divergence_factor: Option<f32>,
    first_loss: Option<f32>,
}

impl NonFiniteGuard {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            consecutive: 0,
            divergence_factor: None,
            first_loss: None,
        }
    }

    /// Also treats a loss above `factor` x max(first loss, 1) as bad: a run
    /// at a far too high learning rate climbs to 1e13 without ever
    /// reaching NaN, and must not be saved as if it had trained.
    pub fn with_divergence(mut self, factor: f32) -> Self {
        self.divergence_factor = Some(factor);
        self
    }

    /// Whether `loss` is finite but diverged (see [`Self::with_divergence`]).
    pub fn diverged(&self, loss: f32) -> bool {
        match (self.divergence_factor, self.first_loss) {
            (Some(k), Some(first)) => loss.is_finite() && loss > k * first.abs().max(1.0),
            _ => false,
        }
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// Restores the count saved in a checkpoint (so a resume judges the same).
    pub fn set_consecutive(&mut self, n: u32) {
        self.consecutive = n;
    }

    pub fn check(&mut self, loss: f32, grad_norm: f32) -> Verdict {
        if loss.is_finite() && grad_norm.is_finite() && !self.diverged(loss) {
            if self.first_loss.is_none() {
                self.first_loss = Some(loss);
            }
            self.consecutive = 0;
            return Verdict::Apply;
        }
        self.consecutive += 1;
        if self.consecutive >= self.limit {
            Verdict::Stop { limit: self.limit }
        } else {
            Verdict::Skip {
                consecutive: self.consecutive,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_then_stops_and_recovers() {
        let mut g = NonFiniteGuard::new(3);
        assert_eq!(g.check(1.0, 1.0), Verdict::Apply);
        assert_eq!(g.check(f32::NAN, 1.0), Verdict::Skip { consecutive: 1 });
        assert_eq!(
            g.check(1.0, f32::INFINITY),
            Verdict::Skip { consecutive: 2 }
        );
        // a good step resets the count
        assert_eq!(g.check(2.0, 0.5), Verdict::Apply);
        assert_eq!(
            g.check(f32::NEG_INFINITY, 1.0),
            Verdict::Skip { consecutive: 1 }
        );
        assert_eq!(
            g.check(f32::NAN, f32::NAN),
            Verdict::Skip { consecutive: 2 }
        );
        assert_eq!(g.check(f32::NAN, 1.0), Verdict::Stop { limit: 3 });
    }

    #[test]
    fn a_diverging_finite_loss_is_a_bad_step_only_when_asked() {
        let mut plain = NonFiniteGuard::new(2);
        assert_eq!(plain.check(5.9, 1.0), Verdict::Apply);
        assert_eq!(plain.check(1.6e13, 1.0), Verdict::Apply);
        let mut g = NonFiniteGuard::new(2).with_divergence(100.0);
        assert_eq!(g.check(5.9, 1.0), Verdict::Apply);
        assert_eq!(g.check(500.0, 1.0), Verdict::Apply, "below 100 x 5.9");
        assert!(g.diverged(1.6e13) && !g.diverged(f32::NAN));
        assert_eq!(g.check(1.6e13, 1.0), Verdict::Skip { consecutive: 1 });
        assert_eq!(g.check(2e13, 1.0), Verdict::Stop { limit: 2 });
        // The floor: a first loss of 0.01 still allows losses up to 100.
        let mut small = NonFiniteGuard::new(2).with_divergence(100.0);
        assert_eq!(small.check(0.01, 1.0), Verdict::Apply);
        assert_eq!(small.check(50.0, 1.0), Verdict::Apply);
    }
}
