//! The model hyper-parameters (GPT-2, or a Llama-family variant) and named presets.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Shape of a model: GPT-2, or with `llama` set a Llama-family decoder
/// (RMSNorm, rotary positions, SwiGLU, grouped-query attention).
/// `padded_vocab_size` only exists inside kiln (it keeps the lm_head GEMM on
/// friendly sizes); checkpoints hold real rows only.
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
    /// LayerNorm epsilon (GPT-2), or RMSNorm's `rms_norm_eps` (Llama).
    pub layer_norm_eps: f32,
    /// The Llama-family architecture; `None` is GPT-2 (absent from GPT-2
    /// configs and training states, which therefore read and write as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama: Option<LlamaArch>,
}

/// Which Hugging Face class a Llama-style model is saved as. The maths is
/// one decoder; the family fixes the checkpoint's `architectures` /
/// `model_type` and its defaults (Qwen2 always has q/k/v biases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlamaFamily {
    Llama,
    Mistral,
    Qwen2,
}

impl LlamaFamily {
    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "llama",
            LlamaFamily::Mistral => "mistral",
            LlamaFamily::Qwen2 => "qwen2",
        }
    }
    /// transformers' class for this family with a `score` head (a reward model).
    pub fn sequence_classifier(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "LlamaForSequenceClassification",
            LlamaFamily::Mistral => "MistralForSequenceClassification",
            LlamaFamily::Qwen2 => "Qwen2ForSequenceClassification",
        }
    }

    /// `config.json`'s `architectures` entry.
    pub fn architecture(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "LlamaForCausalLM",
            LlamaFamily::Mistral => "MistralForCausalLM",
            LlamaFamily::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Llama 3's rotary frequency scaling (`rope_type: "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// What a Llama-family decoder adds to [`GptConfig`]: no biases (but
/// Qwen2's q/k/v ones), no position table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaArch {
    pub family: LlamaFamily,
    /// Key/value heads (grouped-query attention when < `n_head`).
    pub n_kv_head: usize,
    /// SwiGLU width (`intermediate_size`).
    pub intermediate_size: usize,
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// `lm_head.weight` is `embed_tokens.weight` (no separate parameter).
    pub tie_word_embeddings: bool,
    /// Biases on q_proj, k_proj and v_proj (Qwen2).
    #[serde(default)]
    pub qkv_bias: bool,
    /// Mistral's sliding window: a query sees the last `w` positions only.
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

/// Names accepted by [`GptConfig::preset`].
pub const PRESETS: [&str; 6] = [
    "tiny",
    "mini",
    "small",
    "gpt2-124m",
    "llama-tiny",
    "llama-mini",
];

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
            llama: None,
        }
    }

    /// A Llama-family config: `n_embd / n_head` channels per head, RMSNorm
    /// epsilon 1e-5, no rope scaling, no window, no biases.
    #[allow(clippy::too_many_arguments)]
    pub fn new_llama(
        family: LlamaFamily,
        vocab_size: usize,
        max_seq_len: usize,
        n_layer: usize,
        n_head: usize,
        n_kv_head: usize,
        n_embd: usize,
        intermediate_size: usize,
        tie_word_embeddings: bool,
    ) -> Self {
        GptConfig {
            llama: Some(LlamaArch {
                family,
                n_kv_head,
                intermediate_size,
                rope_theta: 10000.0,
                rope_scaling: None,
                tie_word_embeddings,
                qkv_bias: family == LlamaFamily::Qwen2,
                sliding_window: None,
            }),
            ..GptConfig::new(vocab_size, max_seq_len, n_layer, n_head, n_embd)
        }
    }

    /// Key/value heads: `n_head` for GPT-2.
    pub fn n_kv_head(&self) -> usize {
        self.llama.as_ref().map_or(self.n_head, |l| l.n_kv_head)
    }

    /// Columns of the fused q|k|v projection output.
    pub fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_kv_head()) * self.head_dim()
    }

    /// Columns of the MLP's first projection (GPT-2 `4C`; Llama gate|up `2F`).
    pub fn mlp_in_width(&self) -> usize {
        self.llama
            .as_ref()
            .map_or(4 * self.n_embd, |l| 2 * l.intermediate_size)
    }

    /// Columns of the MLP's activation (GPT-2 `4C`; Llama `F`).
    pub fn mlp_act_width(&self) -> usize {
        self.llama
            .as_ref()
            .map_or(4 * self.n_embd, |l| l.intermediate_size)
    }

    /// "tiny" (2 layers, d=64, 4 heads, T=128), "mini" (4 layers, d=128,
    /// 4 heads, T=128; the pipeline's default), "small" (6 layers, d=384,
    /// 6 heads, T=256), "gpt2-124m" (12 layers, d=768, 12 heads, T=1024);
    /// Llama-family: "llama-tiny" (2 layers, d=64, 4 heads, 2 key/value
    /// heads, SwiGLU 176, T=128) and "llama-mini" (4 layers, d=128, 4 and 2
    /// heads, SwiGLU 352, T=128), tied embeddings as small Llamas (SmolLM) do.
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        let llama = |t, layers, heads, kv, c, f| {
            GptConfig::new_llama(
                LlamaFamily::Llama,
                vocab_size,
                t,
                layers,
                heads,
                kv,
                c,
                f,
                true,
            )
        };
        let c = match name {
            "llama-tiny" => llama(128, 2, 4, 2, 64, 176),
            "llama-mini" => llama(128, 4, 4, 2, 128, 352),
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
        if let Some(l) = &self.llama {
            if l.n_kv_head == 0 || !self.n_head.is_multiple_of(l.n_kv_head) {
                return fail(format!(
                    "n_head ({}) must be a positive multiple of n_kv_head ({}) \
                     (num_key_value_heads)",
                    self.n_head, l.n_kv_head
                ));
            }
            if !self.head_dim().is_multiple_of(2) {
                return fail(format!(
                    "rotary embeddings need an even head_dim, got {}",
                    self.head_dim()
                ));
            }
            if l.intermediate_size == 0 {
                return fail("intermediate_size must be positive".into());
            }
            if !(l.rope_theta > 0.0 && l.rope_theta.is_finite()) {
                return fail(format!(
                    "rope_theta must be a positive number, got {}",
                    l.rope_theta
                ));
            }
            if let Some(s) = &l.rope_scaling {
                if !(s.factor > 0.0
                    && s.low_freq_factor > 0.0
                    && s.high_freq_factor > s.low_freq_factor
                    && s.original_max_position_embeddings > 0)
                {
                    return fail(format!(
                        "rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < \
                         high_freq_factor and original_max_position_embeddings > 0, got {s:?}"
                    ));
                }
            }
            if l.sliding_window == Some(0) {
                return fail("sliding_window must be positive (or null)".into());
            }
        }
        Ok(())
    }

    /// The attention window kiln passes to the backend (0: none). A
    /// window at least as long as the context never masks anything.
    pub fn attention_window(&self) -> usize {
        match self.llama.as_ref().and_then(|l| l.sliding_window) {
            Some(w) if w < self.max_seq_len => w,
            _ => 0,
        }
    }

    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parameter count with the real vocabulary; the tied lm_head counted once.
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        if let Some(l) = &self.llama {
            let kv = self.n_kv_head() * self.head_dim();
            let bias = if l.qkv_bias { c + 2 * kv } else { 0 };
            let per_layer = 2 * c * c + 2 * c * kv + bias + 3 * c * l.intermediate_size + 2 * c;
            let head = if l.tie_word_embeddings { 0 } else { 1 };
            return (1 + head) * self.vocab_size * c + self.n_layer * per_layer + c;
        }
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
    fn llama_presets_are_llama_family_configs() {
        for name in ["llama-tiny", "llama-mini"] {
            let c = GptConfig::preset(name, 300).unwrap();
            let l = c.llama.as_ref().unwrap();
            assert_eq!((l.family, l.n_kv_head * 2), (LlamaFamily::Llama, c.n_head));
            assert!(l.tie_word_embeddings && !l.qkv_bias);
        }
    }

    #[test]
    fn rejects_heads_that_do_not_divide() {
        let e = GptConfig::new(10, 8, 1, 3, 32).validate().unwrap_err();
        assert!(e.to_string().contains("n_head"), "{e}");
    }
}
