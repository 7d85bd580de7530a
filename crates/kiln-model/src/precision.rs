//! Precision policies: which dtype the model stores and computes with.
//!
//! Mixed precision (Micikevicius et al. 2018): weights and activations (and
//! activation gradients) in a 16-bit type, with an f32 master copy of every
//! weight, f32 parameter gradients (accumulated across micro-batches in
//! f32, as Megatron's `main_grad`) and f32 AdamW moments; norm statistics,
//! softmax log-sum-exps, losses and the optimizer stay f32 (the Backend ABI's
//! rule), and so does the residual stream and its gradient (as under
//! PyTorch's autocast, the 16-bit output of each attention and MLP branch
//! is added to an f32 stream). Measured on tiny after 80 steps
//! (tests/it/precision.rs): bf16 +0.3% against f32 with the f32 stream,
//! +2.9-3.7% with a 16-bit one; 16-bit parameter gradients cost another
//! 2.5%, so those stay f32 too. bf16 needs no loss scaling;
//! f16 needs a dynamic loss scale (kiln-train's `LossScaler`).

use kiln_abi::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            other => Err(format!("unknown precision `{other}`; use f32, bf16 or f16")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The dtype of weights (as computed with), activations and activation
    /// gradients.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// 16-bit compute with an f32 master copy.
    pub fn is_mixed(self) -> bool {
        self != Precision::F32
    }

    /// Bytes of training state per parameter under this policy with AdamW.
    pub fn bytes_per_param(self) -> BytesPerParam {
        BytesPerParam {
            weights: self.compute_dtype().size(),
            grads: 4,
            master: if self.is_mixed() { 4 } else { 0 },
            moments: 8,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// The training-state bytes of one parameter (AdamW), by part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BytesPerParam {
    /// The copy the model computes with.
    pub weights: usize,
    pub grads: usize,
    /// The f32 master copy (mixed precision only).
    pub master: usize,
    /// AdamW's two f32 moments.
    pub moments: usize,
}

impl BytesPerParam {
    pub fn total(&self) -> usize {
        self.weights + self.grads + self.master + self.moments
    }
}

/// Bytes of the training activations and gradient scratch for `rows = B*T`
/// rows under `precision`, with an attention workspace of `workspace` f32
/// elements per layer (the backend's `attention_workspace_len`). Per row
/// and layer: 16 C values in the compute dtype (ln1, qkv 3C, attention
/// output, its projection, ln2, fc 4C, GELU 4C, fc projection) and 2 C in
/// f32 (the residual stream), plus 4 f32 norm statistics; per row once: the
/// encoder output and d(residual) (C each, f32), lnf and 13 C of gradient
/// scratch (compute dtype), the padded logits (compute dtype, reused for
/// their gradient), 2 lnf statistics, lse, loss and loss weight (f32), and
/// 4 u32 ids (tokens, targets, positions, segments). A Llama-family config
/// has its q|k|v width Q in place of 3C, gate|up 2F and SwiGLU F in place
/// of the two 4C, and a Q-wide f32 scratch for the q/k/v bias gradients.
pub fn activation_bytes(
    cfg: &crate::GptConfig,
    rows: usize,
    workspace: usize,
    precision: Precision,
) -> usize {
    let (a, f, c) = (precision.compute_dtype().size(), 4, cfg.n_embd);
    // GPT-2: 3C + 4C + 4C.
    let wide = cfg.qkv_width() + cfg.mlp_in_width() + cfg.mlp_act_width();
    let layer = rows * ((5 * c + wide) * a + 2 * c * f + 4 * f) + workspace.max(1) * f;
    let once = rows * (2 * c * f + (3 * c + wide) * a + cfg.padded_vocab_size * a + 5 * f + 4 * 4);
    let bias_scratch = if cfg.llama.is_some() {
        cfg.qkv_width() * f
    } else {
        0
    };
    cfg.n_layer * layer + once + bias_scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_bytes_follow_the_formula() {
        for p in Precision::ALL {
            assert_eq!(Precision::parse(p.name()).unwrap(), p);
        }
        assert!(Precision::parse("f8")
            .unwrap_err()
            .contains("f32, bf16 or f16"));
        // f32: 4 + 4 + 0 + 8; mixed: 2 + 4 + 4 + 8 (f32 gradients).
        assert_eq!(Precision::F32.bytes_per_param().total(), 16);
        assert_eq!(Precision::Bf16.bytes_per_param().total(), 18);
        assert_eq!(Precision::F16.bytes_per_param().master, 4);
    }
}
