//! Which micro-batch each stage runs when: a pure function of the stage
//! count `p`, the stage and the micro-batch count `m`.
//!
//! - [`Schedule::GPipe`]: every forward, then every backward. Simple, but
//!   a stage keeps all `m` micro-batches' activations at once.
//! - [`Schedule::OneFOneB`] (PipeDream-Flush / Megatron's non-interleaved
//!   1F1B): stage `s` runs `p - s - 1` warm-up forwards, then alternates
//!   one forward and one backward, then drains the remaining backwards. The
//!   same bubble as GPipe, but at most `p - s` micro-batches in flight.
//!
//! Both run backwards in micro-batch order, so every stage sends and
//! receives each neighbour's messages in the same order.

/// One step of a stage's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward of micro-batch `mb`.
    Forward(usize),
    /// Backward of micro-batch `mb`.
    Backward(usize),
}

/// A pipeline schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// All forwards, then all backwards (Huang et al. 2019).
    GPipe,
    /// One forward, one backward in the steady state (Narayanan et al. 2021).
    OneFOneB,
}

/// Stage `stage`'s ordered actions (of `stages` stages, `micro` micro-batches).
pub fn stage_actions(schedule: Schedule, stages: usize, stage: usize, micro: usize) -> Vec<Action> {
    assert!(stage < stages, "stage {stage} of {stages}");
    let fwd = (0..micro).map(Action::Forward);
    let bwd = (0..micro).map(Action::Backward);
    match schedule {
        Schedule::GPipe => fwd.chain(bwd).collect(),
        Schedule::OneFOneB => {
            let warmup = (stages - stage - 1).min(micro);
            let mut out: Vec<Action> = (0..warmup).map(Action::Forward).collect();
            for i in 0..micro - warmup {
                out.push(Action::Forward(warmup + i));
                out.push(Action::Backward(i));
            }
            out.extend((micro - warmup..micro).map(Action::Backward));
            out
        }
    }
}

/// The most micro-batches forwarded but not yet backwarded at any point of
/// `actions`: the activation slots a stage needs.
pub fn max_in_flight(actions: &[Action]) -> usize {
    let (mut now, mut most) = (0usize, 0usize);
    for a in actions {
        match a {
            Action::Forward(_) => {
                now += 1;
                most = most.max(now);
            }
            Action::Backward(_) => now = now.saturating_sub(1),
        }
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each micro-batch forwarded once, then backwarded once after it.
    fn assert_valid(actions: &[Action], micro: usize) {
        assert_eq!(actions.len(), 2 * micro);
        for mb in 0..micro {
            let f = actions.iter().position(|&a| a == Action::Forward(mb));
            let b = actions.iter().position(|&a| a == Action::Backward(mb));
            let (f, b) = (f.expect("a forward"), b.expect("a backward"));
            assert!(
                f < b,
                "micro-batch {mb}: backward at {b} before forward at {f}"
            );
            assert_eq!(
                actions
                    .iter()
                    .filter(|&&a| a == Action::Forward(mb))
                    .count(),
                1
            );
        }
        // Forwards and backwards each in micro-batch order.
        let order = |fwd: bool| -> Vec<usize> {
            actions
                .iter()
                .filter_map(|a| match (a, fwd) {
                    (Action::Forward(m), true) | (Action::Backward(m), false) => Some(*m),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(order(true), (0..micro).collect::<Vec<_>>());
        assert_eq!(order(false), (0..micro).collect::<Vec<_>>());
    }

    #[test]
    fn gpipe_is_all_forwards_then_all_backwards() {
        for (p, m) in [(1, 1), (2, 4), (4, 4), (4, 8), (3, 2)] {
            for s in 0..p {
                let a = stage_actions(Schedule::GPipe, p, s, m);
                assert_valid(&a, m);
                assert!(a[..m].iter().all(|x| matches!(x, Action::Forward(_))));
                assert!(a[m..].iter().all(|x| matches!(x, Action::Backward(_))));
                assert_eq!(max_in_flight(&a), m);
            }
        }
    }

    #[test]
    fn one_f_one_b_keeps_at_most_p_minus_stage_in_flight() {
        use Action::{Backward as B, Forward as F};
        assert_eq!(
            stage_actions(Schedule::OneFOneB, 4, 0, 4),
            [F(0), F(1), F(2), F(3), B(0), B(1), B(2), B(3)]
        );
        assert_eq!(
            stage_actions(Schedule::OneFOneB, 4, 2, 4),
            [F(0), F(1), B(0), F(2), B(1), F(3), B(2), B(3)]
        );
        assert_eq!(
            stage_actions(Schedule::OneFOneB, 4, 3, 4),
            [F(0), B(0), F(1), B(1), F(2), B(2), F(3), B(3)]
        );
        for (p, m) in [(1, 1), (2, 4), (4, 4), (4, 8), (4, 2), (8, 3)] {
            for s in 0..p {
                let a = stage_actions(Schedule::OneFOneB, p, s, m);
                assert_valid(&a, m);
                assert_eq!(max_in_flight(&a), (p - s).min(m), "p {p} m {m} stage {s}");
            }
        }
    }
}
