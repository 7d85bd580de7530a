//! `kiln export --gguf`: HF directories of each family (tests/fixtures/gguf/,
//! made by scripts/make_gguf_fixtures.py) as GGUF files. Always: the file's
//! structure read back here. With Python's `gguf` package (llama.cpp's own
//! reader): every tensor against the HF weights after llama.cpp's renaming,
//! transposes and q/k permutation; with `llama-cpp-python` too, llama.cpp's
//! token ids and logits against transformers' (scripts/gguf_check.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::cli::{kiln, s};

const FAMILIES: [&str; 4] = ["gpt2", "llama3", "qwen2", "mistral"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gguf")
        .join(name)
}

/// What this test reads of a GGUF file: metadata keys with their type ids,
/// and each tensor's dims (ggml order), type and offset.
pub(crate) struct Gguf {
    pub(crate) metadata: BTreeMap<String, (u32, Value)>,
    tensors: BTreeMap<String, (Vec<u64>, u32, u64)>,
    data_start: usize,
    len: usize,
}

pub(crate) fn read_gguf(path: &Path) -> Gguf {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3);
    let mut at = 8;
    let u32_at = |b: &[u8], at: &mut usize| {
        *at += 4;
        u32::from_le_bytes(b[*at - 4..*at].try_into().unwrap())
    };
    let u64_at = |b: &[u8], at: &mut usize| {
        *at += 8;
        u64::from_le_bytes(b[*at - 8..*at].try_into().unwrap())
    };
    let str_at = |b: &[u8], at: &mut usize| {
        let n = u64_at(b, at) as usize;
        *at += n;
        String::from_utf8(b[*at - n..*at].to_vec()).unwrap()
    };
    let (n_tensors, n_kv) = (u64_at(&b, &mut at), u64_at(&b, &mut at));
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = str_at(&b, &mut at);
        let ty = u32_at(&b, &mut at);
        let value = match ty {
            4 => Value::from(u32_at(&b, &mut at)),
            5 => Value::from(u32_at(&b, &mut at) as i32),
            6 => Value::from(f32::from_bits(u32_at(&b, &mut at))),
            7 => {
                at += 1;
                Value::from(b[at - 1] != 0)
            }
            8 => Value::from(str_at(&b, &mut at)),
            9 => {
                let elem = u32_at(&b, &mut at);
                let n = u64_at(&b, &mut at) as usize;
                for _ in 0..n {
                    match elem {
                        8 => {
                            str_at(&b, &mut at);
                        }
                        4..=6 => at += 4,
                        other => panic!("array of type {other}"),
                    }
                }
                Value::from(n)
            }
            other => panic!("metadata {key}: type {other}"),
        };
        metadata.insert(key, (ty, value));
    }
    let mut tensors = BTreeMap::new();
    for _ in 0..n_tensors {
        let name = str_at(&b, &mut at);
        let dims = (0..u32_at(&b, &mut at))
            .map(|_| u64_at(&b, &mut at))
            .collect();
        let ty = u32_at(&b, &mut at);
        let offset = u64_at(&b, &mut at);
        tensors.insert(name, (dims, ty, offset));
    }
    Gguf {
        metadata,
        tensors,
        data_start: at.next_multiple_of(32),
        len: b.len(),
    }
}

