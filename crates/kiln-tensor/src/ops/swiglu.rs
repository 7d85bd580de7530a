//! SwiGLU over `[gate | up]` rows: `out = silu(gate) * up`.

use rayon::prelude::*;

use super::activation::{silu, silu_grad};

/// `out [rows, f]` from `inp [rows, 2f]`.
pub fn forward(out: &mut [f32], inp: &[f32], f: usize) {
    out.par_chunks_mut(f)
        .zip(inp.par_chunks(2 * f))
        .for_each(|(o, x)| {
            let (gate, up) = x.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = silu(g) * u;
            }
        });
}

/// Accumulates `dinp [rows, 2f]`: `dgate += dout * up * silu'(gate)`,
/// `dup += dout * silu(gate)`.
pub fn backward(dinp: &mut [f32], inp: &[f32], dout: &[f32], f: usize) {
    dinp.par_chunks_mut(2 * f)
        .zip(inp.par_chunks(2 * f).zip(dout.par_chunks(f)))
        .for_each(|(d, (x, g))| {
            let (gate, up) = x.split_at(f);
            let (dgate, dup) = d.split_at_mut(f);
            for (j, &go) in g.iter().enumerate() {
                dgate[j] += go * up[j] * silu_grad(gate[j]);
                dup[j] += go * silu(gate[j]);
            }
        });
}
