//! The vocab-parallel embedding and cross-entropy (Megatron's
//! `VocabParallelEmbedding` and `vocab_parallel_cross_entropy`).
//!
//! Each rank holds a contiguous slice of `wte`'s (padded) rows. The lookup
//! copies the rows of the tokens this rank owns and leaves zeros elsewhere;
//! `g` sums the ranks' partial embeddings. The tied lm_head multiplies by the
//! same slice, so each rank ends with its slice of the logits, and the loss
//! is computed from three per-row reductions instead of a gather of
//! `[rows, V]`: the max (for a stable exp), the sum of exps, and the target
//! logit (only its owner has it).

use kiln_abi::{BackendBox, BackendExt, BufId, IntoBResult};

use super::collectives::{all_reduce_max, g, Pass};
use super::TpError;
use crate::comm::{Communicator, ReduceOp};

/// The vocabulary rows one rank holds: `start..start + len` of the padded
/// vocabulary, the first `real` of them below the real vocabulary size
/// (the rest are padding, which no logit softmax sees).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VocabShard {
    pub start: usize,
    pub len: usize,
    pub real: usize,
}

impl VocabShard {
    /// Rank `rank`'s slice of a padded vocabulary `vp` (a multiple of `tp`)
    /// over a real vocabulary `v`. A rank may hold only padding (`real == 0`).
    pub fn new(v: usize, vp: usize, tp: usize, rank: usize) -> VocabShard {
        let len = vp / tp;
        let start = rank * len;
        VocabShard {
            start,
            len,
            real: v.saturating_sub(start).min(len),
        }
    }

    /// The local row of token or class `id`, if this rank holds it as a
    /// real (non-padding) row.
    pub fn local(&self, id: u32) -> Option<usize> {
        let id = id as usize;
        (id >= self.start && id < self.start + self.real).then(|| id - self.start)
    }
}

/// Which batch positions hold one of this rank's tokens, and at which of its
/// rows: the index lists the lookup and its backward gather and scatter by.
pub(crate) struct Lookup {
    /// Positions `i` (into `[b*t]`) whose token this rank owns.
    positions: BufId,
    /// Their local `wte` rows.
    rows: BufId,
    /// How many positions (0: this rank owns none of the batch's tokens).
    n: usize,
}

impl Lookup {
    pub(crate) fn new(
        be: &mut BackendBox,
        shard: VocabShard,
        tokens: &[u32],
    ) -> Result<Lookup, TpError> {
        let (positions, rows): (Vec<u32>, Vec<u32>) = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, &tok)| shard.local(tok).map(|r| (i as u32, r as u32)))
            .unzip();
        // A backend buffer needs one element at least; n = 0 is never read.
        let upload =
            |be: &mut BackendBox, v: &[u32]| be.from_u32(if v.is_empty() { &[0] } else { v });
        Ok(Lookup {
            n: positions.len(),
            positions: upload(be, &positions)?,
            rows: upload(be, &rows)?,
        })
    }

    pub(crate) fn release(self, be: &mut BackendBox) -> Result<(), TpError> {
        be.free_buf(self.positions)?;
        be.free_buf(self.rows)?;
        Ok(())
    }
}

/// `out [rows, c] = wte[tokens]`, summed over the ranks: each rank writes
/// its own tokens' rows (zeros elsewhere), then `g` adds them up.
pub(crate) fn embedding_forward(
    be: &mut BackendBox,
    comm: &mut dyn Communicator,
    lookup: &Lookup,
    wte: BufId,
    out: BufId,
    c: usize,
) -> Result<(), TpError> {
    be.zero(out).ok_or_err()?;
    if lookup.n > 0 {
        let rows = be.alloc_buf(kiln_abi::DType::F32, lookup.n * c)?;
        be.gather_rows(rows, wte, lookup.rows, lookup.n, c)
            .ok_or_err()?;
        let r = be.scatter_add_rows(
            out,
            rows,
            lookup.positions,
            kiln_abi::ROption::RNone,
            lookup.n,
            c,
        );
        be.free_buf(rows)?;
        r.ok_or_err()?;
    }
    g(be, comm, out, Pass::Forward)
}

