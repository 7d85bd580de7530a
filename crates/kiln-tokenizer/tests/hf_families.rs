//! The tokenizer.json families open models ship (Qwen2, Llama 3, GPT-2
//! style with a prefix space, SmolLM's digit split, Llama 2 / Mistral
//! SentencePiece-style BPE with byte fallback or an unknown token),
//! against the ids and decodes Hugging Face `tokenizers` gave for them:
//! tests/fixtures/hf_families/, made by scripts/make_hf_tokenizer_fixtures.py.

use kiln_tokenizer::formats::hf;
use kiln_tokenizer::{Pattern, SpecialPolicy, Tokenizer};
use std::path::{Path, PathBuf};

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_families")
}

/// The families in the fixture directory (`<family>.tokenizer.json`).
fn families() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".tokenizer.json").map(str::to_string)
        })
        .collect();
    v.sort();
    assert!(v.len() >= 10, "{v:?}");
    v
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
    for family in &families() {
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
    for family in &families() {
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
    for family in &families() {
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

/// `family`'s tokenizer.json with `edit` applied, loaded: the error.
fn refused(family: &str, edit: impl Fn(&mut serde_json::Value)) -> kiln_tokenizer::LoadError {
    let text = std::fs::read(dir().join(format!("{family}.tokenizer.json"))).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    edit(&mut v);
    match hf::from_slice(v.to_string().as_bytes(), "t.json") {
        Ok(_) => panic!("{family}: the edited file loaded"),
        Err(e) => e,
    }
}

/// (family, edit, the key the error names, a word of its fix).
type Refusal = (
    &'static str,
    Box<dyn Fn(&mut serde_json::Value)>,
    &'static str,
    &'static str,
);

#[test]
fn what_kiln_does_not_implement_is_refused_with_its_key() {
    use serde_json::json;
    let cases: Vec<Refusal> = vec![
        (
            "llama2",
            Box::new(|v| v["model"]["type"] = json!("WordPiece")),
            "model.type",
            "BPE models only",
        ),
        (
            "llama2",
            Box::new(|v| v["model"]["dropout"] = json!(0.1)),
            "model.dropout",
            "null",
        ),
        (
            "qwen2",
            Box::new(|v| v["normalizer"] = json!({"type": "BertNormalizer"})),
            "normalizer.type",
            "NFC",
        ),
        (
            "llama2",
            Box::new(|v| v["normalizer"]["normalizers"][1]["pattern"] = json!({"Regex": " +"})),
            "normalizer.normalizers[1].pattern.Regex",
            "String",
        ),
        (
            "qwen2",
            Box::new(|v| v["added_tokens"][1]["normalized"] = json!(true)),
            "added_tokens[1].normalized",
            "false",
        ),
        (
            "sp_unk",
            Box::new(|v| v["model"]["unk_token"] = json!(null)),
            "model.unk_token",
            "set unk_token",
        ),
        (
            "llama2",
            Box::new(|v| v["decoder"] = json!(null)),
            "decoder",
            "missing",
        ),
        (
            "llama2",
            Box::new(|v| {
                let d = v["decoder"]["decoders"].as_array_mut().unwrap();
                d.swap(2, 3); // Strip before Fuse strips every token
            }),
            "decoder.decoders[2]",
            "after Fuse",
        ),
        (
            "mistral",
            Box::new(|v| v["pre_tokenizer"] = json!({"type": "Whitespace"})),
            "pre_tokenizer.type",
            "Metaspace",
        ),
        (
            "mistral",
            Box::new(|v| v["pre_tokenizer"]["prepend_scheme"] = json!("sometimes")),
            "pre_tokenizer.prepend_scheme",
            "\"first\"",
        ),
        (
            "llama2",
            Box::new(|v| v["model"]["continuing_subword_prefix"] = json!("##")),
            "model.continuing_subword_prefix",
            "null",
        ),
        (
            "smollm",
            Box::new(|v| v["model"]["byte_fallback"] = json!(true)),
            "model.byte_fallback",
            "false",
        ),
    ];
    for (family, edit, key, fix) in cases {
        let e = refused(family, edit);
        assert_eq!(e.location, key, "{family}: {e}");
        assert_eq!(e.source_name, "t.json");
        assert!(e.problem.contains(fix), "{family}: {e}");
    }
}

#[test]
fn byte_level_families_keep_the_fast_lexers() {
    // Llama 3's Split regex is cl100k's; GPT-2's ByteLevel regex, with a
    // prefix space or after Digits, is still GPT-2's: the hand-written
    // lexers split them, not the regex engine.
    for (family, pattern) in [
        ("llama3", Pattern::Cl100k),
        ("bytelevel_aps", Pattern::Gpt2),
        ("smollm", Pattern::Gpt2),
    ] {
        assert_eq!(load(family).0.pattern(), &pattern, "{family}");
    }
}
