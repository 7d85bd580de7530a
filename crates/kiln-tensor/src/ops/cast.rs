//! Conversions between float dtypes with nearest-even or stochastic
//! rounding, exactly as `kiln_abi::rounding` defines them.

use half::{bf16, f16};
use kiln_abi::rounding::{bf16_stochastic, f16_stochastic, random_bits};
use rayon::prelude::*;

use super::CHUNK;

/// How to narrow element `i` (global index `base + i`) of a call.
#[derive(Clone, Copy, Debug)]
pub enum Round {
    NearestEven,
    Stochastic { seed: u64 },
}

pub fn to_bf16(dst: &mut [bf16], src: &[f32], r: Round) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(ci, (d, s))| {
            let base = (ci * CHUNK) as u64;
            for (i, (d, &x)) in d.iter_mut().zip(s).enumerate() {
                *d = match r {
                    Round::NearestEven => bf16::from_f32(x),
                    Round::Stochastic { seed } => {
                        bf16_stochastic(x, random_bits(seed, base + i as u64))
                    }
                };
            }
        });
}

pub fn to_f16(dst: &mut [f16], src: &[f32], r: Round) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(ci, (d, s))| {
            let base = (ci * CHUNK) as u64;
            for (i, (d, &x)) in d.iter_mut().zip(s).enumerate() {
                *d = match r {
                    Round::NearestEven => f16::from_f32(x),
                    Round::Stochastic { seed } => {
                        f16_stochastic(x, random_bits(seed, base + i as u64))
                    }
                };
            }
        });
}
