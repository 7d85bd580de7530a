//! Rotary position embedding, half-split (Hugging Face `rotate_half`), in place.

use rayon::prelude::*;

use super::encoder::Positions;

/// Where the heads sit in a row, and the tables' width.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub t: usize,
    pub row_width: usize,
    pub col_offset: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub inverse: bool,
}

/// Rotates `n_heads` heads of every row of `buf [B*T, row_width]` by the
/// angle of its position (`-angle` when `inverse`: the backward).
pub fn apply(buf: &mut [f32], cos: &[f32], sin: &[f32], pos: Positions<'_>, l: Layout) {
    let half = l.head_dim / 2;
    let sign = if l.inverse { -1.0f32 } else { 1.0 };
    buf.par_chunks_mut(l.row_width)
        .enumerate()
        .for_each(|(row, x)| {
            let p = match pos {
                Positions::Given(p) => p[row] as usize,
                Positions::From(pos0) => pos0 + row % l.t,
            };
            let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
            for h in 0..l.n_heads {
                let head = &mut x[l.col_offset + h * l.head_dim..][..l.head_dim];
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    let sn = sign * s[j];
                    x1[j] = a * c[j] - b * sn;
                    x2[j] = b * c[j] + a * sn;
                }
            }
        });
}
