//! Identical ids in Hugging Face `tokenizers` (Python, through
//! scripts/tokenizer_hf_check.py): kiln-trained and GPT-2/cl100k files, and
//! the tokenizer.json families of scripts/make_hf_tokenizer_fixtures.py
//! (ids and decodes). Skips with a message when Python or the package is
//! missing; CI installs it (`pip install tokenizers`).

mod common;

use kiln_tokenizer::formats::hf;
use kiln_tokenizer::normalizer::{normalize, Normalizer};
use kiln_tokenizer::{train, Pattern, SpecialPolicy, Tokenizer};
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tokenizer_hf_check.py")
}

fn hf_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import tokenizers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: python3 with the `tokenizers` package is not available (pip install tokenizers)");
    }
    ok
}

fn run(args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// HF's ids for `texts` with the tokenizer.json at `path`.
fn hf_ids(dir: &Path, path: &Path, texts: &[String]) -> Vec<Vec<u32>> {
    let tp = dir.join("texts.json");
    std::fs::write(&tp, serde_json::to_string(texts).unwrap()).unwrap();
    let out = run(&[
        "encode",
        "--tokenizer",
        path.to_str().unwrap(),
        "--texts",
        tp.to_str().unwrap(),
    ]);
    serde_json::from_slice(&out).unwrap()
}

fn assert_same(kiln: &Tokenizer, hf_ids: &[Vec<u32>], texts: &[String]) {
    for (t, theirs) in texts.iter().zip(hf_ids) {
        let ours = kiln.encode(t, &SpecialPolicy::allow_all()).unwrap();
        assert_eq!(&ours, theirs, "{:?}", &t[..t.len().min(200)]);
    }
}

#[test]
fn kiln_trained_tokenizer_gives_identical_ids_in_hf() {
    if !hf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let train_docs = common::corpus(41, 400, 2500);
    let mut held_out = common::corpus(42, 80, 2500);
    held_out.push("doc one<|endoftext|>doc two <|im_start|>user".into());
    for (pattern, name) in [
        (Pattern::Cl100k, "cl100k"),
        (Pattern::Gpt2, "gpt2"),
        (Pattern::O200k, "o200k"),
    ] {
        let t = train(
            &train_docs,
            3000,
            pattern,
            &["<|endoftext|>", "<|im_start|>"],
            0,
        )
        .unwrap();
        let p = dir.path().join(format!("{name}.json"));
        hf::save(&t, &p).unwrap();
        assert_same(&t, &hf_ids(dir.path(), &p, &held_out), &held_out);
    }
}

#[test]
fn gpt2_tokenizer_json_built_by_hf_gives_identical_ids() {
    if !hf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let assets = common::tiktoken_assets();
    let p = dir.path().join("gpt2.json");
    run(&[
        "gpt2",
        "--vocab",
        assets.join("encoder.json").to_str().unwrap(),
        "--merges",
        assets.join("vocab.bpe").to_str().unwrap(),
        "--out",
        p.to_str().unwrap(),
    ]);
    let t = hf::load(&p).unwrap();
    let mut texts = common::corpus(43, 150, 3000);
    texts.push("a<|endoftext|>b".into());
    assert_same(&t, &hf_ids(dir.path(), &p, &texts), &texts);
}

#[test]
fn cl100k_exported_by_kiln_gives_tiktoken_ids_in_hf() {
    if !hf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = common::load_encoding("cl100k_base");
    let p = dir.path().join("cl100k.json");
    hf::save(&t, &p).unwrap();
    let texts = common::corpus(44, 100, 3000);
    assert_same(&t, &hf_ids(dir.path(), &p, &texts), &texts);
}

/// Texts for the tokenizer.json families: the varied corpus, its NFD
/// form, whitespace runs, characters outside the small vocabularies, and
/// added tokens inside text.
fn family_texts(tok: &Tokenizer) -> Vec<String> {
    let mut texts = common::corpus(47, 40, 1200);
    let nfd: Vec<String> = texts[..10]
        .iter()
        .map(|t| normalize(&[Normalizer::Nfd], t))
        .collect();
    texts.extend(nfd);
    let specials = tok.special_tokens();
    let (a, b) = (&specials[0].0, &specials[specials.len() - 1].0);
    let mut rng = common::Rng::new(48);
    for _ in 0..40 {
        let mut t = String::new();
        for _ in 0..1 + rng.below(12) {
            t += rng.pick(&[
                " ",
                "  ",
                "\t",
                "\n",
                " \n ",
                "▁",
                "e\u{301}",
                "é",
                "中文",
                "😀",
                "👩‍👧",
                "☃",
                "x",
                "The",
                " the",
                "12",
                a,
                b,
                "\u{a0}",
                "ﬁ",
            ]);
        }
        texts.push(t);
    }
    texts.push(format!("{a}{b} {a}  x{b}"));
    texts
}

/// HF's decode of each id list (special tokens kept).
fn hf_decodes(dir: &Path, path: &Path, ids: &[Vec<u32>]) -> Vec<String> {
    let ip = dir.join("ids.json");
    std::fs::write(&ip, serde_json::to_string(ids).unwrap()).unwrap();
    let out = run(&[
        "decode",
        "--tokenizer",
        path.to_str().unwrap(),
        "--ids",
        ip.to_str().unwrap(),
    ]);
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn tokenizer_json_families_give_hf_ids_and_decodes() {
    if !hf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let families: Vec<String> = serde_json::from_slice(&run(&["families"])).unwrap();
    assert!(families.len() >= 8, "{families:?}");
    for family in &families {
        let p = dir.path().join(format!("{family}.json"));
        run(&["family", "--name", family, "--out", p.to_str().unwrap()]);
        let t = hf::load(&p).unwrap_or_else(|e| panic!("{family}: {e}"));
        let texts = family_texts(&t);
        let ids = hf_ids(dir.path(), &p, &texts);
        assert_same(&t, &ids, &texts);
        for ((text, ids), theirs) in texts.iter().zip(&ids).zip(hf_decodes(dir.path(), &p, &ids)) {
            assert_eq!(t.decode(ids).unwrap(), theirs, "{family}: {text:?}");
        }
    }
}
