//! Row gather, row dot products and index counts (MoE dispatch and combine;
//! the weighted scatter-add is [`super::encoder::scatter_rows_weighted`]).

use rayon::prelude::*;

/// `out[i, :] = src[indices[i], :]`.
pub fn gather(out: &mut [f32], src: &[f32], indices: &[u32], cols: usize) {
    out.par_chunks_mut(cols)
        .zip(indices.par_iter())
        .for_each(|(o, &r)| o.copy_from_slice(&src[r as usize * cols..][..cols]));
}

/// `out[i] += dot(a[a_indices[i] or i, :], b[i, :])`.
pub fn rows_dot(out: &mut [f32], a: &[f32], a_indices: Option<&[u32]>, b: &[f32], cols: usize) {
    out.par_iter_mut()
        .zip(b.par_chunks(cols))
        .enumerate()
        .for_each(|(i, (o, b))| {
            let r = a_indices.map_or(i, |ix| ix[i] as usize);
            *o += super::dot(&a[r * cols..][..cols], b);
        });
}

/// `counts[indices[i]] += 1`, in order.
pub fn index_counts(counts: &mut [f32], indices: &[u32]) {
    for &i in indices {
        counts[i as usize] += 1.0;
    }
}
