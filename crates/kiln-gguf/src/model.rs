//! An HF model directory (GPT-2, Llama, Mistral, Qwen2: config.json and
//! model.safetensors, or shards with model.safetensors.index.json) as a GGUF
//! file under llama.cpp's names, the way its `convert_hf_to_gguf.py` maps
//! them:
//!
//! - GPT-2's Conv1D weights are stored [in, out] by HF and transposed;
//!   the tied head is written again as `output.weight`.
//! - Llama and Mistral (llama.cpp's "llama" architecture) rotate q and k
//!   with interleaved pairs, HF with halves: q_proj and k_proj rows are
//!   permuted per head. Qwen2 rotates halves in llama.cpp too: no permutation.
//! - Llama 3's rope scaling becomes the `rope_freqs.weight` factors.
//! - Norms and biases stay f32; 2-D weights take the requested type (q8_0
//!   only where rows are a multiple of 32 values, f16 otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::writer::{GgufWriter, TensorType, Value};
use crate::GgufError;

/// What `kiln export --gguf` wrote.
#[derive(Debug)]
pub struct ExportSummary {
    pub architecture: &'static str,
    pub tensors: usize,
    pub vocab_size: usize,
    /// 2-D tensors written as f16 because q8_0 needs rows of 32k values.
    pub f16_fallbacks: Vec<String>,
}

struct Loaded {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn model_err(file: &Path, msg: impl Into<String>) -> GgufError {
    GgufError::Model {
        file: file.display().to_string(),
        msg: msg.into(),
    }
}

/// Every tensor of the directory, as f32.
fn load_tensors(dir: &Path) -> Result<BTreeMap<String, Loaded>, GgufError> {
    let single = dir.join("model.safetensors");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else {
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| {
            model_err(
                dir,
                format!("no model.safetensors and no readable index: {e}"),
            )
        })?;
        let json: Json =
            serde_json::from_str(&text).map_err(|e| model_err(&index, format!("not JSON: {e}")))?;
        let mut shards: Vec<String> = json["weight_map"]
            .as_object()
            .ok_or_else(|| model_err(&index, "no weight_map"))?
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    };
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| model_err(&file, e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| model_err(&file, e.to_string()))?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(model_err(
                        &file,
                        format!("tensor {name}: dtype {other:?}; export reads f32, bf16 and f16"),
                    ))
                }
            };
            out.insert(
                name.to_string(),
                Loaded {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
    }
    Ok(out)
}

/// Reads integer and float keys of config.json, naming the missing one.
struct Config<'a> {
    file: &'a Path,
    json: &'a Json,
}

impl Config<'_> {
    fn int(&self, key: &str) -> Result<usize, GgufError> {
        self.json[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| model_err(self.file, format!("missing or non-integer key {key:?}")))
    }

    fn float(&self, key: &str) -> Option<f64> {
        self.json[key].as_f64()
    }

    /// transformers 5 keeps rope settings in `rope_parameters`; older files
    /// in `rope_theta` and `rope_scaling`.
    fn rope(&self) -> (f64, Option<&Json>) {
        let params = &self.json["rope_parameters"];
        let theta = params["rope_theta"]
            .as_f64()
            .or_else(|| self.float("rope_theta"))
            .unwrap_or(10000.0);
        let scaling = [params, &self.json["rope_scaling"]]
            .into_iter()
            .find(|s| s.is_object() && s["rope_type"].as_str().is_some_and(|t| t != "default"));
        (theta, scaling)
    }
}

/// Writes `dir` as a GGUF file at `out`.
pub fn export_hf_dir(dir: &Path, out: &Path, ty: TensorType) -> Result<ExportSummary, GgufError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| model_err(&config_path, e.to_string()))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| model_err(&config_path, format!("not JSON: {e}")))?;
    if json.get("quantization_config").is_some() {
        return Err(model_err(
            &config_path,
            "quantization_config: a quantized checkpoint cannot be exported; export the \
             unquantized model",
        ));
    }
    let cfg = Config {
        file: &config_path,
        json: &json,
    };
    let model_type = json["model_type"].as_str().unwrap_or("");
    let architecture = match model_type {
        "gpt2" => "gpt2",
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        other => {
            return Err(model_err(
                &config_path,
                format!("model_type {other:?}: GGUF export knows gpt2, llama, mistral and qwen2"),
            ))
        }
    };
    let tensors = load_tensors(dir)?;
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str(architecture.into()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kiln".into());
    w.set("general.name", Value::Str(name))?;
    // llama.cpp's file types: all f32, mostly f16, mostly q8_0.
    let file_type = match ty {
        TensorType::F32 => 0,
        TensorType::F16 => 1,
        TensorType::Q8_0 => 7,
        TensorType::Bf16 => 32,
    };
    w.set("general.file_type", Value::U32(file_type))?;
    if ty == TensorType::Q8_0 {
        w.set("general.quantization_version", Value::U32(2))?;
    }
    let mut export = Export {
        w,
        tensors,
        ty,
        file: config_path.clone(),
        written: 0,
        f16_fallbacks: Vec::new(),
    };
    if architecture == "gpt2" {
        gpt2(&mut export, &cfg)?;
    } else {
        llama(&mut export, &cfg, architecture)?;
    }
    let vocab_size = crate::tokenizer::add_tokenizer(&mut export.w, dir)?;
    export.w.write(out)?;
    Ok(ExportSummary {
        architecture,
        tensors: export.written,
        vocab_size,
        f16_fallbacks: export.f16_fallbacks,
    })
}

