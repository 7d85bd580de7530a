//! The GPT-2 hyper-parameters and named presets.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Shape of a GPT-2 model. `padded_vocab_size` only exists inside kiln (it
/// keeps the lm_head GEMM on friendly sizes); checkpoints hold real rows only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Real vocabulary V.
    pub vocab_size: usize,
    /// Vp >= V: a multiple of 64, or of 128 when V >= 16384.
    pub padded_vocab_size: usize,
    /// Context length (`n_positions`).
    pub max_seq_len: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub layer_norm_eps: f32,
}

/// Names accepted by [`GptConfig::preset`].
pub const PRESETS: [&str; 4] = ["tiny", "mini", "small", "gpt2-124m"];

/// The padded vocabulary size kiln uses for `vocab_size`.
pub fn padded_vocab(vocab_size: usize) -> usize {
    let multiple = if vocab_size >= 16384 { 128 } else { 64 };
    vocab_size.div_ceil(multiple) * multiple
}

impl GptConfig {
    /// A config with GPT-2's LayerNorm epsilon (1e-5) and the padded vocabulary.
    pub fn new(
        vocab_size: usize,
        max_seq_len: usize,
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
    ) -> Self {
        GptConfig {
            vocab_size,
            padded_vocab_size: padded_vocab(vocab_size),
            max_seq_len,
            n_layer,
            n_head,
            n_embd,
            layer_norm_eps: 1e-5,
        }
    }

    /// "tiny" (2 layers, d=64, 4 heads, T=128), "mini" (4 layers, d=128,
    /// 4 heads, T=128; the pipeline's default), "small" (6 layers, d=384,
    /// 6 heads, T=256), "gpt2-124m" (12 layers, d=768, 12 heads, T=1024).
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        let c = match name {
            "tiny" => GptConfig::new(vocab_size, 128, 2, 4, 64),
            "mini" => GptConfig::new(vocab_size, 128, 4, 4, 128),
            "small" => GptConfig::new(vocab_size, 256, 6, 6, 384),
            "gpt2-124m" => GptConfig::new(vocab_size, 1024, 12, 12, 768),
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model preset {other:?}; valid presets: {}",
                    PRESETS.join(", ")
                )))
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks that the numbers describe a model kiln can build.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.max_seq_len == 0 || self.n_layer == 0 {
            return fail(format!(
                "vocab_size ({}), max_seq_len ({}) and n_layer ({}) must be positive",
                self.vocab_size, self.max_seq_len, self.n_layer
            ));
        }
        if self.n_head == 0 || self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return fail(format!(
                "n_embd ({}) must be a positive multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.padded_vocab_size < self.vocab_size {
            return fail(format!(
                "padded_vocab_size ({}) is smaller than vocab_size ({})",
                self.padded_vocab_size, self.vocab_size
            ));
        }
        if self.vocab_size > u32::MAX as usize - 1 {
            return fail(format!(
                "vocab_size {} does not fit u32 token ids",
                self.vocab_size
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return fail(format!(
                "layer_norm_eps must be a positive number, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parameter count with the real vocabulary; the tied lm_head counted once.
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        let per_layer = 12 * c * c + 13 * c;
        self.vocab_size * c + self.max_seq_len * c + self.n_layer * per_layer + 2 * c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_124m_has_the_published_parameter_count() {
        let c = GptConfig::preset("gpt2-124m", 50257).unwrap();
        assert_eq!(c.num_params(), 124_439_808);
        assert_eq!(c.padded_vocab_size, 50304);
    }

    #[test]
    fn padding_rule() {
        assert_eq!(padded_vocab(301), 320);
        assert_eq!(padded_vocab(256), 256);
        assert_eq!(padded_vocab(257), 320);
        assert_eq!(padded_vocab(8192), 8192);
        assert_eq!(padded_vocab(16385), 16512);
    }

    proptest::proptest! {
        #[test]
        fn padded_vocab_is_the_smallest_fitting_multiple(v in 1usize..200_000) {
            let p = padded_vocab(v);
            let m = if v >= 16384 { 128 } else { 64 };
            proptest::prop_assert!(p >= v && p.is_multiple_of(m) && p - v < m);
        }
    }

    #[test]
    fn unknown_preset_lists_valid_names() {
        let e = GptConfig::preset("huge", 100).unwrap_err().to_string();
        assert!(
            e.contains("huge") && e.contains("tiny") && e.contains("gpt2-124m"),
            "{e}"
        );
    }

    #[test]
    fn rejects_heads_that_do_not_divide() {
        let e = GptConfig::new(10, 8, 1, 3, 32).validate().unwrap_err();
        assert!(e.to_string().contains("n_head"), "{e}");
    }
}
