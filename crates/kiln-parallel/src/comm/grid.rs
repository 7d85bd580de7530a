//! The process grid and its sub-communicators.
//!
//! A run of `tp x dp x pp` ranks numbers them with **tp innermost, then dp,
//! then pp**:
//!
//! ```text
//! rank = tp_index + tp * (dp_index + dp * pp_index)
//! ```
//!
//! so the ranks of one tensor-parallel group are neighbours (on one node,
//! where the bandwidth is), the data-parallel groups stride by `tp`, and the
//! pipeline stages stride by `tp * dp`. Each rank gets one communicator per
//! axis: the ranks that differ from it only along that axis.

use std::time::Duration;

use super::ThreadComm;

/// The shape of the grid; `world() = tp * dp * pp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGrid {
    pub tp: usize,
    pub dp: usize,
    pub pp: usize,
}

/// A rank's position on the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridCoord {
    pub tp: usize,
    pub dp: usize,
    pub pp: usize,
}

impl ProcessGrid {
    pub fn world(&self) -> usize {
        self.tp * self.dp * self.pp
    }

    /// The coordinates of global `rank`.
    pub fn coord(&self, rank: usize) -> GridCoord {
        GridCoord {
            tp: rank % self.tp,
            dp: (rank / self.tp) % self.dp,
            pp: rank / (self.tp * self.dp),
        }
    }

    /// The global rank at `c`.
    pub fn rank(&self, c: GridCoord) -> usize {
        c.tp + self.tp * (c.dp + self.dp * c.pp)
    }
}

/// One rank's communicators: the whole world and one per axis (whose
/// ranks are the axis index: `tp.rank() == coord.tp`, and so on).
pub struct GridComms<C> {
    pub coord: GridCoord,
    pub world: C,
    pub tp: C,
    pub dp: C,
    pub pp: C,
}

impl ThreadComm {
    /// Thread communicators for every rank of `grid` (index = global rank).
    pub fn grid(grid: ProcessGrid, timeout: Duration) -> Vec<GridComms<ThreadComm>> {
        let n = grid.world();
        assert!(n >= 1, "a grid needs at least one rank");
        let mut world: Vec<Option<ThreadComm>> = ThreadComm::group(n, timeout)
            .into_iter()
            .map(Some)
            .collect();
        // One group per line along an axis; `line` maps (rank) -> (line, index).
        let axis = |line_of: &dyn Fn(GridCoord) -> (usize, usize), size: usize| {
            let lines = n / size;
            let mut groups: Vec<Vec<Option<ThreadComm>>> = (0..lines)
                .map(|_| {
                    ThreadComm::group(size, timeout)
                        .into_iter()
                        .map(Some)
                        .collect()
                })
                .collect();
            (0..n)
                .map(|r| {
                    let (line, index) = line_of(grid.coord(r));
                    groups[line][index].take().expect("each member taken once")
                })
                .collect::<Vec<_>>()
        };
        let mut tp = axis(&|c| (c.dp + grid.dp * c.pp, c.tp), grid.tp).into_iter();
        let mut dp = axis(&|c| (c.tp + grid.tp * c.pp, c.dp), grid.dp).into_iter();
        let mut pp = axis(&|c| (c.tp + grid.tp * c.dp, c.pp), grid.pp).into_iter();
        (0..n)
            .map(|r| GridComms {
                coord: grid.coord(r),
                world: world[r].take().expect("each rank taken once"),
                tp: tp.next().expect("one per rank"),
                dp: dp.next().expect("one per rank"),
                pp: pp.next().expect("one per rank"),
            })
            .collect()
    }
}
