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
}

impl NonFiniteGuard {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            consecutive: 0,
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
        if loss.is_finite() && grad_norm.is_finite() {
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
}
