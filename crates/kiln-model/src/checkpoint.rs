//! Checkpoints in Hugging Face's GPT-2 format: `model.safetensors` (HF tensor
//! names, Conv1D `[in, out]` layout, real vocabulary rows only, lm_head tied
//! so absent) plus a `config.json` that `GPT2LMHeadModel.from_pretrained`
//! loads. A directory is written under a temporary name and renamed into
//! place, so it is complete or absent.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_abi::{BackendBox, BackendExt};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};

use crate::checkpoint_llama;
use crate::params::{self, ParamSpec, WTE};
use crate::safetensors_stream::{write_f32_tensors, StreamError, TensorSpec};
pub use crate::special_ids::{SpecialTokenIds, GENERATION_CONFIG_FILE};
use crate::{Gpt, GptConfig, ModelError};

pub const WEIGHTS_FILE: &str = "model.safetensors";
/// A sharded checkpoint's `weight_map` (tensor name -> shard file).
pub const SHARD_INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";

/// Tensors HF checkpoints may carry that kiln does not need (the causal-mask
/// buffers of old transformers versions).
const IGNORED_SUFFIXES: [&str; 2] = [".attn.bias", ".attn.masked_bias"];

/// What a model directory holds beside the transformer, in the layouts
/// transformers loads: special-token ids, the architecture and further
/// `config.json` keys, extra tensors in `model.safetensors` (a
/// classification head) and extra files (tokenizer files).
#[derive(Debug, Clone, Default)]
pub struct HfExtras {
    pub special: SpecialTokenIds,
    /// `config.json`'s `architectures` entry; `GPT2LMHeadModel` if `None`.
    pub architecture: Option<String>,
    /// Further `config.json` keys (e.g. `num_labels`); they win over kiln's.
    pub config: Map<String, Value>,
    /// Extra tensors `(name, shape, row-major values)` saved as F32.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Parameters saved with these values (kiln layout) instead of the
    /// backend's: `(HF name, values)`.
    pub param_overrides: Vec<(String, Vec<f32>)>,
    /// Further files `(name, bytes)` written into the directory.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A directory read by [`Gpt::load_pretrained_with`]: the model, its
/// special-token ids and the extra tensors asked for.
pub struct LoadedDir {
    pub model: Gpt,
    pub special: SpecialTokenIds,
    /// `name -> (shape, values)` of each requested extra tensor present.
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Gpt {
    /// Writes `dir/model.safetensors`, `dir/config.json` and
    /// `dir/generation_config.json` atomically (replacing an existing
    /// directory of that name). No special-token ids are known here: they
    /// are written as `null` (see [`Gpt::save_pretrained_with`]).
    pub fn save_pretrained(&self, be: &mut BackendBox, dir: &Path) -> Result<(), ModelError> {
        self.save_pretrained_with(be, dir, &HfExtras::default())
    }

    /// [`Gpt::save_pretrained`] with the ids, head and files of `extras`.
    ///
    /// The weights stream to the file one tensor at a time (downloaded,
    /// laid out as HF stores it, written, dropped): saving adds about one
    /// tensor to the process's memory, not a copy of the model.
    pub fn save_pretrained_with(
        &self,
        be: &mut BackendBox,
        dir: &Path,
        extras: &HfExtras,
    ) -> Result<(), ModelError> {
        let weights_path = dir.join(WEIGHTS_FILE);
        let vocab = self.config.vocab_size;
        for (key, id) in [("bos", extras.special.bos), ("pad", extras.special.pad)]
            .into_iter()
            .chain(extras.special.eos.iter().map(|&e| ("eos", Some(e))))
        {
            if id.is_some_and(|id| id as usize >= vocab) {
                return Err(ModelError::format(
                    dir,
                    format!("{key}_token_id {id:?} is outside the vocabulary of {vocab} tokens"),
                ));
            }
        }
        let specs = params::specs(&self.config);
        let mut overrides: HashMap<usize, &Vec<f32>> = HashMap::new();
        for (name, v) in &extras.param_overrides {
            let k = specs.iter().position(|s| &s.name == name).ok_or_else(|| {
                ModelError::format(&weights_path, format!("no parameter {name} to override"))
            })?;
            let len: usize = specs[k].shape.iter().product();
            if v.len() != len {
                return Err(ModelError::format(
                    &weights_path,
                    format!("override of {name} has {} values, not {len}", v.len()),
                ));
            }
            overrides.insert(k, v);
        }
        for (name, shape, v) in &extras.tensors {
            if specs.iter().any(|s| &s.name == name) || shape.iter().product::<usize>() != v.len() {
                return Err(ModelError::format(
                    &weights_path,
                    format!(
                        "extra tensor {name}: a parameter's name, or {} values for shape {shape:?}",
                        v.len()
                    ),
                ));
            }
        }
        let tensors: Vec<TensorSpec> = specs
            .iter()
            .map(|spec| TensorSpec::new(spec.name.clone(), hf_shape(spec, &self.config)))
            .chain(
                extras
                    .tensors
                    .iter()
                    .map(|(name, shape, _)| TensorSpec::new(name.clone(), shape.clone())),
            )
            .collect();
        let mut config = match self.config.llama {
            None => hf_config_json(&self.config),
            Some(_) => checkpoint_llama::config_json(&self.config),
        };
        let obj = config.as_object_mut().expect("the config is an object");
        obj.extend(extras.special.config_entries());
        if let Some(arch) = &extras.architecture {
            obj.insert("architectures".into(), json!([arch]));
        }
        obj.extend(extras.config.clone());
        let pretty =
            |v: &Value| serde_json::to_vec_pretty(v).expect("a JSON value always serialises");
        let config = pretty(&config);
        let generation = pretty(&extras.special.generation_config());
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_dir_atomic(dir, |tmp| {
            let path = tmp.join(WEIGHTS_FILE);
            write_f32_tensors(&path, &tensors, &metadata, |i| -> Result<_, ModelError> {
                if i >= specs.len() {
                    return Ok(extras.tensors[i - specs.len()].2.clone());
                }
                let v = match overrides.get(&i) {
                    Some(v) => (*v).clone(),
                    None => be.download_f32(self.params()[i].value)?,
                };
                Ok(to_hf(&specs[i], v, &self.config))
            })
            .map_err(|e| match e {
                StreamError::Io(e) => ModelError::io(&path, e),
                StreamError::Produce(e) => e,
            })?;
            let small: Vec<(&str, &[u8])> = [
                (CONFIG_FILE, config.as_slice()),
                (GENERATION_CONFIG_FILE, generation.as_slice()),
            ]
            .into_iter()
            .chain(extras.files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
            .collect();
            for (name, bytes) in small {
                let p = tmp.join(name);
                kiln_stdx::fs::write_atomic(&p, bytes).map_err(|e| ModelError::io(&p, e))?;
            }
            Ok(())
        })
    }

    /// Loads a directory written by [`Gpt::save_pretrained`] or by HF
    /// `save_pretrained` (any vocabulary size; names with or without the
    /// `transformer.` prefix; an `lm_head.weight` must equal `wte`).
    /// Special-token ids outside the vocabulary are an error naming the key.
    pub fn load_pretrained(be: &mut BackendBox, dir: &Path) -> Result<Gpt, ModelError> {
        Ok(Self::load_pretrained_with(be, dir, &[])?.model)
    }

    /// [`Gpt::load_pretrained`] that also returns the special-token ids and
    /// the tensors named in `extra` (e.g. a `score.weight` head) where the
    /// file has them; other unknown tensors are still an error.
    pub fn load_pretrained_with(
        be: &mut BackendBox,
        dir: &Path,
        extra: &[&str],
    ) -> Result<LoadedDir, ModelError> {
        load_dir(be, dir, extra, true)
    }

    /// [`Gpt::load_pretrained`] with every weight frozen: no gradient
    /// buffers (a LoRA base, a reference model, inference). Backward still
    /// runs and gives input gradients; [`Gpt::unfreeze_base`] makes it trainable.
    pub fn load_pretrained_frozen(be: &mut BackendBox, dir: &Path) -> Result<Gpt, ModelError> {
        Ok(load_dir(be, dir, &[], false)?.model)
    }

    /// [`Gpt::load_pretrained_with`] with every weight frozen (see
    /// [`Gpt::load_pretrained_frozen`]).
    pub fn load_pretrained_frozen_with(
        be: &mut BackendBox,
        dir: &Path,
        extra: &[&str],
    ) -> Result<LoadedDir, ModelError> {
        load_dir(be, dir, extra, false)
    }
}

/// Loads `dir`, with gradient buffers when `grads`. The files' bytes are
/// dropped once decoded and each host tensor once uploaded, so the peak is
/// about two copies of the weights, not three.
fn load_dir(
    be: &mut BackendBox,
    dir: &Path,
    extra: &[&str],
    grads: bool,
) -> Result<LoadedDir, ModelError> {
    let config = read_hf_config(&dir.join(CONFIG_FILE))?;
    let special = SpecialTokenIds::read(dir, config.vocab_size)?;
    let path = dir.join(WEIGHTS_FILE);
    let index = dir.join(SHARD_INDEX_FILE);
    let files = if !path.exists() && index.exists() {
        shard_files(&index)?
    } else {
        vec![path]
    };
    let mut blobs = Vec::with_capacity(files.len());
    for f in &files {
        blobs.push(std::fs::read(f).map_err(|e| ModelError::io(f, e))?);
    }
    let (values, tensors) = read_weights(&files, &blobs, &config, extra)?;
    drop(blobs);
    let model = Gpt::from_values(be, config, values, grads)?;
    Ok(LoadedDir {
        model,
        special,
        tensors,
    })
}

/// A kiln-layout parameter's values as HF stores them (row-major, in
/// [`hf_shape`]'s shape).
fn to_hf(spec: &ParamSpec, mut v: Vec<f32>, cfg: &GptConfig) -> Vec<f32> {
    if spec.hf_transposed {
        let (rows, cols) = (spec.shape[0], spec.shape[1]);
        transpose(&v, rows, cols)
    } else {
        if spec.vocab_rows {
            // In place: a copy of the largest tensor would double what
            // saving adds to peak memory.
            v.truncate(cfg.vocab_size * cfg.n_embd);
        }
        v
    }
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

fn hf_config_json(cfg: &GptConfig) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "add_cross_attention": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "dtype": "float32",
        "kiln_padded_vocab_size": cfg.padded_vocab_size,
    })
}

/// Parses an HF GPT-2 `config.json`, refusing settings that change the maths.
fn read_hf_config(path: &Path) -> Result<GptConfig, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
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
    if v.get("quantization_config").is_some_and(|q| !q.is_null()) {
        return Err(bad(
            "\"quantization_config\": quantized checkpoints are not supported \
             (kiln reads f32, bf16 and f16 weights); use the unquantized model"
                .into(),
        ));
    }
    if let Some(mt) = v.get("model_type").and_then(Value::as_str) {
        if let Some(family) = checkpoint_llama::family_of(mt) {
            return checkpoint_llama::read_config(path, &v, family);
        }
        if mt != "gpt2" {
            return Err(bad(format!(
                "\"model_type\": {mt:?} is not supported; kiln loads \"gpt2\", \"llama\", \
                 \"mistral\" and \"qwen2\""
            )));
        }
    }
    let vocab = need("vocab_size")?;
    let positions = match int("n_positions")? {
        Some(n) => n,
        None => need("n_ctx")?,
    };
    let (n_embd, n_layer, n_head) = (need("n_embd")?, need("n_layer")?, need("n_head")?);
    let eps = match v.get("layer_norm_epsilon") {
        None | Some(Value::Null) => 1e-5,
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad(format!("\"layer_norm_epsilon\" must be a number, got {x}")))?
            as f32,
    };
    let act = v
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new");
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
        return Err(bad(format!(
            "activation_function {act:?} is not supported (kiln uses GELU with the tanh approximation: \"gelu_new\")"
        )));
    }
    if let Some(inner) = int("n_inner")? {
        if inner != 4 * n_embd {
            return Err(bad(format!(
                "n_inner {inner} is not supported (kiln's MLP width is 4 * n_embd = {})",
                4 * n_embd
            )));
        }
    }
    let flag = |key: &str, default: bool| v.get(key).and_then(Value::as_bool).unwrap_or(default);
    for (key, want) in [
        ("tie_word_embeddings", true),
        ("scale_attn_weights", true),
        ("scale_attn_by_inverse_layer_idx", false),
        ("add_cross_attention", false),
    ] {
        if flag(key, want) != want {
            return Err(bad(format!(
                "\"{key}\": {} is not supported (kiln needs {want})",
                !want
            )));
        }
    }
    let mut cfg = GptConfig::new(vocab, positions, n_layer, n_head, n_embd);
    cfg.layer_norm_eps = eps;
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// The shard files a `model.safetensors.index.json` names, in first-use order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(index, format!("invalid JSON: {e}")))?;
    let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
        return Err(ModelError::format(
            index,
            "missing \"weight_map\" (tensor name -> shard file)",
        ));
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let Some(file) = file
            .as_str()
            .filter(|f| !f.contains('/') && !f.contains(".."))
        else {
            return Err(ModelError::format(
                index,
                format!("\"weight_map\".{name}: {file} is not a file name in this directory"),
            ));
        };
        let path = dir.join(file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Reads every parameter of `cfg` from safetensors files (one, or the
/// shards of an index) into kiln layout. Also returns the tensors named in
/// `extra` that the files hold.
#[allow(clippy::type_complexity)]
fn read_weights(
    paths: &[PathBuf],
    blobs: &[Vec<u8>],
    cfg: &GptConfig,
    extra: &[&str],
) -> Result<(Vec<Vec<f32>>, HashMap<String, (Vec<usize>, Vec<f32>)>), ModelError> {
    let mut files = Vec::with_capacity(blobs.len());
    for (path, bytes) in paths.iter().zip(blobs) {
        files.push(
            SafeTensors::deserialize(bytes).map_err(|e| {
                ModelError::format(path, format!("not a valid safetensors file: {e}"))
            })?,
        );
    }
    let path = paths[0].as_path();
    let llama = cfg.llama.is_some();
    let specs = params::specs(cfg);
    // Map each stored name to the canonical HF name (GPT-2: "transformer."
    // optional) and the file holding it.
    let mut stored: HashMap<String, (usize, String)> = HashMap::new();
    let mut unknown = Vec::new();
    let mut extras = HashMap::new();
    let mut tied_head: Option<usize> = None;
    let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for (fi, st) in files.iter().enumerate() {
        for name in st.names() {
            if extra.contains(&name) {
                let t = st
                    .tensor(name)
                    .map_err(|e| ModelError::format(&paths[fi], format!("tensor {name}: {e}")))?;
                let data = to_f32(&paths[fi], name, t.dtype(), t.data())?;
                extras.insert(name.to_string(), (t.shape().to_vec(), data));
                continue;
            }
            let canonical =
                if llama || name.starts_with("transformer.") || name.starts_with("lm_head.") {
                    name.to_string()
                } else {
                    format!("transformer.{name}")
                };
            if known.contains(canonical.as_str()) {
                stored.insert(canonical, (fi, name.to_string()));
            } else if canonical == "lm_head.weight" {
                // a tied head: checked against the embedding below
                tied_head = Some(fi);
            } else if llama && name.ends_with(".rotary_emb.inv_freq") {
                // older transformers saved RoPE's buffer; kiln recomputes it
            } else if !IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                unknown.push(name.to_string());
            }
        }
    }
    let kind = match &cfg.llama {
        None => "GPT-2",
        Some(l) => l.family.architecture(),
    };
    if !unknown.is_empty() {
        unknown.sort();
        return Err(ModelError::format(
            path,
            format!(
                "unexpected tensors for a {kind} of this config: {}",
                unknown.join(", ")
            ),
        ));
    }
    let mut values = Vec::with_capacity(specs.len());
    for spec in &specs {
        let Some((fi, stored_name)) = stored.get(&spec.name) else {
            return Err(ModelError::format(
                path,
                format!("missing tensor {} (config {})", spec.name, describe(cfg)),
            ));
        };
        let path = paths[*fi].as_path();
        let view = files[*fi]
            .tensor(stored_name)
            .map_err(|e| ModelError::format(path, format!("tensor {stored_name}: {e}")))?;
        let want = hf_shape(spec, cfg);
        if view.shape() != want.as_slice() {
            return Err(ModelError::format(
                path,
                format!(
                    "tensor {stored_name} has shape {:?}, config ({}) needs {:?}",
                    view.shape(),
                    describe(cfg),
                    want
                ),
            ));
        }
        let data = to_f32(path, stored_name, view.dtype(), view.data())?;
        values.push(from_hf(spec, data, cfg));
    }
    if let Some(fi) = tied_head {
        let path = paths[fi].as_path();
        let lm_head = files[fi]
            .tensor("lm_head.weight")
            .map_err(|e| ModelError::format(path, format!("tensor lm_head.weight: {e}")))?;
        let data = to_f32(path, "lm_head.weight", lm_head.dtype(), lm_head.data())?;
        let c = cfg.n_embd;
        if lm_head.shape() != [cfg.vocab_size, c] || data[..] != values[WTE][..cfg.vocab_size * c] {
            let problem = if llama {
                "lm_head.weight differs from model.embed_tokens.weight although \
                 \"tie_word_embeddings\" is true in config.json"
            } else {
                "lm_head.weight differs from transformer.wte.weight: untied output embeddings are not supported"
            };
            return Err(ModelError::format(path, problem));
        }
    }
    Ok((values, extras))
}

fn describe(cfg: &GptConfig) -> String {
    match &cfg.llama {
        None => format!(
            "vocab_size {}, n_positions {}, n_embd {}, n_layer {}, n_head {}",
            cfg.vocab_size, cfg.max_seq_len, cfg.n_embd, cfg.n_layer, cfg.n_head
        ),
        Some(l) => format!(
            "vocab_size {}, hidden_size {}, num_hidden_layers {}, num_attention_heads {}, \
             num_key_value_heads {}, intermediate_size {}, tie_word_embeddings {}",
            cfg.vocab_size,
            cfg.n_embd,
            cfg.n_layer,
            cfg.n_head,
            l.n_kv_head,
            l.intermediate_size,
            l.tie_word_embeddings
        ),
    }
}

fn hf_shape(spec: &ParamSpec, cfg: &GptConfig) -> Vec<usize> {
    if spec.hf_transposed {
        vec![spec.shape[1], spec.shape[0]]
    } else if spec.vocab_rows {
        vec![cfg.vocab_size, cfg.n_embd]
    } else {
        spec.shape.clone()
    }
}

/// HF layout values -> kiln layout (transpose Conv1D, pad wte rows with 0).
fn from_hf(spec: &ParamSpec, data: Vec<f32>, cfg: &GptConfig) -> Vec<f32> {
    if spec.hf_transposed {
        // stored [in, out] = [shape[1], shape[0]]
        transpose(&data, spec.shape[1], spec.shape[0])
    } else if spec.vocab_rows {
        let mut v = data;
        v.resize(cfg.padded_vocab_size * cfg.n_embd, 0.0);
        v
    } else {
        data
    }
}

/// A tensor's values as f32; a NaN or infinity is an error naming the
/// tensor (a diverged run's weights would evaluate to `null` and generate
/// garbage without a word).
pub(crate) fn to_f32(
    path: &Path,
    name: &str,
    dtype: Dtype,
    bytes: &[u8],
) -> Result<Vec<f32>, ModelError> {
    let values = decode_f32(path, name, dtype, bytes)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        return Err(ModelError::format(
            path,
            format!(
                "tensor {name} holds {bad} non-finite values (the first, at index {i}, is {}); \
                 the weights are broken, e.g. saved by a diverged run: use an earlier checkpoint",
                values[i]
            ),
        ));
    }
    Ok(values)
}