#[test]
fn every_family_exports_with_llama_cpp_names_and_aligned_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        for ty in ["f16", "q8_0"] {
            let out = dir.path().join(format!("{family}-{ty}.gguf"));
            let model = fixture(family).join("model");
            let o = kiln(&[
                "export",
                "--model",
                s(&model),
                "--gguf",
                s(&out),
                "--type",
                ty,
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let g = read_gguf(&out);
            let arch = g.metadata["general.architecture"]
                .1
                .as_str()
                .unwrap()
                .to_string();
            let config: Value =
                serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
            let layers = config["n_layer"]
                .as_u64()
                .or(config["num_hidden_layers"].as_u64())
                .unwrap();
            assert_eq!(g.metadata[&format!("{arch}.block_count")].1, layers);
            for key in [
                "tokenizer.ggml.model",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type",
            ] {
                assert!(g.metadata.contains_key(key), "{family}: no {key}");
            }
            let mut want = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
            for i in 0..layers {
                let names: &[&str] = if arch == "gpt2" {
                    &["attn_qkv", "attn_output", "ffn_up", "ffn_down"]
                } else {
                    &[
                        "attn_q",
                        "attn_k",
                        "attn_v",
                        "attn_output",
                        "ffn_gate",
                        "ffn_up",
                        "ffn_down",
                    ]
                };
                want.extend(names.iter().map(|n| format!("blk.{i}.{n}.weight")));
            }
            for name in &want {
                assert!(g.tensors.contains_key(name), "{family}: no tensor {name}");
            }
            let vocab = g.metadata["tokenizer.ggml.tokens"].1.as_u64().unwrap();
            assert_eq!(
                g.tensors["token_embd.weight"].0[1], vocab,
                "{family}: embedding rows"
            );
            for (name, (dims, ty_id, offset)) in &g.tensors {
                assert_eq!(offset % 32, 0, "{family} {name}");
                assert!(g.data_start + (*offset as usize) < g.len, "{family} {name}");
                if dims.len() == 1 {
                    assert_eq!(*ty_id, 0, "{family} {name}: vectors stay f32");
                } else if ty == "q8_0" && dims[0] % 32 == 0 {
                    assert_eq!(*ty_id, 8, "{family} {name}");
                } else {
                    assert_eq!(*ty_id, 1, "{family} {name}");
                }
            }
        }
    }
}

#[test]
fn what_cannot_be_exported_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    let src = fixture("llama3").join("model");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let out = dir.path().join("x.gguf");
    let export = || kiln(&["export", "--model", s(&model), "--gguf", s(&out)]);
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(
        model.join("config.json"),
        config.replace("\"llama\"", "\"falcon\""),
    )
    .unwrap();
    let o = export();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("model_type") && err.contains("falcon"),
        "{err}"
    );
    std::fs::write(model.join("config.json"), &config).unwrap();
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let o = export();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tokenizer.json"));
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn llama_cpp_reads_the_weights_kiln_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gguf_check.py");
    for family in FAMILIES {
        // Logits: llama.cpp keeps its KV cache in f16 even for an f32 model
        // (measured 1.7e-4 to 3.4e-4 of max-abs in f32, 1.1e-2 to 2.2e-2 in q8_0).
        for (ty, weight_tol, logit_tol) in [("f32", 0.0, 1e-3), ("q8_0", 0.005, 0.05)] {
            let out = dir.path().join(format!("{family}-{ty}.gguf"));
            let model = fixture(family).join("model");
            let o = kiln(&[
                "export",
                "--model",
                s(&model),
                "--gguf",
                s(&out),
                "--type",
                ty,
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let run = Command::new("python3")
                .arg(&script)
                .args(["--gguf", s(&out), "--model", s(&model), "--reference"])
                .arg(fixture(family).join("reference.json"))
                .output();
            let Ok(run) = run else {
                eprintln!("skipped: no python3");
                return;
            };
            if run.status.code() == Some(3) {
                eprintln!("skipped: python package gguf is not installed (pip install gguf)");
                return;
            }
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let v: Value = serde_json::from_slice(&run.stdout).unwrap();
            assert_eq!(v["missing"], Value::Array(vec![]), "{family} {ty}: {v}");
            assert_eq!(v["extra"], Value::Array(vec![]), "{family} {ty}: {v}");
            let err = v["worst_weight_error"].as_f64().unwrap();
            assert!(err <= weight_tol, "{family} {ty}: weights off by {err}");
            match &v["llama_cpp"] {
                Value::Null => {
                    eprintln!("{family} {ty}: llama-cpp-python absent; logits not checked")
                }
                cpp => {
                    assert_eq!(cpp["ids_match"], true, "{family} {ty}: tokenizer ids {cpp}");
                    let e = cpp["logit_error"].as_f64().unwrap();
                    assert!(e < logit_tol, "{family} {ty}: llama.cpp logits off by {e}");
                }
            }
        }
    }
}