/// `dwte[own rows] += dout[own positions]` (`g`'s backward is the identity:
/// `dout` is the same on every rank).
pub(crate) fn embedding_backward(
    be: &mut BackendBox,
    lookup: &Lookup,
    dwte: BufId,
    dout: BufId,
    c: usize,
) -> Result<(), TpError> {
    if lookup.n == 0 {
        return Ok(());
    }
    let rows = be.alloc_buf(kiln_abi::DType::F32, lookup.n * c)?;
    be.gather_rows(rows, dout, lookup.positions, lookup.n, c)
        .ok_or_err()?;
    let r = be.scatter_add_rows(
        dwte,
        rows,
        lookup.rows,
        kiln_abi::ROption::RNone,
        lookup.n,
        c,
    );
    be.free_buf(rows)?;
    r.ok_or_err()?;
    Ok(())
}

/// What the vocab-parallel cross-entropy forward gives per row (the same
/// on every rank).
#[derive(Clone, Debug, PartialEq)]
pub struct VocabCe {
    /// `lse - logit[target]`, 0 for an ignored target (`>= v`).
    pub losses: Vec<f32>,
    /// The log-sum-exp over the whole real vocabulary (what backward needs).
    pub lse: Vec<f32>,
}

/// Softmax cross-entropy over logits split by vocabulary: `logits` is this
/// rank's `[rows, shard.len]` slice, `targets` the global class ids (a
/// target `>= v`, e.g. `u32::MAX`, is ignored, as in kiln-model). Every rank
/// gets every row's loss and log-sum-exp.
pub fn vocab_parallel_ce_forward(
    comm: &mut dyn Communicator,
    shard: VocabShard,
    logits: &[f32],
    targets: &[u32],
    v: usize,
) -> Result<VocabCe, TpError> {
    let rows = targets.len();
    if logits.len() != rows * shard.len {
        return Err(TpError::Input(format!(
            "vocab-parallel cross-entropy: {} logits for {rows} rows of {} classes",
            logits.len(),
            shard.len
        )));
    }
    let real = |r: usize| &logits[r * shard.len..r * shard.len + shard.real];

    // 1. The row max over every rank's real columns (-inf where a rank has none).
    let mut max: Vec<f32> = (0..rows)
        .map(|r| real(r).iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    all_reduce_max(comm, &mut max)?;

    // 2. and 3. in one all-reduce: sum of exp(x - max) over the local columns,
    // and the target logit, which only its owner adds (others add 0).
    let mut sums = vec![0f32; 2 * rows];
    for r in 0..rows {
        let s: f64 = real(r).iter().map(|&x| ((x - max[r]) as f64).exp()).sum();
        sums[r] = s as f32;
        if let Some(j) = shard.local(targets[r]) {
            sums[rows + r] = real(r)[j];
        }
    }
    comm.all_reduce(&mut sums, ReduceOp::Sum)?;

    let lse: Vec<f32> = (0..rows)
        .map(|r| max[r] + (sums[r] as f64).ln() as f32)
        .collect();
    let losses = (0..rows)
        .map(|r| {
            if (targets[r] as usize) < v {
                lse[r] - sums[rows + r]
            } else {
                0.0
            }
        })
        .collect();
    Ok(VocabCe { losses, lse })
}

/// The local gradient of `sum_i weights[i] * loss_i` with respect to this
/// rank's logits slice: `weights[i] * (softmax - onehot)` over its real
/// columns, 0 in padding columns and ignored rows. No communication: the
/// log-sum-exp from the forward already holds the global normaliser.
pub fn vocab_parallel_ce_backward(
    shard: VocabShard,
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    weights: &[f32],
    v: usize,
) -> Vec<f32> {
    let mut d = vec![0f32; logits.len()];
    for (r, &tgt) in targets.iter().enumerate() {
        if tgt as usize >= v {
            continue;
        }
        let row = r * shard.len;
        for j in 0..shard.real {
            let p = ((logits[row + j] - lse[r]) as f64).exp() as f32;
            d[row + j] = weights[r] * p;
        }
        if let Some(j) = shard.local(tgt) {
            d[row + j] -= weights[r];
        }
    }
    d
}