struct Export {
    w: GgufWriter,
    tensors: BTreeMap<String, Loaded>,
    ty: TensorType,
    file: PathBuf,
    written: usize,
    f16_fallbacks: Vec<String>,
}

impl Export {
    fn take(&mut self, hf: &str) -> Result<Loaded, GgufError> {
        self.tensors
            .remove(hf)
            .ok_or_else(|| model_err(&self.file, format!("the checkpoint has no tensor {hf}")))
    }

    /// Writes a tensor: vectors in f32, matrices in the export type.
    fn put(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<(), GgufError> {
        let ty = if shape.len() == 1 {
            TensorType::F32
        } else if self.ty == TensorType::Q8_0 && !shape[shape.len() - 1].is_multiple_of(32) {
            self.f16_fallbacks.push(name.to_string());
            TensorType::F16
        } else {
            self.ty
        };
        self.w.add_f32(name, shape, values, ty)?;
        self.written += 1;
        Ok(())
    }

    fn copy(&mut self, hf: &str, name: &str) -> Result<(), GgufError> {
        let t = self.take(hf)?;
        self.put(name, &t.shape, &t.values)
    }

    /// HF Conv1D [in, out] as the [out, in] matrix ggml multiplies by.
    fn transposed(&mut self, hf: &str, name: &str) -> Result<(), GgufError> {
        let t = self.take(hf)?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let mut v = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                v[c * rows + r] = t.values[r * cols + c];
            }
        }
        self.put(name, &[cols, rows], &v)
    }
}

fn gpt2(e: &mut Export, cfg: &Config) -> Result<(), GgufError> {
    let layers = cfg.int("n_layer")?;
    let hidden = cfg.int("n_embd")?;
    let w = &mut e.w;
    w.set(
        "gpt2.context_length",
        Value::U32(cfg.int("n_positions")? as u32),
    )?;
    w.set("gpt2.embedding_length", Value::U32(hidden as u32))?;
    let ffn = cfg.json["n_inner"]
        .as_u64()
        .map_or(4 * hidden, |v| v as usize);
    w.set("gpt2.feed_forward_length", Value::U32(ffn as u32))?;
    w.set("gpt2.block_count", Value::U32(layers as u32))?;
    w.set(
        "gpt2.attention.head_count",
        Value::U32(cfg.int("n_head")? as u32),
    )?;
    let eps = cfg.float("layer_norm_epsilon").unwrap_or(1e-5) as f32;
    w.set("gpt2.attention.layer_norm_epsilon", Value::F32(eps))?;
    // kiln writes the transformer. prefix; HF GPT-2 files may not.
    let prefix = if e.tensors.contains_key("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let wte = e.take(&format!("{prefix}wte.weight"))?;
    e.put("token_embd.weight", &wte.shape, &wte.values)?;
    e.copy(&format!("{prefix}wpe.weight"), "position_embd.weight")?;
    for i in 0..layers {
        let h = format!("{prefix}h.{i}.");
        let b = format!("blk.{i}.");
        for (hf, gg) in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")] {
            e.copy(&format!("{h}{hf}.weight"), &format!("{b}{gg}.weight"))?;
            e.copy(&format!("{h}{hf}.bias"), &format!("{b}{gg}.bias"))?;
        }
        for (hf, gg) in [
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_output"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        ] {
            e.transposed(&format!("{h}{hf}.weight"), &format!("{b}{gg}.weight"))?;
            e.copy(&format!("{h}{hf}.bias"), &format!("{b}{gg}.bias"))?;
        }
    }
    e.copy(&format!("{prefix}ln_f.weight"), "output_norm.weight")?;
    e.copy(&format!("{prefix}ln_f.bias"), "output_norm.bias")?;
    // The head is tied: llama.cpp's gpt2 graph reads `output.weight`.
    let head = e.tensors.remove("lm_head.weight").unwrap_or(wte);
    e.put("output.weight", &head.shape, &head.values)
}

