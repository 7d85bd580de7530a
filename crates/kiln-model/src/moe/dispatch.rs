//! The dispatch plan: which token rows each expert takes, in token order,
//! after the capacity limit. Experts' rows are laid out one after another
//! (expert 0's first), so one gather and one scatter-add serve all experts.

use super::router::Routing;

/// The kept token slots, grouped by expert.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// `[E + 1]`: expert `e` owns rows `offsets[e]..offsets[e + 1]`.
    pub offsets: Vec<usize>,
    /// `[M]`: the token (row of `x`) of each kept slot.
    pub tokens: Vec<u32>,
    /// `[M]`: its gate value.
    pub gates: Vec<f32>,
    /// `[M]`: its place `t * k + j` in the routing's `[N, k]` arrays.
    pub slots: Vec<usize>,
    /// `[E]`: slots routed to each expert but beyond its capacity.
    pub dropped: Vec<usize>,
}

impl Dispatch {
    /// Groups the routed slots by expert, token by token; with
    /// `capacity = Some(c)` an expert keeps only its first `c` slots.
    pub fn plan(routing: &Routing, capacity: Option<usize>) -> Dispatch {
        let (e, k) = (routing.e, routing.k);
        let mut per_expert: Vec<Vec<usize>> = vec![Vec::new(); e];
        let mut dropped = vec![0usize; e];
        for (slot, &x) in routing.chosen.iter().enumerate() {
            let x = x as usize;
            if capacity.is_some_and(|c| per_expert[x].len() >= c) {
                dropped[x] += 1;
            } else {
                per_expert[x].push(slot);
            }
        }
        let mut offsets = Vec::with_capacity(e + 1);
        offsets.push(0);
        let mut slots = Vec::new();
        for list in &per_expert {
            slots.extend_from_slice(list);
            offsets.push(slots.len());
        }
        Dispatch {
            offsets,
            tokens: slots.iter().map(|&s| (s / k) as u32).collect(),
            gates: slots.iter().map(|&s| routing.gates[s]).collect(),
            slots,
            dropped,
        }
    }

    /// Kept slots in all.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Expert `e`'s rows in the grouped layout.
    pub fn range(&self, e: usize) -> std::ops::Range<usize> {
        self.offsets[e]..self.offsets[e + 1]
    }

    pub fn total_dropped(&self) -> usize {
        self.dropped.iter().sum()
    }
}
