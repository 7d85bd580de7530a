//! save_pretrained / load_pretrained: exact round trips and clear errors.

use std::collections::HashMap;
use std::path::Path;

use kiln_model::{Gpt, GptConfig, HfExtras, SpecialTokenIds};
use safetensors::SafeTensors;

use crate::{backend, perturbed_model, tiny_config, tokens};

#[test]
fn round_trip_is_bit_exact_and_replaces_atomically() {
    let mut be = backend();
    let cfg = tiny_config();
    let gpt = perturbed_model(&mut be, cfg.clone(), 1);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpt");
    gpt.save_pretrained(&mut be, &dir).unwrap();
    let loaded = Gpt::load_pretrained(&mut be, &dir).unwrap();
    assert_eq!(loaded.config, cfg);
    assert_eq!(
        gpt.read_params(&mut be).unwrap(),
        loaded.read_params(&mut be).unwrap()
    );

    // Saving again over the directory replaces it; no temp dirs remain.
    let other = perturbed_model(&mut be, cfg.clone(), 2);
    other.save_pretrained(&mut be, &dir).unwrap();
    let reloaded = Gpt::load_pretrained(&mut be, &dir).unwrap();
    assert_eq!(
        other.read_params(&mut be).unwrap(),
        reloaded.read_params(&mut be).unwrap()
    );
    let names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["ckpt".to_string()]);
}

