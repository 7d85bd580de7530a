//! The tokenizer.json families open models ship (Qwen2, Llama 3, GPT-2
//! style with a prefix space, Llama 2 / Mistral SentencePiece-style BPE),
//! against the ids and decodes Hugging Face `tokenizers` gave for them:
//! tests/fixtures/hf_families/, made by scripts/make_hf_tokenizer_fixtures.py.

use kiln_tokenizer::formats::hf;
use kiln_tokenizer::{SpecialPolicy, Tokenizer};
use std::path::{Path, PathBuf};

const FAMILIES: &[&str] = &[
    "qwen2",
    "llama3",
    "bytelevel_aps",
    "split_aps",
    "llama2",
    "mistral",
    "metaspace",
    "metaspace_never",
];

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_families")
}

fn load(family: &str) -> (Tokenizer, Vec<Case>) {
    let tok = hf::load(&dir().join(format!("{family}.tokenizer.json")))
        .unwrap_or_else(|e| panic!("{family}: {e}"));
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join(format!("{family}.cases.json"))).unwrap())
            .unwrap();
    let cases = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: serde_json::from_value(c["ids"].clone()).unwrap(),
            decoded: c["decoded"].as_str().unwrap().to_string(),
        })
        .collect();
    (tok, cases)
}

#[test]
fn every_family_encodes_as_hf() {
    for family in FAMILIES {
        let (tok, cases) = load(family);
        assert!(cases.len() > 30, "{family}");
        for c in &cases {
            let ids = tok.encode(&c.text, &SpecialPolicy::allow_all()).unwrap();
            assert_eq!(ids, c.ids, "{family}: {:?}", c.text);
            let par = tok
                .encode_parallel(&c.text, &SpecialPolicy::allow_all(), 16)
                .unwrap();
            assert_eq!(par, c.ids, "{family} (parallel): {:?}", c.text);
        }
    }
}

#[test]
fn every_family_decodes_as_hf() {
    for family in FAMILIES {
        let (tok, cases) = load(family);
        for c in &cases {
            assert_eq!(
                tok.decode(&c.ids).unwrap(),
                c.decoded,
                "{family}: {:?}",
                c.text
            );
            let mut stream = tok.stream_decoder();
            let mut text = String::new();
            for &id in &c.ids {
                text += &stream.step(id).unwrap();
            }
            text += &stream.finish();
            assert_eq!(text, c.decoded, "{family} (stream): {:?}", c.text);
        }
    }
}

#[test]
fn byte_fallback_and_prefix_rules_fire_in_the_fixtures() {
    // The fixtures exercise what they are for: byte tokens for characters
    // outside the vocabulary, and a decode that differs from the text.
    let (tok, cases) = load("llama2");
    let absent = cases.iter().find(|c| c.text.starts_with("absent")).unwrap();
    let byte_ids: Vec<u32> = absent
        .ids
        .iter()
        .copied()
        .filter(|&i| (3..259).contains(&i))
        .collect();
    assert!(byte_ids.len() >= 12, "{:?}", absent.ids);
    assert_eq!(tok.decode(&byte_ids[..3]).unwrap(), "☃");
    let (_, cases) = load("bytelevel_aps");
    assert!(cases.iter().any(|c| c.decoded != c.text));
}

#[test]
fn written_back_files_give_the_same_ids() {
    for family in FAMILIES {
        let (tok, cases) = load(family);
        let json = hf::to_string(&tok).unwrap();
        let back =
            hf::from_slice(json.as_bytes(), "mem").unwrap_or_else(|e| panic!("{family}: {e}"));
        for c in &cases {
            let ids = back.encode(&c.text, &SpecialPolicy::allow_all()).unwrap();
            assert_eq!(ids, c.ids, "{family}: {:?}", c.text);
            assert_eq!(
                back.decode(&ids).unwrap(),
                c.decoded,
                "{family}: {:?}",
                c.text
            );
        }
    }
}
