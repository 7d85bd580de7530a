//! Rotary position embeddings: the host computes the cos/sin tables (so
//! rope_theta and Llama 3's frequency scaling stay host policy, as the ABI
//! wants) and the backend's `rope` op rotates q and k in place.
//!
//! The op pairs channel `j` with `j + head_dim/2` (HF `rotate_half`), which
//! is how transformers' Llama applies RoPE to q_proj/k_proj outputs as
//! stored: checkpoints load and save without any permutation.

use kiln_abi::{BackendBox, BackendExt, BufId, IntoBResult, ROption, RopeArgs};

use crate::{GptConfig, Llama3RopeScaling, ModelError};

/// The cos/sin tables `[max_seq_len, head_dim/2]` (f32) on the backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RopeTables {
    pub cos: BufId,
    pub sin: BufId,
}

/// Where each row's position comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Positions {
    /// Row `t` of every batch entry is at `pos0 + t`.
    From(usize),
    /// Per-token positions (u32 `[B,T]`, packed batches).
    PerToken(BufId),
}

/// The inverse frequencies transformers computes (in f32, as it does):
/// `1 / theta^(2i/d)`, then Llama 3's scaling when configured.
pub(crate) fn inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: Option<&Llama3RopeScaling>,
) -> Vec<f32> {
    let base = theta as f32;
    let mut f: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    if let Some(s) = scaling {
        // transformers' _compute_llama3_parameters.
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        for x in &mut f {
            let inv = *x as f64;
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let scaled = if wavelen > low_wavelen {
                inv / s.factor
            } else {
                inv
            };
            let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
            let out = if medium {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * scaled / s.factor + smooth * scaled
            } else {
                scaled
            };
            *x = out as f32;
        }
    }
    f
}

/// Host cos and sin tables for `cfg`: angle `pos * inv_freq[j]` rounded to
/// f32 as transformers' f32 product is, then cos/sin in f64.
pub(crate) fn tables(cfg: &GptConfig) -> (Vec<f32>, Vec<f32>) {
    let arch = cfg.llama.as_ref().expect("a Llama-family config");
    let freqs = inv_freq(cfg.head_dim(), arch.rope_theta, arch.rope_scaling.as_ref());
    let mut cos = Vec::with_capacity(cfg.max_seq_len * freqs.len());
    let mut sin = Vec::with_capacity(cos.capacity());
    for pos in 0..cfg.max_seq_len {
        for &f in &freqs {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

impl RopeTables {
    pub(crate) fn upload(be: &mut BackendBox, cfg: &GptConfig) -> Result<Self, ModelError> {
        let (cos, sin) = tables(cfg);
        Ok(RopeTables {
            cos: be.from_f32(&cos)?,
            sin: be.from_f32(&sin)?,
        })
    }

    pub(crate) fn release(self, be: &mut BackendBox) -> Result<(), ModelError> {
        be.free(self.cos).ok_or_err()?;
        be.free(self.sin).ok_or_err()?;
        Ok(())
    }

    /// Rotates the q and k heads of `qkv [b*t, qkv_width]` in place
    /// (`inverse`: by minus the angle, the backward on their gradient).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_qk(
        &self,
        be: &mut BackendBox,
        cfg: &GptConfig,
        qkv: BufId,
        positions: Positions,
        b: usize,
        t: usize,
        inverse: bool,
    ) -> Result<(), ModelError> {
        let hd = cfg.head_dim();
        let (positions, pos0) = match positions {
            Positions::From(p) => (ROption::RNone, p),
            Positions::PerToken(buf) => (ROption::RSome(buf), 0),
        };
        for (col_offset, n_heads) in [(0, cfg.n_head), (cfg.n_head * hd, cfg.n_kv_head())] {
            be.rope(RopeArgs {
                buf: qkv,
                cos: self.cos,
                sin: self.sin,
                positions,
                pos0,
                b,
                t,
                row_width: cfg.qkv_width(),
                col_offset,
                n_heads,
                head_dim: hd,
                inverse,
            })
            .ok_or_err()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let plain = inv_freq(16, 10000.0, None);
        let scaled = inv_freq(16, 10000.0, Some(&s));
        let wavelen = |f: f32| 2.0 * std::f64::consts::PI / f as f64;
        for (p, q) in plain.iter().zip(&scaled) {
            if wavelen(*p) < 16.0 {
                assert_eq!(p, q);
            } else if wavelen(*p) > 64.0 {
                assert!((q * 8.0 - p).abs() <= 1e-6 * p, "{p} {q}");
            } else {
                assert!(q < p && *q > p / 8.0, "{p} {q}");
            }
        }
    }
}