/// Rows of a [heads * head_dim, in] projection reordered from HF's
/// half-split rotary layout to interleaved pairs (llama.cpp's `permute`).
fn interleave_rotary_rows(t: &Loaded, heads: usize) -> Vec<f32> {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; rows * cols];
    for h in 0..heads {
        for j in 0..half {
            for k in 0..2 {
                let src = h * head_dim + k * half + j;
                let dst = h * head_dim + 2 * j + k;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn llama(e: &mut Export, cfg: &Config, arch: &'static str) -> Result<(), GgufError> {
    let layers = cfg.int("num_hidden_layers")?;
    let hidden = cfg.int("hidden_size")?;
    let heads = cfg.int("num_attention_heads")?;
    let kv_heads = cfg.json["num_key_value_heads"]
        .as_u64()
        .map_or(heads, |v| v as usize);
    let head_dim = hidden / heads;
    let (theta, scaling) = cfg.rope();
    let w = &mut e.w;
    let key = |k: &str| format!("{arch}.{k}");
    w.set(
        &key("context_length"),
        Value::U32(cfg.int("max_position_embeddings")? as u32),
    )?;
    w.set(&key("embedding_length"), Value::U32(hidden as u32))?;
    w.set(&key("block_count"), Value::U32(layers as u32))?;
    w.set(
        &key("feed_forward_length"),
        Value::U32(cfg.int("intermediate_size")? as u32),
    )?;
    w.set(&key("attention.head_count"), Value::U32(heads as u32))?;
    w.set(&key("attention.head_count_kv"), Value::U32(kv_heads as u32))?;
    w.set(&key("rope.dimension_count"), Value::U32(head_dim as u32))?;
    w.set(&key("rope.freq_base"), Value::F32(theta as f32))?;
    let eps = cfg.float("rms_norm_eps").unwrap_or(1e-6) as f32;
    w.set(&key("attention.layer_norm_rms_epsilon"), Value::F32(eps))?;
    w.set(
        &key("vocab_size"),
        Value::U32(cfg.int("vocab_size")? as u32),
    )?;
    if let Some(s) = scaling {
        let kind = s["rope_type"].as_str().unwrap_or("");
        if kind != "llama3" {
            return Err(model_err(
                cfg.file,
                format!("rope_scaling.rope_type {kind:?}: GGUF export knows llama3 scaling only"),
            ));
        }
        let factors = llama3_rope_factors(s, theta, head_dim, cfg);
        e.put("rope_freqs.weight", &[factors.len()], &factors)?;
    }
    let permute = arch == "llama";
    e.copy("model.embed_tokens.weight", "token_embd.weight")?;
    for i in 0..layers {
        let h = format!("model.layers.{i}.");
        let b = format!("blk.{i}.");
        e.copy(
            &format!("{h}input_layernorm.weight"),
            &format!("{b}attn_norm.weight"),
        )?;
        e.copy(
            &format!("{h}post_attention_layernorm.weight"),
            &format!("{b}ffn_norm.weight"),
        )?;
        for (proj, gg, n) in [("q_proj", "attn_q", heads), ("k_proj", "attn_k", kv_heads)] {
            let t = e.take(&format!("{h}self_attn.{proj}.weight"))?;
            let values = if permute {
                interleave_rotary_rows(&t, n)
            } else {
                t.values.clone()
            };
            e.put(&format!("{b}{gg}.weight"), &t.shape, &values)?;
        }
        e.copy(
            &format!("{h}self_attn.v_proj.weight"),
            &format!("{b}attn_v.weight"),
        )?;
        e.copy(
            &format!("{h}self_attn.o_proj.weight"),
            &format!("{b}attn_output.weight"),
        )?;
        for (proj, gg) in [
            ("q_proj", "attn_q"),
            ("k_proj", "attn_k"),
            ("v_proj", "attn_v"),
        ] {
            let bias = format!("{h}self_attn.{proj}.bias");
            if e.tensors.contains_key(&bias) {
                e.copy(&bias, &format!("{b}{gg}.bias"))?;
            }
        }
        for (proj, gg) in [
            ("gate_proj", "ffn_gate"),
            ("up_proj", "ffn_up"),
            ("down_proj", "ffn_down"),
        ] {
            e.copy(&format!("{h}mlp.{proj}.weight"), &format!("{b}{gg}.weight"))?;
        }
    }
    e.copy("model.norm.weight", "output_norm.weight")?;
    // Tied models have no lm_head; llama.cpp then reads token_embd.
    if e.tensors.contains_key("lm_head.weight") {
        e.copy("lm_head.weight", "output.weight")?;
    }
    Ok(())
}

/// Llama 3's per-frequency divisors, as convert_hf_to_gguf.py computes them.
fn llama3_rope_factors(s: &Json, theta: f64, head_dim: usize, cfg: &Config) -> Vec<f32> {
    let factor = s["factor"].as_f64().unwrap_or(8.0);
    let low = s["low_freq_factor"].as_f64().unwrap_or(1.0);
    let high = s["high_freq_factor"].as_f64().unwrap_or(4.0);
    let old_context = s["original_max_position_embeddings"]
        .as_f64()
        .or_else(|| cfg.float("original_max_position_embeddings"))
        .unwrap_or(8192.0);
    let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32) as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}
