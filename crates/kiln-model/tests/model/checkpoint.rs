//! save_pretrained / load_pretrained: exact round trips and clear errors.

use std::collections::HashMap;
use std::path::Path;

use kiln_model::{Gpt, GptConfig};
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
