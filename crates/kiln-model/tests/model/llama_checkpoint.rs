//! Llama-family checkpoints both ways: kiln's save/load round trip, HF
//! sharded directories in bf16 and f16, the refusals (each naming its
//! config key), and transformers' `from_pretrained` on what kiln writes
//! (live: skipped without python3 + torch + transformers + numpy).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kiln_abi::BackendBox;
use kiln_model::{Gpt, GptConfig, LlamaFamily, CONFIG_FILE, SHARD_INDEX_FILE, WEIGHTS_FILE};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::backend;
use crate::llama_reference::{assert_close, fixture_dir};

const FIXTURES: [&str; 4] = ["llama_tiny", "llama3_tiny", "qwen2_tiny", "mistral_tiny"];

fn load(be: &mut BackendBox, dir: &Path) -> Gpt {
    Gpt::load_pretrained(be, dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn save_then_load_is_bit_exact_and_keeps_the_layout() {
    let mut be = backend();
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let hf_dir = fixture_dir(name).join("model");
        let gpt = load(&mut be, &hf_dir);
        let out = tmp.path().join(name);
        gpt.save_pretrained(&mut be, &out).unwrap();
        let again = load(&mut be, &out);
        assert_eq!(again.config, gpt.config, "{name}");
        let (a, b) = (
            gpt.read_params(&mut be).unwrap(),
            again.read_params(&mut be).unwrap(),
        );
        for ((p, x), y) in gpt.params().iter().zip(&a).zip(&b) {
            assert_eq!(bits(x), bits(y), "{name} {}", p.name);
        }
        // Same tensor names and shapes as transformers' own save_pretrained.
        let names = |dir: &Path| -> BTreeMap<String, Vec<usize>> {
            let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            st.tensors()
                .into_iter()
                .map(|(n, t)| (n, t.shape().to_vec()))
                .collect()
        };
        assert_eq!(names(&out), names(&hf_dir), "{name}");
        let (ours, theirs) = (
            read_json(&out.join(CONFIG_FILE)),
            read_json(&hf_dir.join(CONFIG_FILE)),
        );
        for key in [
            "architectures",
            "model_type",
            "num_key_value_heads",
            "tie_word_embeddings",
            "intermediate_size",
            "rms_norm_eps",
        ] {
            assert_eq!(ours[key], theirs[key], "{name}: {key}");
        }
        gpt.release(&mut be).unwrap();
        again.release(&mut be).unwrap();
    }
}

/// Writes the fixture's tensors as `shards` files in `dtype` with an index.
fn write_sharded(src: &Path, dst: &Path, dtype: Dtype, shards: usize) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join(CONFIG_FILE), dst.join(CONFIG_FILE)).unwrap();
    let bytes = std::fs::read(src.join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let f: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let data: Vec<u8> = match dtype {
                Dtype::BF16 => f
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
                Dtype::F16 => f
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
                _ => unreachable!(),
            };
            (n, t.shape().to_vec(), data)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let per = tensors.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .map(|(n, shape, data)| {
                map.insert(n.clone(), Value::String(file.clone()));
                (
                    n.clone(),
                    TensorView::new(dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dst.join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dst.join(SHARD_INDEX_FILE), index.to_string()).unwrap();
}

#[test]
fn sharded_bf16_and_f16_directories_load_with_the_rounded_weights() {
    let mut be = backend();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama_tiny", "qwen2_tiny"] {
        let src = fixture_dir(name).join("model");
        let f32_model = load(&mut be, &src);
        let want = f32_model.read_params(&mut be).unwrap();
        for (dtype, round) in [
            (
                Dtype::BF16,
                (|x: f32| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32,
            ),
            (Dtype::F16, |x: f32| half::f16::from_f32(x).to_f32()),
        ] {
            let dir = tmp.path().join(format!("{name}_{dtype:?}"));
            write_sharded(&src, &dir, dtype, 3);
            let gpt = load(&mut be, &dir);
            assert_eq!(gpt.config, f32_model.config);
            let got = gpt.read_params(&mut be).unwrap();
            for ((p, g), w) in gpt.params().iter().zip(&got).zip(&want) {
                let rounded: Vec<f32> = w.iter().map(|&x| round(x)).collect();
                assert_eq!(bits(g), bits(&rounded), "{name} {dtype:?} {}", p.name);
            }
            gpt.release(&mut be).unwrap();
        }
        f32_model.release(&mut be).unwrap();
    }
}

/// A copy of `fixture`'s model directory with `edit` applied to its config.
fn edited(
    tmp: &Path,
    fixture: &str,
    tag: &str,
    edit: impl FnOnce(&mut Value),
) -> std::path::PathBuf {
    let src = fixture_dir(fixture).join("model");
    let dir = tmp.join(format!("{fixture}_{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join(WEIGHTS_FILE), dir.join(WEIGHTS_FILE)).unwrap();
    let mut cfg = read_json(&src.join(CONFIG_FILE));
    edit(&mut cfg);
    std::fs::write(dir.join(CONFIG_FILE), cfg.to_string()).unwrap();
    dir
}

#[test]
fn what_kiln_cannot_run_is_refused_by_its_key() {
    let mut be = backend();
    let tmp = tempfile::tempdir().unwrap();
    // (fixture, tag, config edit, words the error must contain)
    type Case = (
        &'static str,
        &'static str,
        Box<dyn FnOnce(&mut Value)>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "llama_tiny",
            "quantized",
            Box::new(|c| c["quantization_config"] = serde_json::json!({"quant_method": "gptq"})),
            &["quantization_config", "config.json"],
        ),
        (
            "llama_tiny",
            "phi3",
            Box::new(|c| c["model_type"] = "phi3".into()),
            &["model_type", "phi3"],
        ),
        (
            "llama_tiny",
            "yarn",
            Box::new(|c| c["rope_parameters"]["rope_type"] = "yarn".into()),
            &["rope_parameters.rope_type", "yarn"],
        ),
        (
            "llama_tiny",
            "legacy_dynamic",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0});
            }),
            &["rope_scaling.rope_type", "dynamic"],
        ),
        (
            "qwen2_tiny",
            "windowed",
            Box::new(|c| c["use_sliding_window"] = true.into()),
            &["use_sliding_window"],
        ),
        (
            "llama_tiny",
            "gelu",
            Box::new(|c| c["hidden_act"] = "gelu".into()),
            &["hidden_act", "gelu"],
        ),
        (
            "llama_tiny",
            "o_bias",
            Box::new(|c| c["attention_bias"] = true.into()),
            &["attention_bias"],
        ),
        (
            "llama_tiny",
            "head_dim",
            Box::new(|c| c["head_dim"] = 16.into()),
            &["head_dim", "16"],
        ),
        (
            "llama_tiny",
            "kv_heads",
            Box::new(|c| c["num_key_value_heads"] = 3.into()),
            &["num_key_value_heads"],
        ),
    ];
    for (fixture, tag, edit, words) in cases {
        let dir = edited(tmp.path(), fixture, tag, edit);
        let e = match Gpt::load_pretrained(&mut be, &dir) {
            Ok(_) => panic!("{tag}: loaded"),
            Err(e) => e.to_string(),
        };
        for w in words {
            assert!(e.contains(w), "{tag}: {e:?} does not name {w:?}");
        }
    }
    // A tied config whose file holds a different lm_head is refused too.
    let dir = edited(tmp.path(), "llama_tiny", "tied", |c| {
        c["tie_word_embeddings"] = true.into()
    });
    let e = Gpt::load_pretrained(&mut be, &dir)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
}

