//! The shape of a model as the planner sees it: sizes, and the parameter and
//! FLOP counts that follow from them.

use std::path::Path;

use serde_json::Value;

use super::PlanError;

/// MLP flavour: GPT-2's two matrices with GELU, or Llama's three with SwiGLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    Gelu,
    SwiGlu,
}

/// What the cost models need of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    /// A name for the output ("gpt2-124m", a config path).
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Key/value heads (`heads` unless grouped-query attention).
    pub kv_heads: usize,
    /// MLP inner width.
    pub ffn: usize,
    pub vocab: usize,
    /// Context length the model was built for (the default sequence length).
    pub max_seq_len: usize,
    pub mlp: Mlp,
    /// GPT-2 style: learned positions, biases, two LayerNorms with biases,
    /// dropout masks counted in the activations (as Korthikanti et al. do).
    pub gpt_style: bool,
    pub tied_embeddings: bool,
}

impl ModelShape {
    /// A GPT-2-style shape (Narayanan et al.'s models are of this kind).
    pub fn gpt(
        name: &str,
        layers: usize,
        hidden: usize,
        heads: usize,
        vocab: usize,
        seq: usize,
    ) -> Self {
        ModelShape {
            name: name.to_string(),
            layers,
            hidden,
            heads,
            kv_heads: heads,
            ffn: 4 * hidden,
            vocab,
            max_seq_len: seq,
            mlp: Mlp::Gelu,
            gpt_style: true,
            tied_embeddings: true,
        }
    }

