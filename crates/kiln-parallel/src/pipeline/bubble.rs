//! The pipeline bubble: the fraction of a step a stage sits idle.
//!
//! Theory (GPipe and 1F1B alike, equal stage times, backward and forward
//! counted together): `(p - 1) / (m + p - 1)` of the step. Measured: from
//! the start and end of every forward/backward a stage ran
//! ([`StageTimeline`]), idle = 1 - busy / (step window), the window running
//! from the first stage's start to the last stage's end.

use std::time::{Duration, Instant};

/// The bubble a schedule of `stages` stages and `micro` micro-batches
/// leaves when every stage's forward and backward take the same time.
pub fn theoretical_bubble(stages: usize, micro: usize) -> f64 {
    let (p, m) = (stages as f64, micro as f64);
    (p - 1.0) / (m + p - 1.0)
}

/// When one stage computed during one step.
#[derive(Clone, Debug)]
pub struct StageTimeline {
    /// The stage began the step (before its first receive).
    pub start: Instant,
    /// The stage finished its last action.
    pub end: Instant,
    /// Start and end of each forward / backward (receives and sends excluded).
    pub busy: Vec<(Instant, Instant)>,
}

impl StageTimeline {
    /// Time spent computing.
    pub fn busy_time(&self) -> Duration {
        self.busy
            .iter()
            .map(|(a, b)| b.saturating_duration_since(*a))
            .sum()
    }
}

/// Idle fraction of each stage over the common window (first start to
/// last end), each in `[0, 1]`.
pub fn measured_bubbles(timelines: &[StageTimeline]) -> Vec<f64> {
    let (Some(start), Some(end)) = (
        timelines.iter().map(|t| t.start).min(),
        timelines.iter().map(|t| t.end).max(),
    ) else {
        return Vec::new();
    };
    let window = end.saturating_duration_since(start).as_secs_f64();
    timelines
        .iter()
        .map(|t| {
            if window <= 0.0 {
                0.0
            } else {
                (1.0 - t.busy_time().as_secs_f64() / window).clamp(0.0, 1.0)
            }
        })
        .collect()
}

/// The mean of [`measured_bubbles`] (0 for no stages).
pub fn measured_bubble(timelines: &[StageTimeline]) -> f64 {
    let b = measured_bubbles(timelines);
    if b.is_empty() {
        0.0
    } else {
        b.iter().sum::<f64>() / b.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn theory_is_p_minus_one_over_m_plus_p_minus_one() {
        assert_eq!(theoretical_bubble(1, 4), 0.0);
        assert!((theoretical_bubble(2, 4) - 0.2).abs() < 1e-12);
        assert!((theoretical_bubble(4, 4) - 3.0 / 7.0).abs() < 1e-12);
        assert!((theoretical_bubble(4, 16) - 3.0 / 19.0).abs() < 1e-12);
        // More micro-batches, smaller bubble.
        assert!(theoretical_bubble(4, 32) < theoretical_bubble(4, 8));
    }

    #[test]
    fn measured_idle_is_the_uncovered_share_of_the_window() {
        let t0 = Instant::now();
        let ms = |x: u64| t0 + Duration::from_millis(x);
        let a = StageTimeline {
            start: ms(0),
            end: ms(100),
            busy: vec![(ms(0), ms(40)), (ms(50), ms(90))],
        };
        let b = StageTimeline {
            start: ms(10),
            end: ms(100),
            busy: vec![(ms(10), ms(35))],
        };
        let got = measured_bubbles(&[a.clone(), b]);
        assert!((got[0] - 0.2).abs() < 1e-9, "{got:?}");
        assert!((got[1] - 0.75).abs() < 1e-9, "{got:?}");
        assert!((measured_bubble(&[a]) - 0.2).abs() < 1e-9);
        assert_eq!(measured_bubble(&[]), 0.0);
    }
}
