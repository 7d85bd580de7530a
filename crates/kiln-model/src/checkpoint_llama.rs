//! `config.json` of Hugging Face's Llama-family causal LMs
//! (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`): reading
//! into a [`GptConfig`] with `llama` set, refusing what kiln cannot run by
//! its key, and writing one that transformers' `from_pretrained` loads.
//!
//! Rope settings are read from transformers 5's `rope_parameters` or from
//! the older top-level `rope_theta` / `rope_scaling`, and written both ways.

use std::path::Path;

use serde_json::{json, Value};

use crate::{GptConfig, Llama3RopeScaling, LlamaArch, LlamaFamily, ModelError};

/// The family of a `model_type` kiln runs as a Llama-style decoder.
pub(crate) fn family_of(model_type: &str) -> Option<LlamaFamily> {
    match model_type {
        "llama" => Some(LlamaFamily::Llama),
        "mistral" => Some(LlamaFamily::Mistral),
        "qwen2" => Some(LlamaFamily::Qwen2),
        _ => None,
    }
}

/// Parses a Llama-family `config.json` (already JSON `v`).
pub(crate) fn read_config(
    path: &Path,
    v: &Value,
    family: LlamaFamily,
) -> Result<GptConfig, ModelError> {
    let bad = |m: String| ModelError::format(path, m);
    let int = |key: &str| -> Result<Option<usize>, ModelError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| bad(format!("\"{key}\" must be a non-negative integer, got {x}"))),
        }
    };
    let need = |key: &str| -> Result<usize, ModelError> {
        int(key)?.ok_or_else(|| bad(format!("missing required key \"{key}\"")))
    };
    let num = |key: &str, x: &Value| -> Result<f64, ModelError> {
        x.as_f64()
            .ok_or_else(|| bad(format!("\"{key}\" must be a number, got {x}")))
    };
    let flag = |key: &str| v.get(key).and_then(Value::as_bool);
    let vocab = need("vocab_size")?;
    let (n_embd, n_layer, n_head) = (
        need("hidden_size")?,
        need("num_hidden_layers")?,
        need("num_attention_heads")?,
    );
    let n_kv_head = int("num_key_value_heads")?.unwrap_or(n_head);
    let intermediate = need("intermediate_size")?;
    let positions = need("max_position_embeddings")?;
    let eps = match v.get("rms_norm_eps") {
        None | Some(Value::Null) => 1e-6,
        Some(x) => num("rms_norm_eps", x)? as f32,
    };
    let act = v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    if act != "silu" {
        return Err(bad(format!(
            "\"hidden_act\": {act:?} is not supported (kiln's SwiGLU uses \"silu\")"
        )));
    }
    if n_head > 0 {
        if let Some(hd) = int("head_dim")? {
            if hd * n_head != n_embd {
                return Err(bad(format!(
                    "\"head_dim\": {hd} is not supported: kiln needs hidden_size / \
                     num_attention_heads = {}",
                    n_embd / n_head
                )));
            }
        }
    }
    // Llama's attention_bias also puts a bias on o_proj; Qwen2 has q/k/v biases always.
    for key in ["attention_bias", "mlp_bias"] {
        if flag(key) == Some(true) {
            return Err(bad(format!(
                "\"{key}\": true is not supported (kiln's Llama has no biases but Qwen2's q/k/v)"
            )));
        }
    }
    let tie = flag("tie_word_embeddings").unwrap_or(false);
    let sliding_window = match family {
        LlamaFamily::Mistral => int("sliding_window")?,
        LlamaFamily::Qwen2 => {
            let per_layer = v
                .get("layer_types")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|t| t.as_str() != Some("full_attention")));
            if flag("use_sliding_window") == Some(true) || per_layer {
                return Err(bad(
                    "\"use_sliding_window\": true (or \"layer_types\" with sliding layers) is \
                     not supported: Qwen2 windows only some layers; set it false"
                        .into(),
                ));
            }
            None
        }
        LlamaFamily::Llama => None,
    };
    let (rope_theta, rope_scaling) = read_rope(path, v)?;
    let mut cfg = GptConfig::new_llama(
        family,
        vocab,
        positions,
        n_layer,
        n_head,
        n_kv_head,
        n_embd,
        intermediate,
        tie,
    );
    cfg.layer_norm_eps = eps;
    let arch: &mut LlamaArch = cfg.llama.as_mut().expect("new_llama sets it");
    arch.rope_theta = rope_theta;
    arch.rope_scaling = rope_scaling;
    arch.sliding_window = sliding_window;
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// `rope_theta` and the Llama 3 scaling, from `rope_parameters`
/// (transformers 5) or `rope_theta` + `rope_scaling` (earlier).
fn read_rope(path: &Path, v: &Value) -> Result<(f64, Option<Llama3RopeScaling>), ModelError> {
    let bad = |m: String| ModelError::format(path, m);
    let (key, params) = match v.get("rope_parameters") {
        Some(p) if !p.is_null() => ("rope_parameters", Some(p)),
        _ => (
            "rope_scaling",
            v.get("rope_scaling").filter(|p| !p.is_null()),
        ),
    };
    let theta_of = |x: &Value, name: &str| -> Result<f64, ModelError> {
        x.as_f64()
            .ok_or_else(|| bad(format!("\"{name}\" must be a number, got {x}")))
    };
    let mut theta = match v.get("rope_theta") {
        None | Some(Value::Null) => 10000.0,
        Some(x) => theta_of(x, "rope_theta")?,
    };
    let Some(params) = params else {
        return Ok((theta, None));
    };
    if let Some(x) = params.get("rope_theta") {
        theta = theta_of(x, &format!("{key}.rope_theta"))?;
    }
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => {
            let field = |name: &str| -> Result<f64, ModelError> {
                params.get(name).and_then(Value::as_f64).ok_or_else(|| {
                    bad(format!(
                        "\"{key}.{name}\" must be a number (rope_type llama3)"
                    ))
                })
            };
            let original = field("original_max_position_embeddings")?;
            Ok((
                theta,
                Some(Llama3RopeScaling {
                    factor: field("factor")?,
                    low_freq_factor: field("low_freq_factor")?,
                    high_freq_factor: field("high_freq_factor")?,
                    original_max_position_embeddings: original as usize,
                }),
            ))
        }
        other => Err(bad(format!(
            "\"{key}.rope_type\": {other:?} is not supported (kiln runs \"default\" and \"llama3\")"
        ))),
    }
}