#[test]
fn a_legacy_rope_theta_and_rope_scaling_config_reads_the_same() {
    let mut be = backend();
    let tmp = tempfile::tempdir().unwrap();
    let new_style = load(&mut be, &fixture_dir("llama3_tiny").join("model"));
    let dir = edited(tmp.path(), "llama3_tiny", "legacy", |c| {
        let rope = c
            .as_object_mut()
            .unwrap()
            .remove("rope_parameters")
            .unwrap();
        c["rope_theta"] = rope["rope_theta"].clone();
        c["rope_scaling"] = rope;
    });
    let old_style = load(&mut be, &dir);
    assert_eq!(old_style.config, new_style.config);
    assert!(old_style
        .config
        .llama
        .as_ref()
        .unwrap()
        .rope_scaling
        .is_some());
}

/// Loads a kiln checkpoint with transformers and writes its logits for the
/// given tokens as little-endian f32.
const HF_LOAD: &str = r#"
import sys, numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager").float().eval()
assert type(model).__name__ == sys.argv[4], type(model).__name__
tokens = torch.tensor([[int(x) for x in sys.argv[3].split(",")]])
with torch.no_grad():
    logits = model(input_ids=tokens).logits
np.asarray(logits.numpy(), dtype="<f4").tofile(sys.argv[2])
"#;

