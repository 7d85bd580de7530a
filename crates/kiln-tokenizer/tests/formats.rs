//! File formats: GPT-2 vocab/merges, tiktoken rank files and tokenizer.json
//! read/write, plus errors that name the field at fault.

mod common;

use kiln_tokenizer::formats::{gpt2, hf, tiktoken};
use kiln_tokenizer::{train, Pattern, Tokenizer};
use std::sync::OnceLock;

fn r50k_tt() -> &'static tiktoken_rs::CoreBPE {
    static T: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    T.get_or_init(|| tiktoken_rs::r50k_base().unwrap())
}

fn same_ids(a: &Tokenizer, b: &Tokenizer, docs: &[String]) {
    for d in docs {
        assert_eq!(
            a.encode_ordinary(d),
            b.encode_ordinary(d),
            "{:?}",
            &d[..d.len().min(200)]
        );
    }
}

#[test]
fn gpt2_files_match_tiktoken_r50k() {
    let assets = common::tiktoken_assets();
    let t = gpt2::load(&assets.join("encoder.json"), &assets.join("vocab.bpe")).unwrap();
    assert_eq!(t.special_id("<|endoftext|>"), Some(50256));
    assert_eq!(t.vocab_size(), 50257);
    for d in common::corpus(21, 100, 3000) {
        assert_eq!(t.encode_ordinary(&d), r50k_tt().encode_ordinary(&d));
    }
}

#[test]
fn tiktoken_file_round_trip() {
    let t = common::load_encoding("r50k_base");
    let text = tiktoken::to_string(&t);
    let back = tiktoken::from_bytes(text.as_bytes(), "mem", Pattern::Gpt2, vec![]).unwrap();
    same_ids(&t, &back, &common::corpus(22, 20, 2000));
}

#[test]
fn tokenizer_json_round_trip_for_rank_files() {
    // Rank files get a recovered merge list and ignore_merges = true.
    let t = common::load_encoding("cl100k_base");
    let json = hf::to_string(&t).unwrap();
    let back = hf::from_slice(json.as_bytes(), "mem").unwrap();
    assert_eq!(back.special_id("<|endoftext|>"), Some(100257));
    same_ids(&t, &back, &common::corpus(23, 60, 3000));
}

#[test]
fn tokenizer_json_round_trip_for_trained_and_string_merges() {
    let docs = common::corpus(24, 60, 3000);
    let t = train(
        &docs,
        600,
        Pattern::O200k,
        &["<|endoftext|>", "<|im_start|>"],
        0,
    )
    .unwrap();
    let json = hf::to_string(&t).unwrap();
    let back = hf::from_slice(json.as_bytes(), "mem").unwrap();
    same_ids(&t, &back, &docs);
    // Legacy "left right" string merges read the same.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let merges = v["model"]["merges"].as_array_mut().unwrap();
    for m in merges.iter_mut() {
        let (l, r) = (m[0].as_str().unwrap(), m[1].as_str().unwrap());
        *m = serde_json::Value::String(format!("{l} {r}"));
    }
    let legacy = hf::from_slice(v.to_string().as_bytes(), "mem").unwrap();
    same_ids(&t, &legacy, &docs);
    // GPT-2 file pair round trip too.
    let (vocab, merges) = gpt2::to_strings(&t).unwrap();
    let g = gpt2::from_parts(
        gpt2::parse_vocab(vocab.as_bytes(), "v").unwrap(),
        gpt2::parse_merges(&merges, "m").unwrap(),
        Pattern::O200k,
        "v",
        "m",
    )
    .unwrap();
    same_ids(&t, &g, &docs);
}

fn load_err(json: &str) -> kiln_tokenizer::LoadError {
    hf::from_slice(json.as_bytes(), "t.json").unwrap_err()
}

#[test]
fn malformed_files_name_the_field() {
    let docs = common::corpus(25, 5, 1000);
    let t = train(&docs, 300, Pattern::Cl100k, &[], 0).unwrap();
    let good: serde_json::Value = serde_json::from_str(&hf::to_string(&t).unwrap()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string()
    };
    let e = load_err(&edit(&|v| {
        v["model"]
            .as_object_mut()
            .unwrap()
            .remove("vocab")
            .map(|_| ())
            .unwrap()
    }));
    assert_eq!(e.location, "model.vocab");
    let e = load_err(&edit(&|v| {
        v["model"]["merges"][3] = serde_json::json!(["zz", "q"])
    }));
    assert_eq!(e.location, "model.merges[3]");
    let e = load_err(&edit(&|v| v["model"]["merges"][2] = serde_json::json!(7)));
    assert_eq!(e.location, "model.merges[2]");
    let e = load_err(&edit(&|v| {
        v["normalizer"] = serde_json::json!({"type": "BertNormalizer"})
    }));
    assert_eq!(e.location, "normalizer.type");
    let e = load_err(&edit(&|v| {
        v["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = serde_json::json!(true)
    }));
    assert_eq!(e.location, "pre_tokenizer.pretokenizers[1].use_regex");
    let e = load_err(&edit(&|v| v["model"]["vocab"]["a"] = serde_json::json!(-1)));
    assert_eq!(e.location, "model.vocab[\"a\"]");
    let e = load_err("{not json");
    assert!(
        e.to_string().starts_with("t.json: (root): invalid JSON"),
        "{e}"
    );

    let e = tiktoken::parse_ranks(b"IQ== 0\n%%% 1\n", "x.tiktoken").unwrap_err();
    assert_eq!(e.location, "line 2");
    let e = tiktoken::from_bytes(b"IQ== 0\n", "x.tiktoken", Pattern::Gpt2, vec![]).unwrap_err();
    assert!(e.problem.contains("needs all 256"), "{e}");
    let e = gpt2::parse_merges("#version: 0.2\na b\nabc\n", "m.txt").unwrap_err();
    assert_eq!(e.location, "line 3");
}

#[test]
fn load_dispatches_by_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let docs = common::corpus(26, 10, 1000);
    let t = train(&docs, 400, Pattern::Gpt2, &["<|endoftext|>"], 0).unwrap();
    let p = dir.path().join("tok.json");
    hf::save(&t, &p).unwrap();
    let back = kiln_tokenizer::formats::load(&p).unwrap();
    same_ids(&t, &back, &docs);
    let rank = dir.path().join("r50k_base.tiktoken");
    std::fs::copy(common::tiktoken_assets().join("r50k_base.tiktoken"), &rank).unwrap();
    let r = kiln_tokenizer::formats::load(&rank).unwrap();
    assert_eq!(r.special_id("<|endoftext|>"), Some(50256));
}