#[test]
fn file_holds_hf_names_layouts_and_real_vocab_rows() {
    let mut be = backend();
    let cfg = tiny_config();
    let mut gpt = perturbed_model(&mut be, cfg.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    gpt.save_pretrained(&mut be, dir.path()).unwrap();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let c = cfg.n_embd;
    assert_eq!(
        st.tensor("transformer.wte.weight").unwrap().shape(),
        [29, c]
    );
    assert_eq!(
        st.tensor("transformer.h.1.attn.c_attn.weight")
            .unwrap()
            .shape(),
        [c, 3 * c]
    );
    assert_eq!(
        st.tensor("transformer.h.0.mlp.c_proj.weight")
            .unwrap()
            .shape(),
        [4 * c, c]
    );
    assert!(st.tensor("lm_head.weight").is_err());
    assert_eq!(st.names().len(), 2 + 12 * cfg.n_layer + 2);
    // Conv1D layout: stored[i, o] == kiln[o, i].
    let kiln = &gpt.read_params(&mut be).unwrap()[4]; // h.0.attn.c_attn.weight [3C, C]
    let stored = st.tensor("transformer.h.0.attn.c_attn.weight").unwrap();
    let at = |i: usize, o: usize| {
        let k = (i * 3 * c + o) * 4;
        f32::from_le_bytes(stored.data()[k..k + 4].try_into().unwrap())
    };
    assert_eq!(at(3, 40), kiln[40 * c + 3]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["vocab_size"], 29);
    assert_eq!(config["n_positions"], 8);
    assert_eq!(config["activation_function"], "gelu_new");
    assert_eq!(config["tie_word_embeddings"], true);
    // The loaded model computes the same logits.
    let x = tokens(8, 29, 3);
    gpt.forward(&mut be, &x, None, 1, 8).unwrap();
    let mut loaded = Gpt::load_pretrained(&mut be, dir.path()).unwrap();
    loaded.forward(&mut be, &x, None, 1, 8).unwrap();
    assert_eq!(
        gpt.logits(&mut be).unwrap(),
        loaded.logits(&mut be).unwrap()
    );
}

/// Rewrites `dir/model.safetensors` through `edit` of its (name -> (shape, bytes)).
fn rewrite(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<_> = map
        .iter()
        .map(|(n, (s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn saved(cfg: GptConfig) -> tempfile::TempDir {
    let mut be = backend();
    let gpt = perturbed_model(&mut be, cfg, 1);
    let dir = tempfile::tempdir().unwrap();
    gpt.save_pretrained(&mut be, dir.path()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let mut be = backend();
    match Gpt::load_pretrained(&mut be, dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn accepts_names_without_prefix_and_a_tied_lm_head() {
    let dir = saved(tiny_config());
    let mut be = backend();
    let want = Gpt::load_pretrained(&mut be, dir.path())
        .unwrap()
        .read_params(&mut be)
        .unwrap();
    rewrite(dir.path(), |m| {
        let wte = m["transformer.wte.weight"].clone();
        m.insert("lm_head.weight".into(), wte);
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            if let Some(short) = k.strip_prefix("transformer.") {
                let v = m.remove(&k).unwrap();
                m.insert(short.to_string(), v);
            }
        }
        m.insert("h.0.attn.bias".into(), (vec![1], vec![0; 4]));
    });
    let got = Gpt::load_pretrained(&mut be, dir.path())
        .unwrap()
        .read_params(&mut be)
        .unwrap();
    assert_eq!(want, got);
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = saved(tiny_config());
    rewrite(dir.path(), |m| {
        m.remove("transformer.h.1.mlp.c_fc.bias");
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("missing tensor transformer.h.1.mlp.c_fc.bias"),
        "{e}"
    );

    let dir = saved(tiny_config());
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"vocab_size\": 29", "\"vocab_size\": 30"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("transformer.wte.weight has shape [29, 16]") && e.contains("[30, 16]"),
        "{e}"
    );

    let dir = saved(tiny_config());
    rewrite(dir.path(), |m| {
        let mut w = m["transformer.wte.weight"].clone();
        w.1[0] ^= 0x40;
        m.insert("lm_head.weight".into(), w);
    });
    assert!(load_err(dir.path()).contains("untied"));

    let dir = saved(tiny_config());
    rewrite(dir.path(), |m| {
        m.insert(
            "transformer.h.0.attn.q_proj.weight".into(),
            (vec![1], vec![0; 4]),
        );
    });
    assert!(load_err(dir.path()).contains("q_proj"));

    let dir = saved(tiny_config());
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    std::fs::write(dir.path().join("config.json"), "{\"vocab_size\": 29,").unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    /// Any shape (odd vocabularies, one head, tiny widths) survives
    /// save -> load bit for bit and computes the same logits.
    #[test]
    fn round_trip_holds_for_any_shape(
        vocab in 1usize..300,
        positions in 1usize..12,
        layers in 1usize..3,
        heads in 1usize..4,
        head_dim in 1usize..6,
        seed in 0u64..100,
    ) {
        let mut be = backend();
        let cfg = GptConfig::new(vocab, positions, layers, heads, heads * head_dim);
        let mut gpt = perturbed_model(&mut be, cfg.clone(), seed);
        let dir = tempfile::tempdir().unwrap();
        gpt.save_pretrained(&mut be, dir.path()).unwrap();
        let mut loaded = Gpt::load_pretrained(&mut be, dir.path()).unwrap();
        proptest::prop_assert_eq!(&loaded.config, &cfg);
        proptest::prop_assert_eq!(gpt.read_params(&mut be).unwrap(), loaded.read_params(&mut be).unwrap());
        let x = tokens(positions, vocab, seed);
        gpt.forward(&mut be, &x, None, 1, positions).unwrap();
        loaded.forward(&mut be, &x, None, 1, positions).unwrap();
        proptest::prop_assert_eq!(gpt.logits(&mut be).unwrap(), loaded.logits(&mut be).unwrap());
    }
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn special_token_ids_are_written_and_read_back() {
    let mut be = backend();
    let gpt = perturbed_model(&mut be, tiny_config(), 1);
    let root = tempfile::tempdir().unwrap();
    // Without a tokenizer nothing is known: null, never GPT-2's 50256.
    let bare = root.path().join("bare");
    gpt.save_pretrained(&mut be, &bare).unwrap();
    let config = json_of(&bare.join("config.json"));
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        assert!(config[key].is_null(), "{key}: {config}");
    }
    assert!(json_of(&bare.join("generation_config.json"))["eos_token_id"].is_null());
    let loaded = Gpt::load_pretrained_with(&mut be, &bare, &[]).unwrap();
    assert_eq!(loaded.special, SpecialTokenIds::default());

    // With them: config.json has the model's eos, generation_config.json
    // every stop id; reading gives them back.
    let special = SpecialTokenIds {
        bos: Some(3),
        eos: vec![7, 3],
        pad: Some(3),
    };
    let dir = root.path().join("chat");
    let extras = HfExtras {
        special: special.clone(),
        files: vec![("note.txt".into(), b"kept".to_vec())],
        ..HfExtras::default()
    };
    gpt.save_pretrained_with(&mut be, &dir, &extras).unwrap();
    let config = json_of(&dir.join("config.json"));
    assert_eq!(
        (
            &config["bos_token_id"],
            &config["eos_token_id"],
            &config["pad_token_id"]
        ),
        (&3.into(), &7.into(), &3.into())
    );
    let generation = json_of(&dir.join("generation_config.json"));
    assert_eq!(generation["eos_token_id"], serde_json::json!([7, 3]));
    assert_eq!(generation["pad_token_id"], 3);
    assert_eq!(std::fs::read(dir.join("note.txt")).unwrap(), b"kept");
    let loaded = Gpt::load_pretrained_with(&mut be, &dir, &[]).unwrap();
    assert_eq!(loaded.special, special);
    // transformers' own files (the fixture was written by save_pretrained)
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gpt2_tiny/model");
    let loaded = Gpt::load_pretrained_with(&mut be, &hf, &[]).unwrap();
    assert_eq!(loaded.special.eos, vec![0]);

    // Saving ids the vocabulary does not have is refused too.
    let bad = HfExtras {
        special: SpecialTokenIds {
            eos: vec![29],
            ..SpecialTokenIds::default()
        },
        ..HfExtras::default()
    };
    let e = gpt
        .save_pretrained_with(&mut be, &root.path().join("bad"), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eos_token_id") && e.contains("29"), "{e}");
}

#[test]
fn ids_outside_the_vocabulary_are_an_error_naming_the_file_and_key() {
    let dir = saved(tiny_config()); // vocab 29
    let edit = |file: &str, key: &str, v: serde_json::Value| {
        let p = dir.path().join(file);
        let mut j = json_of(&p);
        j[key] = v;
        std::fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
    };
    // GPT-2's default in a small vocabulary: what transformers warns about.
    edit("config.json", "bos_token_id", 50256.into());
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json")
            && e.contains("\"bos_token_id\" is 50256")
            && e.contains("29 tokens"),
        "{e}"
    );
    edit("config.json", "bos_token_id", serde_json::Value::Null);
    edit(
        "generation_config.json",
        "eos_token_id",
        serde_json::json!([1, 40]),
    );
    let e = load_err(dir.path());
    assert!(
        e.contains("generation_config.json") && e.contains("\"eos_token_id\" is 40"),
        "{e}"
    );
    edit("generation_config.json", "eos_token_id", "two".into());
    let e = load_err(dir.path());
    assert!(e.contains("\"eos_token_id\" must be a token id"), "{e}");
    edit(
        "generation_config.json",
        "eos_token_id",
        serde_json::json!([1, 2]),
    );
    let mut be = backend();
    let ok = Gpt::load_pretrained_with(&mut be, dir.path(), &[]).unwrap();
    assert_eq!(ok.special.eos, vec![1, 2]);
}

#[test]
fn extra_tensors_round_trip_and_others_are_still_refused() {
    let mut be = backend();
    let cfg = tiny_config();
    let gpt = perturbed_model(&mut be, cfg.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let head: Vec<f32> = (0..cfg.n_embd).map(|i| i as f32 * 0.5).collect();
    let ln_f_bias: Vec<f32> = vec![0.25; cfg.n_embd];
    let extras = HfExtras {
        architecture: Some("GPT2ForSequenceClassification".into()),
        config: serde_json::json!({"num_labels": 1})
            .as_object()
            .unwrap()
            .clone(),
        tensors: vec![("score.weight".into(), vec![1, cfg.n_embd], head.clone())],
        param_overrides: vec![("transformer.ln_f.bias".into(), ln_f_bias.clone())],
        ..HfExtras::default()
    };
    gpt.save_pretrained_with(&mut be, dir.path(), &extras)
        .unwrap();
    let config = json_of(&dir.path().join("config.json"));
    assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(config["num_labels"], 1);
    let loaded = Gpt::load_pretrained_with(&mut be, dir.path(), &["score.weight"]).unwrap();
    assert_eq!(loaded.tensors["score.weight"], (vec![1, cfg.n_embd], head));
    // The override was saved in place of the backend's ln_f.bias, nothing else changed.
    let (want, got) = (
        gpt.read_params(&mut be).unwrap(),
        loaded.model.read_params(&mut be).unwrap(),
    );
    let names: Vec<String> = gpt.params().iter().map(|p| p.name.clone()).collect();
    for ((name, w), g) in names.iter().zip(&want).zip(&got) {
        if name == "transformer.ln_f.bias" {
            assert_eq!(g, &ln_f_bias);
        } else {
            assert_eq!(w, g, "{name}");
        }
    }
    // Not asked for, score.weight is an unexpected tensor for a causal LM.
    let e = load_err(dir.path());
    assert!(
        e.contains("unexpected tensors") && e.contains("score.weight"),
        "{e}"
    );
}
