//! ZeRO-1: the optimizer state and master weights are sharded.
//!
//! The parameters, laid end to end in order, form one flat vector of
//! `total` values; rank r owns the slice `[r*s, min((r+1)*s, total))` with
//! `s = ceil(total / world)`. A shard is described by [`ParamRef`]s that are
//! *views* of the pieces of the parameters inside that slice, so the
//! unchanged AdamW updates just the shard. Each step:
//!
//! 1. reduce-scatter: rank r receives the average gradient of its slice;
//! 2. the clip norm: the local sum of squares, summed across ranks
//!    ([`super::agree`]);
//! 3. AdamW on the shard;
//! 4. all-gather: every rank receives the updated weights of every slice.
//!
//! AdamW is element-wise, so the update matches the unsharded one; only
//! the norm's sum of squares is added in another order (per piece, then
//! across ranks), a last-bit difference in the clip factor.
//! Checkpoints hold the state gathered to full ([`Shard::gather_state`]),
//! so a run resumes at any world size and either stage.

use std::ops::Range;

use kiln_abi::{BackendBox, BackendExt};
use kiln_optim::{AdamWState, ParamRef};

use super::DpError;
use crate::comm::{Communicator, ReduceOp};

/// Part of parameter `param` inside this rank's slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    param: usize,
    /// Offset inside the parameter.
    offset: usize,
    len: usize,
}

/// This rank's slice of the flattened parameters.
pub struct Shard {
    /// The views AdamW updates (one per piece, in parameter order).
    pub refs: Vec<ParamRef>,
    pieces: Vec<Piece>,
    /// Flat range owned, and the padded slice length `s`.
    range: Range<usize>,
    slice_len: usize,
    total: usize,
    lens: Vec<usize>,
}

/// The flat slice of `rank` among `world`, and the padded slice length.
fn slice_of(total: usize, rank: usize, world: usize) -> (Range<usize>, usize) {
    let s = total.div_ceil(world);
    let lo = (rank * s).min(total);
    (lo..((rank + 1) * s).min(total), s)
}

impl Shard {
    /// The shard of `rank` among `world` over `params` (f32 values and
    /// gradients; the views are made on `be`).
    pub fn new(
        be: &mut BackendBox,
        params: &[ParamRef],
        rank: usize,
        world: usize,
    ) -> Result<Shard, DpError> {
        let lens: Vec<usize> = params.iter().map(|p| p.len).collect();
        let total = lens.iter().sum();
        let (range, slice_len) = slice_of(total, rank, world);
        let (mut pieces, mut refs, mut start) = (Vec::new(), Vec::new(), 0);
        for (i, p) in params.iter().enumerate() {
            let (lo, hi) = (range.start.max(start), range.end.min(start + p.len));
            if lo < hi {
                let piece = Piece {
                    param: i,
                    offset: lo - start,
                    len: hi - lo,
                };
                refs.push(ParamRef {
                    value: be.view_of(p.value, piece.offset, piece.len)?,
                    grad: be.view_of(p.grad, piece.offset, piece.len)?,
                    value_16: None,
                    len: piece.len,
                    decay: p.decay,
                });
                pieces.push(piece);
            }
            start += p.len;
        }
        Ok(Shard {
            refs,
            pieces,
            range,
            slice_len,
            total,
            lens,
        })
    }

    /// Rank `world`-wide padded flat length (`world * s`).
    fn padded(&self, world: usize) -> usize {
        self.slice_len * world
    }

    /// Every rank's gradients averaged; this rank's slice lands in its
    /// shard's gradient views (the rest of its gradients are left as they are).
    pub fn reduce_scatter_grads(
        &self,
        be: &mut BackendBox,
        comm: &mut dyn Communicator,
        params: &[ParamRef],
    ) -> Result<(), DpError> {
        let mut flat = Vec::with_capacity(self.padded(comm.world()));
        for p in params {
            flat.extend(be.download_f32(p.grad)?);
        }
        flat.resize(self.padded(comm.world()), 0.0);
        let mut mine = vec![0.0; self.slice_len];
        comm.reduce_scatter(&flat, &mut mine, ReduceOp::Average)?;
        self.write_pieces(be, &mine, |r| r.grad)
    }

    /// Every rank's updated slice of the weights into every rank's parameters.
    pub fn all_gather_values(
        &self,
        be: &mut BackendBox,
        comm: &mut dyn Communicator,
        params: &[ParamRef],
    ) -> Result<(), DpError> {
        let mut mine = Vec::with_capacity(self.slice_len);
        for r in &self.refs {
            mine.extend(be.download_f32(r.value)?);
        }
        mine.resize(self.slice_len, 0.0);
        let mut flat = vec![0.0; self.padded(comm.world())];
        comm.all_gather(&mine, &mut flat)?;
        let mut at = 0;
        for p in params {
            be.upload_f32(p.value, &flat[at..at + p.len])?;
            at += p.len;
        }
        Ok(())
    }

    /// Copies `slice` (this rank's flat slice) into the pieces' buffers.
    fn write_pieces(
        &self,
        be: &mut BackendBox,
        slice: &[f32],
        buf: impl Fn(&ParamRef) -> kiln_abi::BufId,
    ) -> Result<(), DpError> {
        let mut at = 0;
        for r in &self.refs {
            be.upload_f32(buf(r), &slice[at..at + r.len])?;
            at += r.len;
        }
        Ok(())
    }

    /// The full optimizer state (per parameter) from every rank's shard
    /// state (per piece); every rank receives it.
    pub fn gather_state(
        &self,
        comm: &mut dyn Communicator,
        shard_state: &AdamWState,
    ) -> Result<AdamWState, DpError> {
        let world = comm.world();
        let mut moments = Vec::with_capacity(2);
        for part in [&shard_state.m, &shard_state.v] {
            let mut mine: Vec<f32> = part.iter().flatten().copied().collect();
            mine.resize(self.slice_len, 0.0);
            let mut flat = vec![0.0; self.padded(world)];
            comm.all_gather(&mine, &mut flat)?;
            flat.truncate(self.total);
            let mut per_param = Vec::with_capacity(self.lens.len());
            let mut at = 0;
            for &len in &self.lens {
                per_param.push(flat[at..at + len].to_vec());
                at += len;
            }
            moments.push(per_param);
        }
        let v = moments.pop().expect("two moments");
        let m = moments.pop().expect("two moments");
        Ok(AdamWState {
            step: shard_state.step,
            m,
            v,
        })
    }

    /// This shard's part (per piece) of a full state (per parameter).
    pub fn slice_state(&self, full: &AdamWState) -> AdamWState {
        let cut = |per_param: &Vec<Vec<f32>>| {
            self.pieces
                .iter()
                .map(|pc| per_param[pc.param][pc.offset..pc.offset + pc.len].to_vec())
                .collect()
        };
        AdamWState {
            step: full.step,
            m: cut(&full.m),
            v: cut(&full.v),
        }
    }

    /// The flat range of the parameters this rank owns.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Frees the views.
    pub fn release(self, be: &mut BackendBox) -> Result<(), DpError> {
        for r in self.refs {
            be.free_buf(r.value)?;
            be.free_buf(r.grad)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::slice_of;

    #[test]
    fn slices_cover_the_parameters_once() {
        for (total, world) in [(10, 3), (7, 4), (3, 4), (0, 2), (12, 1)] {
            let mut next = 0;
            for r in 0..world {
                let (range, s) = slice_of(total, r, world);
                assert_eq!(range.start, next);
                assert!(range.len() <= s);
                next = range.end;
            }
            assert_eq!(next, total);
        }
    }
}