    /// kiln's presets (`tiny`, `mini`, `small`, `gpt2-124m`) with GPT-2's
    /// vocabulary, or an HF `config.json` (GPT-2 or Llama-family keys).
    pub fn from_arg(model: &str) -> Result<Self, PlanError> {
        if kiln_model::PRESETS.contains(&model) {
            let c = kiln_model::GptConfig::preset(model, 50257)
                .map_err(|e| PlanError::Model(e.to_string()))?;
            return Ok(ModelShape::gpt(
                model,
                c.n_layer,
                c.n_embd,
                c.n_head,
                c.vocab_size,
                c.max_seq_len,
            ));
        }
        let path = Path::new(model);
        if !path.exists() {
            return Err(PlanError::Model(format!(
                "{model:?} is neither a preset ({}) nor an existing config.json",
                kiln_model::PRESETS.join(", ")
            )));
        }
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| PlanError::Model(format!("{}: {e}", file.display())))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| PlanError::Model(format!("{}: not JSON: {e}", file.display())))?;
        Self::from_hf_config(&file.display().to_string(), &json)
    }

    /// Reads GPT-2 (`n_layer`, `n_embd`, ...) or Llama-family
    /// (`num_hidden_layers`, `hidden_size`, ...) keys.
    pub fn from_hf_config(name: &str, json: &Value) -> Result<Self, PlanError> {
        let get = |key: &str| json.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let need = |key: &str| {
            get(key).ok_or_else(|| {
                PlanError::Model(format!("{name}: missing or non-integer key {key:?}"))
            })
        };
        if json.get("n_layer").is_some() {
            let hidden = need("n_embd")?;
            let mut s = ModelShape::gpt(
                name,
                need("n_layer")?,
                hidden,
                need("n_head")?,
                need("vocab_size")?,
                need("n_positions")?,
            );
            if let Some(inner) = get("n_inner") {
                s.ffn = inner;
            }
            return s.checked();
        }
        let heads = need("num_attention_heads")?;
        ModelShape {
            name: name.to_string(),
            layers: need("num_hidden_layers")?,
            hidden: need("hidden_size")?,
            heads,
            kv_heads: get("num_key_value_heads").unwrap_or(heads),
            ffn: need("intermediate_size")?,
            vocab: need("vocab_size")?,
            max_seq_len: need("max_position_embeddings")?,
            mlp: Mlp::SwiGlu,
            gpt_style: false,
            tied_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
        .checked()
    }

    fn checked(self) -> Result<Self, PlanError> {
        let positive = [
            self.layers,
            self.hidden,
            self.heads,
            self.kv_heads,
            self.ffn,
            self.vocab,
        ];
        if positive.contains(&0)
            || !self.hidden.is_multiple_of(self.heads)
            || !self.heads.is_multiple_of(self.kv_heads)
        {
            return Err(PlanError::Model(format!(
                "{}: layers, hidden, heads, kv heads, ffn and vocab must be positive, \
                 heads must divide hidden and kv heads must divide heads",
                self.name
            )));
        }
        Ok(self)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Width of the key (or value) projection.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// Weights in the block's matrices (what tensor parallelism splits).
    pub fn layer_matrix_params(&self) -> usize {
        let h = self.hidden;
        let attention = 2 * h * h + 2 * h * self.kv_width();
        let mlp_matrices = match self.mlp {
            Mlp::Gelu => 2,
            Mlp::SwiGlu => 3,
        };
        attention + mlp_matrices * h * self.ffn
    }

    /// Biases and norm weights of one block.
    pub fn layer_vector_params(&self) -> usize {
        let h = self.hidden;
        if self.gpt_style {
            // q|k|v and proj biases, fc and proj biases, two LayerNorms.
            (h + 2 * self.kv_width() + h) + (self.ffn + h) + 4 * h
        } else {
            2 * h
        }
    }

    pub fn params_per_layer(&self) -> usize {
        self.layer_matrix_params() + self.layer_vector_params()
    }

    /// Token embedding (and the tied lm_head).
    pub fn embedding_params(&self) -> usize {
        self.vocab * self.hidden
    }

    /// Learned positions (GPT) plus the final norm.
    pub fn other_params(&self) -> usize {
        let positions = if self.gpt_style {
            self.max_seq_len * self.hidden
        } else {
            0
        };
        let final_norm = if self.gpt_style { 2 } else { 1 } * self.hidden;
        positions + final_norm
    }

    /// Parameter count; a tied lm_head counted once.
    pub fn params(&self) -> usize {
        let head = if self.tied_embeddings {
            0
        } else {
            self.embedding_params()
        };
        self.layers * self.params_per_layer() + self.embedding_params() + head + self.other_params()
    }

    /// Forward FLOPs of one sequence of `seq` tokens through one block, in
    /// Narayanan et al.'s convention: 2 per multiply-add, the attention
    /// scores and their product with V counted over the full s x s square.
    pub fn layer_forward_flops(&self, seq: usize) -> f64 {
        let s = seq as f64;
        2.0 * s * self.layer_matrix_params() as f64 + self.attention_core_flops(seq)
    }

    /// The forward FLOPs of Q·Kᵀ and P·V for one sequence in one block (what
    /// selective recomputation runs again).
    pub fn attention_core_flops(&self, seq: usize) -> f64 {
        let s = seq as f64;
        4.0 * s * s * self.hidden as f64
    }

    /// Forward FLOPs of the logits for one sequence.
    pub fn logits_forward_flops(&self, seq: usize) -> f64 {
        2.0 * seq as f64 * (self.hidden * self.vocab) as f64
    }

    /// Model FLOPs of one training step on `sequences` sequences: forward
    /// plus a backward of twice its cost, nothing recomputed (what MFU counts).
    pub fn model_flops(&self, sequences: usize, seq: usize) -> f64 {
        let per_sequence =
            self.layers as f64 * self.layer_forward_flops(seq) + self.logits_forward_flops(seq);
        3.0 * sequences as f64 * per_sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_124m_counts_match_kiln_model() {
        let s = ModelShape::from_arg("gpt2-124m").unwrap();
        let c = kiln_model::GptConfig::preset("gpt2-124m", 50257).unwrap();
        assert_eq!(s.params(), c.num_params());
    }

    #[test]
    fn narayanan_equation_3_without_recompute() {
        // 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) for GPT shapes (ffn = 4h).
        let m = ModelShape::gpt("gpt-175b", 96, 12288, 96, 51200, 2048);
        let (b, s, l, h, v) = (1536.0, 2048.0, 96.0, 12288.0, 51200.0);
        let eq3 = 72.0 * b * s * l * h * h * (1.0 + s / (6.0 * h) + v / (12.0 * l * h));
        let ours = m.model_flops(1536, 2048);
        assert!((ours - eq3).abs() / eq3 < 1e-12, "{ours} vs {eq3}");
    }

    #[test]
    fn llama_config_keys_give_smollm_135m() {
        let json = serde_json::json!({
            "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
            "max_position_embeddings": 2048, "tie_word_embeddings": true
        });
        let s = ModelShape::from_hf_config("smollm", &json).unwrap();
        // SmolLM-135M: 134,515,008 parameters (transformers' num_parameters()).
        assert_eq!(s.params(), 134_515_008);
    }

    #[test]
    fn bad_shapes_and_unknown_models_are_refused_by_name() {
        let e = ModelShape::from_arg("huge-model").unwrap_err().to_string();
        assert!(e.contains("huge-model") && e.contains("gpt2-124m"), "{e}");
        let json = serde_json::json!({"n_layer": 2, "n_embd": 10, "n_head": 3,
            "vocab_size": 5, "n_positions": 8});
        let e = ModelShape::from_hf_config("c.json", &json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("heads"), "{e}");
        let e = ModelShape::from_hf_config("c.json", &serde_json::json!({"n_layer": 2}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_embd"), "{e}");
    }
}