fn decode_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(ModelError::format(
                path,
                format!("tensor {name} has dtype {other:?}; kiln reads F32, F16 and BF16"),
            ))
        }
    })
}

/// `fill` writes into a fresh temporary directory next to `dir`, which is
/// then swapped into place: readers see the old directory, nothing, or the
/// new one.
pub(crate) fn write_dir_atomic(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let name = dir
        .file_name()
        .ok_or_else(|| ModelError::format(dir, "checkpoint path has no directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        fill(&tmp)?;
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
        }
        kiln_stdx::fs::rename_dir_atomic(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_round_trips() {
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let t = transpose(&v, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), v);
    }

    #[test]
    fn config_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, "{ not json").unwrap();
        let e = read_hf_config(&p).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("invalid JSON"),
            "{e}"
        );
        std::fs::write(
            &p,
            r#"{"vocab_size": 10, "n_positions": 8, "n_layer": 1, "n_head": 2}"#,
        )
        .unwrap();
        let e = read_hf_config(&p).unwrap_err().to_string();
        assert!(e.contains("n_embd"), "{e}");
        std::fs::write(
            &p,
            r#"{"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2, "activation_function": "relu"}"#,
        )
        .unwrap();
        let e = read_hf_config(&p).unwrap_err().to_string();
        assert!(e.contains("relu"), "{e}");
    }

    #[test]
    fn hf_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let cfg = GptConfig::new(301, 32, 2, 4, 32);
        std::fs::write(&p, serde_json::to_vec(&hf_config_json(&cfg)).unwrap()).unwrap();
        assert_eq!(read_hf_config(&p).unwrap(), cfg);
    }
}
