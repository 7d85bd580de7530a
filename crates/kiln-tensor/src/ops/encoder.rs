//! Token (+ position) embedding, forward and backward.

use rayon::prelude::*;

/// Where the position rows come from: a per-token table (packed rows, where
/// positions restart per document) or `pos0 + t`.
#[derive(Clone, Copy)]
pub enum Positions<'a> {
    Given(&'a [u32]),
    From(usize),
}

impl Positions<'_> {
    #[inline]
    fn at(&self, row: usize, t: usize) -> usize {
        match self {
            Positions::Given(p) => p[row] as usize,
            Positions::From(pos0) => pos0 + row % t,
        }
    }
}

/// `out[b,t,:] = wte[tokens[b,t],:] + wpe[pos(b,t),:]` (only the token row
/// without `wpe`). Tokens and positions are validated by the backend.
pub fn forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    pos: Positions<'_>,
    t: usize,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(row, (o, &tok))| {
            let e = &wte[tok as usize * c..][..c];
            match wpe {
                Some(wpe) => {
                    let p = &wpe[pos.at(row, t) * c..][..c];
                    for ((o, e), p) in o.iter_mut().zip(e).zip(p) {
                        *o = e + p;
                    }
                }
                None => o.copy_from_slice(e),
            }
        });
}

/// `dwte[tokens[i],:] += dout[i,:]`, deterministic (see [`scatter_rows`]).
pub fn backward_tokens(dwte: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    scatter_rows(dwte, dout, tokens, c);
}

/// `dwpe[pos(b,t),:] += dout[b,t,:]`. With `pos0 + t` each row of `dwpe` is
/// owned by one task that adds the batch rows in order; with given positions
/// it is a [`scatter_rows`] (with positions `0..T` per row both sum in the
/// same order, so the results are bit-identical).
pub fn backward_positions(
    dwpe: &mut [f32],
    dout: &[f32],
    pos: Positions<'_>,
    b: usize,
    t: usize,
    c: usize,
) {
    match pos {
        Positions::Given(p) => scatter_rows(dwpe, dout, p, c),
        Positions::From(pos0) => dwpe[pos0 * c..][..t * c]
            .par_chunks_mut(c)
            .enumerate()
            .for_each(|(p, row)| {
                for bi in 0..b {
                    for (d, g) in row.iter_mut().zip(&dout[(bi * t + p) * c..][..c]) {
                        *d += g;
                    }
                }
            }),
    }
}

/// `dst[idx[i],:] += src[i,:]` for every `i`, deterministic without atomics:
/// the `i` are bucketed by target row (a counting sort, stable in `i` order),
/// then each row of `dst` is owned by one task that adds its `i` in order.
pub(crate) fn scatter_rows(dst: &mut [f32], src: &[f32], idx: &[u32], c: usize) {
    scatter_rows_weighted(dst, src, idx, None, c)
}

/// [`scatter_rows`] with `dst[idx[i],:] += w[i] * src[i,:]` when weighted.
pub(crate) fn scatter_rows_weighted(
    dst: &mut [f32],
    src: &[f32],
    idx: &[u32],
    weights: Option<&[f32]>,
    c: usize,
) {
    if c == 0 {
        return;
    }
    let rows = dst.len() / c;
    let mut start = vec![0usize; rows + 1];
    for &r in idx {
        start[r as usize + 1] += 1;
    }
    for r in 0..rows {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; idx.len()];
    for (i, &r) in idx.iter().enumerate() {
        order[fill[r as usize]] = i;
        fill[r as usize] += 1;
    }
    dst[..rows * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(r, row)| {
            for &i in &order[start[r]..start[r + 1]] {
                let s = &src[i * c..][..c];
                match weights {
                    None => {
                        for (d, g) in row.iter_mut().zip(s) {
                            *d += g;
                        }
                    }
                    Some(w) => {
                        let w = w[i];
                        for (d, g) in row.iter_mut().zip(s) {
                            *d += w * g;
                        }
                    }
                }
            }
        });
}
