//! The communicator's contract, checked on [`ThreadComm`].

use std::time::Duration;

use proptest::prelude::*;

use super::*;

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

/// Rank r's input: `len` values drawn from `seed` and r.
fn input(seed: u64, r: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (seed ^ (r as u64 * 0x9E37_79B9) ^ (i as u64 * 0x85EB_CA6B))
                .wrapping_mul(0xC2B2_AE35) as u32;
            (x as f32 / u32::MAX as f32 - 0.5) * 1e3_f32.powf((i % 7) as f32 / 3.0 - 1.0)
        })
        .collect()
}

fn sequential(n: usize, seed: u64, len: usize, op: ReduceOp) -> Vec<f32> {
    let mut out = input(seed, 0, len);
    for r in 1..n {
        for (o, x) in out.iter_mut().zip(input(seed, r, len)) {
            *o += x;
        }
    }
    if op == ReduceOp::Average {
        out.iter_mut().for_each(|o| *o /= n as f32);
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn all_reduce_is_the_rank_ordered_sum(n in 1usize..6, len in 0usize..40, seed in any::<u64>(), avg in any::<bool>()) {
        let op = if avg { ReduceOp::Average } else { ReduceOp::Sum };
        let want = bits(&sequential(n, seed, len, op));
        let got = on_ranks(n, T, |c| {
            let mut buf = input(seed, c.rank(), len);
            c.all_reduce(&mut buf, op).unwrap();
            bits(&buf)
        });
        for g in got { prop_assert_eq!(&g, &want); }
    }

    #[test]
    fn reduce_scatter_then_all_gather_is_all_reduce(n in 1usize..6, chunk in 0usize..12, seed in any::<u64>()) {
        let len = n * chunk;
        let want = bits(&sequential(n, seed, len, ReduceOp::Sum));
        let got = on_ranks(n, T, |c| {
            let mine = input(seed, c.rank(), len);
            let mut part = vec![0.0; chunk];
            c.reduce_scatter(&mine, &mut part, ReduceOp::Sum).unwrap();
            let mut full = vec![0.0; len];
            c.all_gather(&part, &mut full).unwrap();
            bits(&full)
        });
        for g in got { prop_assert_eq!(&g, &want); }
    }

    #[test]
    fn broadcast_copies_the_root(n in 1usize..6, len in 0usize..20, seed in any::<u64>(), root in 0usize..6) {
        let root = root % n;
        let got = on_ranks(n, T, |c| {
            let mut buf = input(seed, c.rank(), len);
            c.broadcast(&mut buf, root).unwrap();
            bits(&buf)
        });
        for g in got { prop_assert_eq!(&g, &bits(&input(seed, root, len))); }
    }

    #[test]
    fn all_to_all_v_delivers_each_part(n in 1usize..6, seed in any::<u64>()) {
        // rank s sends (s + d) % 5 values to rank d
        let part = |s: usize, d: usize| input(seed ^ d as u64, s, (s + d) % 5);
        let got = on_ranks(n, T, |c| {
            let send: Vec<Vec<f32>> = (0..n).map(|d| part(c.rank(), d)).collect();
            c.all_to_all_v(&send).unwrap()
        });
        for (d, recvd) in got.iter().enumerate() {
            for (s, p) in recvd.iter().enumerate() {
                prop_assert_eq!(bits(p), bits(&part(s, d)));
            }
        }
    }

    #[test]
    fn send_recv_round_trips_a_ring(n in 2usize..6, len in 0usize..20, seed in any::<u64>()) {
        let got = on_ranks(n, T, |c| {
            let (me, next, prev) = (c.rank(), (c.rank() + 1) % n, (c.rank() + n - 1) % n);
            c.send(&input(seed, me, len), next).unwrap();
            let mut buf = vec![0.0; len];
            c.recv(&mut buf, prev).unwrap();
            bits(&buf)
        });
        for (r, g) in got.iter().enumerate() {
            prop_assert_eq!(g, &bits(&input(seed, (r + n - 1) % n, len)));
        }
    }
}

#[test]
fn all_to_all_transposes_equal_chunks() {
    let got = on_ranks(3, T, |c| {
        let input: Vec<f32> = (0..6).map(|i| (c.rank() * 10 + i) as f32).collect();
        let mut out = vec![0.0; 6];
        c.all_to_all(&input, &mut out).unwrap();
        out
    });
    assert_eq!(got[1], vec![2.0, 3.0, 12.0, 13.0, 22.0, 23.0]);
}

#[test]
fn a_stalled_rank_times_out_the_others_naming_it() {
    let got = on_ranks(3, Duration::from_millis(200), |c| {
        if c.rank() == 2 {
            // never joins: stalls past the others' deadline, then leaves
            // (a recv with the same deadline would race them to time out)
            std::thread::sleep(Duration::from_millis(800));
            return None;
        }
        let mut buf = vec![1.0];
        Some(c.all_reduce(&mut buf, ReduceOp::Sum).unwrap_err())
    });
    for err in got.into_iter().take(2).flatten() {
        let msg = err.to_string();
        assert!(msg.contains("all_reduce"), "{msg}");
        assert!(
            matches!(&err, CommError::Timeout { missing, .. } if missing == &vec![2])
                || msg.contains("rank(s) [2]"),
            "{msg}"
        );
    }
}

#[test]
fn a_failed_rank_poisons_the_group() {
    let got = on_ranks(3, T, |c| {
        if c.rank() == 1 {
            c.poison("loader error");
            return String::new();
        }
        let mut buf = vec![1.0];
        c.all_reduce(&mut buf, ReduceOp::Sum)
            .unwrap_err()
            .to_string()
    });
    for msg in [&got[0], &got[2]] {
        assert!(
            msg.contains("all_reduce") && msg.contains("rank 1 failed: loader error"),
            "{msg}"
        );
    }
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
    let got = on_ranks(2, T, |c| {
        let mut buf = vec![1.0];
        if c.rank() == 0 {
            c.all_reduce(&mut buf, ReduceOp::Sum)
                .unwrap_err()
                .to_string()
        } else {
            c.broadcast(&mut buf, 0).unwrap_err().to_string()
        }
    });
    assert!(got.iter().all(|m| m.contains("called")), "{got:?}");
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