fn have_transformers() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, transformers, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn transformers_loads_kiln_llama_checkpoints_with_the_same_logits() {
    if !have_transformers() {
        eprintln!("skipped: python3 with torch, transformers and numpy is not available");
        return;
    }
    let mut be = backend();
    let tmp = tempfile::tempdir().unwrap();
    // Kiln-born models of each family (kiln's init, perturbed so that norms
    // and biases are not at their initial values), and a fixture re-saved.
    let mut models: Vec<(String, Gpt)> = Vec::new();
    for (family, tied, window) in [
        (LlamaFamily::Llama, false, None),
        (LlamaFamily::Qwen2, true, None),
        (LlamaFamily::Mistral, false, Some(4)),
    ] {
        let mut cfg = GptConfig::new_llama(family, 50, 32, 2, 4, 2, 16, 24, tied);
        cfg.llama.as_mut().unwrap().sliding_window = window;
        cfg.llama.as_mut().unwrap().rope_theta = 500.0;
        let mut gpt = Gpt::new(&mut be, cfg, 3).unwrap();
        let mut values = gpt.read_params(&mut be).unwrap();
        let mut rng = kiln_model::Rng::new(9);
        for v in &mut values {
            for x in v.iter_mut() {
                *x += 0.05 * rng.normal();
            }
        }
        // padding rows of the vocabulary tables stay 0
        let (v, c) = (50, 16);
        for (p, vals) in gpt.params().iter().zip(&mut values) {
            if crate::is_vocab_table(&p.name) {
                vals[v * c..].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        gpt.write_params(&mut be, &values).unwrap();
        models.push((format!("{family:?}"), gpt));
    }
    models.push((
        "llama3_tiny".into(),
        load(&mut be, &fixture_dir("llama3_tiny").join("model")),
    ));
    for (name, mut gpt) in models {
        let ckpt = tmp.path().join(&name);
        gpt.save_pretrained(&mut be, &ckpt).unwrap();
        let v = gpt.config.vocab_size as u32;
        let tokens: Vec<u32> = (0..12).map(|i| (i * 37 + 11) % v).collect();
        let ids = tokens
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let out = tmp.path().join(format!("{name}.f32"));
        let class = gpt.config.llama.as_ref().unwrap().family.architecture();
        let run = Command::new("python3")
            .args(["-c", HF_LOAD])
            .arg(&ckpt)
            .arg(&out)
            .arg(&ids)
            .arg(class)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: transformers could not load the kiln checkpoint:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let hf: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        gpt.forward(&mut be, &tokens, None, 1, tokens.len())
            .unwrap();
        let worst = assert_close(
            &format!("{name}: HF logits of a kiln checkpoint"),
            &gpt.logits(&mut be).unwrap(),
            &hf,
            1e-5,
        );
        eprintln!("{name}: transformers' logits of kiln's checkpoint within {worst:.2e} x max_abs");
        gpt.release(&mut be).unwrap();
    }
}