/// The `config.json` kiln writes for a Llama-family `cfg`.
pub(crate) fn config_json(cfg: &GptConfig) -> Value {
    let arch = cfg.llama.as_ref().expect("a Llama-family config");
    let mut rope = json!({"rope_type": "default", "rope_theta": arch.rope_theta});
    if let Some(s) = &arch.rope_scaling {
        rope = json!({
            "rope_type": "llama3",
            "rope_theta": arch.rope_theta,
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    let mut v = json!({
        "architectures": [arch.family.architecture()],
        "model_type": arch.family.model_type(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": arch.n_kv_head,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": shortest_f64(cfg.layer_norm_eps),
        "rope_theta": arch.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "dtype": "float32",
        "kiln_padded_vocab_size": cfg.padded_vocab_size,
    });
    let obj = v.as_object_mut().expect("an object");
    match arch.family {
        LlamaFamily::Llama => {
            obj.insert("attention_bias".into(), json!(false));
            obj.insert("mlp_bias".into(), json!(false));
            if arch.rope_scaling.is_some() {
                obj.insert("rope_scaling".into(), obj["rope_parameters"].clone());
            }
        }
        LlamaFamily::Mistral => {
            obj.insert("sliding_window".into(), json!(arch.sliding_window));
        }
        LlamaFamily::Qwen2 => {
            obj.insert("use_sliding_window".into(), json!(false));
            obj.insert("sliding_window".into(), Value::Null);
        }
    }
    v
}

/// The f64 whose shortest decimal is `x`'s (1e-5, not 9.99999974e-6), so
/// that transformers computes with the epsilon the model was read with.
fn shortest_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<GptConfig, ModelError> {
        let v: Value = serde_json::from_str(text).unwrap();
        let family = family_of(v["model_type"].as_str().unwrap()).unwrap();
        read_config(Path::new("config.json"), &v, family)
    }

    /// The published config.json of meta-llama/Llama-3.2-1B (transformers 4
    /// keys: top-level rope_theta and rope_scaling, head_dim, tied).
    #[test]
    fn llama_3_2_1b_config_reads() {
        let cfg = read(
            r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
            "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
            "initializer_range": 0.02, "intermediate_size": 8192,
            "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
            "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
            "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}"#,
        )
        .unwrap();
        let l = cfg.llama.as_ref().unwrap();
        assert_eq!(
            (cfg.n_embd, cfg.n_head, l.n_kv_head, cfg.head_dim()),
            (2048, 32, 8, 64)
        );
        assert_eq!((l.rope_theta, l.tie_word_embeddings), (500000.0, true));
        let s = l.rope_scaling.unwrap();
        assert_eq!((s.factor, s.original_max_position_embeddings), (32.0, 8192));
        assert_eq!(cfg.num_params(), 1_235_814_400);
    }

    /// Qwen/Qwen2.5-0.5B: q/k/v biases, tied, a `sliding_window` that
    /// `use_sliding_window: false` switches off.
    #[test]
    fn qwen2_5_0_5b_config_reads() {
        let cfg = read(
            r#"{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
            "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
            "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
            "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
            "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
            "use_sliding_window": false, "vocab_size": 151936}"#,
        )
        .unwrap();
        let l = cfg.llama.as_ref().unwrap();
        assert!(l.qkv_bias && l.tie_word_embeddings && l.sliding_window.is_none());
        assert_eq!(cfg.num_params(), 494_032_768);
    }

    /// mistralai/Mistral-7B-v0.1: the 4096 window is kept (and honoured).
    #[test]
    fn mistral_7b_config_keeps_its_window() {
        let cfg = read(
            r#"{"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
            "intermediate_size": 14336, "max_position_embeddings": 32768,
            "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "use_cache": true, "vocab_size": 32000}"#,
        )
        .unwrap();
        assert_eq!(cfg.llama.as_ref().unwrap().sliding_window, Some(4096));
        assert_eq!(cfg.attention_window(), 4096);
        assert_eq!(cfg.num_params(), 7_241_732_096);
    }
}
