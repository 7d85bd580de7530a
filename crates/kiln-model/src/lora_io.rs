//! LoRA adapters on disk in PEFT's format: `adapter_config.json` +
//! `adapter_model.safetensors` with PEFT's tensor names
//! (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`), so
//! `PeftModel.from_pretrained(base, DIR)` loads what kiln writes and kiln
//! loads what PEFT writes. PEFT options kiln does not compute (DoRA,
//! rsLoRA, per-module ranks, biases, extra saved modules, ...) are refused
//! with their key; `merge` folds an adapter into the base weights.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_abi::{BackendBox, BackendExt};
use safetensors::SafeTensors;
use serde_json::{json, Value};

use crate::checkpoint::{to_f32, write_dir_atomic};
use crate::lora::{peft_tensor_name, LoraConfig, LoraTarget};
use crate::safetensors_stream::{write_f32_tensors, StreamError, TensorSpec};
use crate::{Gpt, ModelError};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Reads and checks `DIR/adapter_config.json`.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, ModelError> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&path, format!("not JSON: {e}")))?;
    let bad = |key: &str, why: String| ModelError::format(&path, format!("{key}: {why}"));
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(bad(
                "peft_type",
                format!("{other:?}; kiln reads LoRA adapters (\"LORA\") only"),
            ))
        }
    }
    let rank =
        v.get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("r", "missing or not a positive integer".into()))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("lora_alpha", "missing or not a number".into()))? as f32;
    // Options that change the computation: kiln refuses rather than ignores them.
    for key in ["use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"] {
        if v.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                key,
                "true is not supported by kiln (only plain LoRA)".into(),
            ));
        }
    }
    if let Some(b) = v.get("bias").and_then(Value::as_str) {
        if b != "none" {
            return Err(bad("bias", format!("{b:?}; kiln supports \"none\"")));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(key, "per-module ranks/alphas are not supported".into()));
        }
    }
    for key in [
        "layers_to_transform",
        "modules_to_save",
        "target_parameters",
    ] {
        match v.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(other) => {
                return Err(bad(
                    key,
                    format!("{other} is not supported (expected null)"),
                ))
            }
        }
    }
    let modules: Vec<String> = match v.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| {
                m.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("target_modules", format!("{m} is not a string")))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(
                "target_modules",
                format!("{other:?}; kiln needs a list of module names (q_proj, ..., down_proj)"),
            ))
        }
    };
    let mut targets = Vec::new();
    for m in &modules {
        targets.push(LoraTarget::parse(m).map_err(|e| bad("target_modules", e.to_string()))?);
    }
    let targets = LoraTarget::ALL
        .into_iter()
        .filter(|t| targets.contains(t))
        .collect();
    Ok(LoraConfig {
        rank,
        alpha,
        targets,
    })
}

impl Gpt {
    /// Loads a PEFT LoRA adapter directory onto this (base) model.
    pub fn load_lora(&mut self, be: &mut BackendBox, dir: &Path) -> Result<(), ModelError> {
        let config = read_adapter_config(dir)?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| ModelError::format(&path, format!("not safetensors: {e}")))?;
        let mut values = Vec::new();
        let mut expected = Vec::new();
        for layer in 0..self.config.n_layer {
            for &target in &config.targets {
                for ab in ['A', 'B'] {
                    let name = peft_tensor_name(layer, target, ab);
                    let t = st.tensor(&name).map_err(|_| {
                        ModelError::format(
                            &path,
                            format!(
                                "tensor {name} is missing; the adapter does not fit this \
                                 base model ({} layers)",
                                self.config.n_layer
                            ),
                        )
                    })?;
                    values.push(to_f32(&path, &name, t.dtype(), t.data())?);
                    expected.push((name, t.shape().to_vec()));
                }
            }
        }
        if let Some(extra) = st
            .names()
            .into_iter()
            .find(|n| !expected.iter().any(|(e, _)| e == *n))
        {
            return Err(ModelError::format(
                &path,
                format!("tensor {extra} is not one kiln's LoRA computes with; refused"),
            ));
        }
        self.add_lora_values(be, config, &values)
            .map_err(|e| match e {
                ModelError::Input(p) => ModelError::format(&path, p),
                other => other,
            })
    }

    /// Writes the adapters as a PEFT directory (atomically).
    /// `base_model` goes to `base_model_name_or_path`.
    pub fn save_lora(
        &self,
        be: &mut BackendBox,
        dir: &Path,
        base_model: &str,
    ) -> Result<(), ModelError> {
        let lora = self
            .lora()
            .ok_or_else(|| ModelError::Config("the model has no LoRA adapters to save".into()))?;
        let c = &lora.config;
        let modules: Vec<&str> = c.targets.iter().map(|t| t.module()).collect();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": 0.0,
            "target_modules": modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let params = self.lora_params();
        let tensors: Vec<TensorSpec> = params
            .iter()
            .map(|p| TensorSpec::new(p.name.clone(), p.shape.clone()))
            .collect();
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_dir_atomic(dir, |tmp| {
            let cpath = tmp.join(ADAPTER_CONFIG_FILE);
            let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
            std::fs::write(&cpath, text + "\n").map_err(|e| ModelError::io(&cpath, e))?;
            let path = tmp.join(ADAPTER_WEIGHTS_FILE);
            write_f32_tensors(&path, &tensors, &metadata, |i| -> Result<_, ModelError> {
                Ok(be.download_f32(params[i].value)?)
            })
            .map_err(|e| match e {
                StreamError::Io(e) => ModelError::io(&path, e),
                StreamError::Produce(e) => e,
            })
        })
    }

    /// Folds the adapters into the base weights (`W += alpha/r * B A`, in
    /// f64 on the host, rounded once) and drops them: the model then is
    /// the merged model, saved with [`Gpt::save_pretrained`]. Its weights
    /// stay frozen (no gradient buffers); [`Gpt::unfreeze_base`] to train them.
    pub fn merge_lora(&mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        let lora = self
            .lora
            .take()
            .ok_or_else(|| ModelError::Config("the model has no LoRA adapters to merge".into()))?;
        let scale = lora.config.scale() as f64;
        let r = lora.config.rank;
        for (i, ad) in lora.adapters.iter().enumerate() {
            let a = be.download_f32(lora.params[2 * i].value)?;
            let b = be.download_f32(lora.params[2 * i + 1].value)?;
            let name = format!("model.layers.{}.{}.weight", ad.layer, ad.target.path());
            let p = self
                .params
                .iter()
                .find(|p| p.name == name)
                .expect("every adapter has its base weight");
            let mut w = be.download_f32(p.value)?;
            for o in 0..ad.out_f {
                for k in 0..ad.in_f {
                    let delta: f64 = (0..r)
                        .map(|j| b[o * r + j] as f64 * a[j * ad.in_f + k] as f64)
                        .sum();
                    let x = &mut w[o * ad.in_f + k];
                    *x = (*x as f64 + scale * delta) as f32;
                }
            }
            be.upload_f32(p.value, &w)?;
        }
        self.refresh_compute_weights(be)?;
        lora.release(be)
    }
}
