//! The communicator's contract ([`suite`]), checked on [`ThreadComm`].

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::comm::suite;

const T: Duration = Duration::from_secs(20);

/// Runs `f` on `n` thread ranks and returns each rank's result (index = rank).
fn on_ranks<R: Send>(
    n: usize,
    timeout: Duration,
    f: impl Fn(&mut ThreadComm) -> R + Sync,
) -> Vec<R> {
    let comms = ThreadComm::group(n, timeout);
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                let f = &f;
                s.spawn(move || f(&mut c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Runs a suite check on `n` thread ranks; fails with every rank's error.
fn check_on_ranks(
    n: usize,
    timeout: Duration,
    check: impl Fn(&mut ThreadComm) -> suite::Check + Sync,
) {
    let errors: Vec<String> = on_ranks(n, timeout, |c| check(c))
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn all_reduce_is_the_rank_ordered_sum(n in 1usize..6, len in 0usize..40, seed in any::<u64>(), avg in any::<bool>()) {
        let op = if avg { ReduceOp::Average } else { ReduceOp::Sum };
        check_on_ranks(n, T, |c| suite::all_reduce(c, seed, len, op));
    }

    #[test]
    fn reduce_scatter_then_all_gather_is_all_reduce(n in 1usize..6, chunk in 0usize..12, seed in any::<u64>()) {
        check_on_ranks(n, T, |c| suite::reduce_scatter_all_gather(c, seed, chunk));
    }

    #[test]
    fn broadcast_copies_the_root(n in 1usize..6, len in 0usize..20, seed in any::<u64>(), root in 0usize..6) {
        check_on_ranks(n, T, |c| suite::broadcast(c, seed, len, root));
    }

    #[test]
    fn all_to_all_v_delivers_each_part(n in 1usize..6, seed in any::<u64>()) {
        check_on_ranks(n, T, |c| suite::all_to_all_v(c, seed));
    }

    #[test]
    fn send_recv_round_trips_a_ring(n in 2usize..6, len in 0usize..20, seed in any::<u64>()) {
        check_on_ranks(n, T, |c| suite::ring(c, seed, len));
    }
}

#[test]
fn the_whole_healthy_suite_passes_on_2_3_and_4_ranks() {
    for n in [2, 3, 4] {
        check_on_ranks(n, T, |c| suite::healthy(c));
    }
}

#[test]
fn all_to_all_transposes_equal_chunks() {
    check_on_ranks(3, T, |c| suite::all_to_all(c));
}

#[test]
fn a_stalled_rank_times_out_the_others_naming_it() {
    check_on_ranks(3, Duration::from_millis(200), |c| {
        suite::stalled_rank(c, 2, Duration::from_millis(800))
    });
}

#[test]
fn a_failed_rank_poisons_the_group() {
    check_on_ranks(3, T, |c| suite::poisoned_by(c, 1));
}

#[test]
fn a_panicked_rank_poisons_the_group() {
    let comms = ThreadComm::group(2, T);
    let mut it = comms.into_iter();
    let (mut a, b) = (it.next().unwrap(), it.next().unwrap());
    let dead = std::thread::spawn(move || {
        let _b = b;
        panic!("rank 1 dies");
    });
    assert!(dead.join().is_err());
    let msg = a.barrier().unwrap_err().to_string();
    assert!(msg.contains("barrier") && msg.contains("rank 1"), "{msg}");
}

#[test]
fn ranks_calling_different_operations_all_fail() {
    check_on_ranks(2, T, |c| suite::mismatched_operations(c));
}

#[test]
fn grid_axes_put_tp_innermost() {
    let grid = ProcessGrid {
        tp: 2,
        dp: 3,
        pp: 2,
    };
    assert_eq!(grid.rank(grid.coord(7)), 7);
    assert_eq!(
        grid.coord(7),
        grid::GridCoord {
            tp: 1,
            dp: 0,
            pp: 1
        }
    );
    let comms = ThreadComm::grid(grid, T);
    // each axis group sums the global ranks of its members
    let sums: Vec<[f32; 3]> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, mut g)| {
                s.spawn(move || {
                    let mut out = [0f32; 3];
                    for (i, c) in [&mut g.tp, &mut g.dp, &mut g.pp].into_iter().enumerate() {
                        let mut v = [r as f32];
                        c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                        out[i] = v[0];
                    }
                    assert_eq!(g.world.world(), 12);
                    assert_eq!(g.dp.rank(), g.coord.dp);
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // rank 7 = (tp 1, dp 0, pp 1): tp peers 6,7; dp peers 7,9,11; pp peers 1,7
    assert_eq!(sums[7], [13.0, 27.0, 8.0]);
}
