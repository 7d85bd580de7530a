//! Token + position embedding, forward and backward.

use rayon::prelude::*;

/// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`. Tokens are validated `< Vp`.
pub fn forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(row, (o, &tok))| {
            let pos = row % t;
            let e = &wte[tok as usize * c..][..c];
            let p = &wpe[pos * c..][..c];
            for ((o, e), p) in o.iter_mut().zip(e).zip(p) {
                *o = e + p;
            }
        });
}

/// `dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:]`.
///
/// Deterministic without atomics: positions are bucketed by token (a
/// counting sort, stable in position order), then each `dwte` row is owned by
/// one task that adds its positions in that order.
pub fn backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    let vp = dwte.len() / c;
    // start[v]..start[v+1] indexes `order`, the positions holding token v.
    let mut start = vec![0usize; vp + 1];
    for &tok in tokens {
        start[tok as usize + 1] += 1;
    }
    for v in 0..vp {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; tokens.len()];
    for (pos, &tok) in tokens.iter().enumerate() {
        order[fill[tok as usize]] = pos;
        fill[tok as usize] += 1;
    }
    dwte[..vp * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(v, row)| {
            for &pos in &order[start[v]..start[v + 1]] {
                for (d, g) in row.iter_mut().zip(&dout[pos * c..][..c]) {
                    *d += g;
                }
            }
        });
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(pos, row)| {
            for bi in 0..b {
                for (d, g) in row.iter_mut().zip(&dout[(bi * t + pos) * c..][..c]) {
                    *d += g;
                }
            }
        });
}

/// `out[b,t,:] = wte[tokens[b,t],:] + wpe[positions[b,t],:]` (packed rows,
/// where positions restart per document). Tokens and positions are validated
/// against the tables by the backend.
pub fn forward_positions(
    out: &mut [f32],
    tokens: &[u32],
    positions: &[u32],
    wte: &[f32],
    wpe: &[f32],
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter().zip(positions.par_iter()))
        .for_each(|(o, (&tok, &pos))| {
            let e = &wte[tok as usize * c..][..c];
            let p = &wpe[pos as usize * c..][..c];
            for ((o, e), p) in o.iter_mut().zip(e).zip(p) {
                *o = e + p;
            }
        });
}

/// `dwte[tokens[i],:] += dout[i,:]; dwpe[positions[i],:] += dout[i,:]`.
///
/// Both tables go through [`scatter_rows`], so with positions `0..T` per row
/// the sums run in the same order as [`backward`]'s (bit-identical results).
pub fn backward_positions(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    positions: &[u32],
    c: usize,
) {
    scatter_rows(dwte, dout, tokens, c);
    scatter_rows(dwpe, dout, positions, c);
}

/// `dst[idx[i],:] += src[i,:]` for every `i`, deterministic without atomics:
/// the `i` are bucketed by target row (a counting sort, stable in `i` order),
/// then each row of `dst` is owned by one task that adds its `i` in order.
fn scatter_rows(dst: &mut [f32], src: &[f32], idx: &[u32], c: usize) {
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
                for (d, g) in row.iter_mut().zip(&src[i * c..][..c]) {
                    *d += g;
                }
            }
        });
}
