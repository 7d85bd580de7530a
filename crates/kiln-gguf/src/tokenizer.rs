//! A tokenizer.json (and tokenizer_config.json) as llama.cpp's
//! `tokenizer.ggml.*` metadata.
//!
//! Byte-level BPE becomes llama.cpp's "gpt2" tokenizer: the vocabulary in
//! its byte-to-unicode spelling, the merges, and `tokenizer.ggml.pre`
//! naming the split regex, which llama.cpp hard-codes by name (so an
//! unknown regex is refused rather than tokenized differently).
//! SentencePiece-style BPE (Metaspace "▁", `<0xNN>` byte fallback) becomes
//! its "llama" tokenizer, which merges by score: a token made by merge rank
//! r scores -r, so the highest score is the first merge, as BPE's order.

use std::path::Path;

use kiln_tokenizer::pattern;
use serde_json::Value as Json;

use crate::writer::{GgufWriter, Value};
use crate::GgufError;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Split regexes llama.cpp knows, by their `tokenizer.ggml.pre` name
/// (spelled as tokenizer.json files carry them).
const PRE_TOKENIZERS: [(&str, &str); 4] = [
    ("gpt-2", pattern::GPT2_PATTERN_HF),
    ("llama-bpe", pattern::CL100K_PATTERN_HF),
    // Qwen2: cl100k's with single digits.
    (
        "qwen2",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    ("gpt-4o", pattern::O200K_PATTERN),
];

fn fail(file: &Path, msg: impl Into<String>) -> GgufError {
    GgufError::Tokenizer {
        file: file.display().to_string(),
        msg: msg.into(),
    }
}

fn read_json(path: &Path) -> Result<Json, GgufError> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(path, format!("not JSON: {e}")))
}

/// Which llama.cpp tokenizer a tokenizer.json is, with its pre-tokenizer name
/// for byte-level BPE.
fn classify(path: &Path, tok: &Json) -> Result<(&'static str, Option<&'static str>), GgufError> {
    let model_type = tok["model"]["type"].as_str().unwrap_or("");
    if model_type != "BPE" {
        return Err(fail(
            path,
            format!("model.type {model_type:?}: only BPE tokenizers export to GGUF"),
        ));
    }
    let pre = &tok["pre_tokenizer"];
    let kinds: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        Some(_) => vec![pre],
        None => vec![],
    };
    let has = |t: &str| kinds.iter().any(|k| k["type"] == t);
    if has("Metaspace") || (!has("ByteLevel") && tok["model"]["byte_fallback"] == true) {
        return Ok(("llama", None));
    }
    if !has("ByteLevel") {
        return Err(fail(
            path,
            "pre_tokenizer: neither ByteLevel nor SentencePiece-style",
        ));
    }
    if has("Digits") {
        // SmolLM: digits one by one, then GPT-2's regex inside ByteLevel.
        return Ok(("gpt2", Some("smollm")));
    }
    let regex = kinds
        .iter()
        .find(|k| k["type"] == "Split")
        .and_then(|k| k["pattern"]["Regex"].as_str());
    let Some(regex) = regex else {
        // ByteLevel with use_regex: GPT-2's own pattern.
        return Ok(("gpt2", Some("gpt-2")));
    };
    PRE_TOKENIZERS
        .iter()
        .find(|(_, p)| *p == regex)
        .map(|(name, _)| ("gpt2", Some(*name)))
        .ok_or_else(|| {
            fail(
                path,
                format!(
                    "pre_tokenizer: llama.cpp knows split regexes by name and this one is none \
                     of {}; it would tokenize differently",
                    PRE_TOKENIZERS.map(|(n, _)| n).join(", ")
                ),
            )
        })
}

/// The special-token ids the model directory declares.
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

fn specials(
    dir: &Path,
    vocab: &serde_json::Map<String, Json>,
    added: &[(u32, String, bool)],
) -> Specials {
    let config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Json::Null);
    let generation = read_json(&dir.join("generation_config.json")).unwrap_or(Json::Null);
    let id_of = |text: &str| {
        added
            .iter()
            .find(|(_, t, _)| t == text)
            .map(|(id, _, _)| *id)
            .or_else(|| vocab.get(text).and_then(Json::as_u64).map(|v| v as u32))
    };
    // tokenizer_config.json names the tokens; generation_config.json has ids.
    let token = |key: &str| -> Option<u32> {
        let named = match &config[key] {
            Json::String(s) => id_of(s),
            Json::Object(o) => o.get("content").and_then(Json::as_str).and_then(id_of),
            _ => None,
        };
        named.or_else(|| {
            let id_key = format!("{}_id", key);
            match &generation[id_key.as_str()] {
                Json::Number(n) => n.as_u64().map(|v| v as u32),
                Json::Array(a) => a.first().and_then(Json::as_u64).map(|v| v as u32),
                _ => None,
            }
        })
    };
    Specials {
        bos: token("bos_token"),
        eos: token("eos_token"),
        pad: token("pad_token"),
        add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
        chat_template: config["chat_template"].as_str().map(str::to_string),
    }
}

/// Adds `tokenizer.ggml.*` (and the chat template) from `dir`'s
/// tokenizer.json; returns the vocabulary size.
pub fn add_tokenizer(w: &mut GgufWriter, dir: &Path) -> Result<usize, GgufError> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let (model, pre) = classify(&path, &tok)?;
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| fail(&path, "model.vocab is not an object"))?;
    let added: Vec<(u32, String, bool)> = tok["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["id"].as_u64()? as u32,
                t["content"].as_str()?.to_string(),
                t["special"].as_bool().unwrap_or(false),
            ))
        })
        .collect();
    let size = vocab
        .values()
        .filter_map(Json::as_u64)
        .chain(added.iter().map(|(id, _, _)| *id as u64))
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut tokens = vec![String::new(); size];
    let mut filled = vec![false; size];
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| fail(&path, format!("model.vocab[{text:?}] is not an id")))?
            as usize;
        tokens[id] = text.clone();
        filled[id] = true;
    }
    let unk = tok["model"]["unk_token"].as_str();
    let mut types: Vec<i32> = tokens
        .iter()
        .map(|t| {
            if Some(t.as_str()) == unk {
                UNKNOWN
            } else if model == "llama" && is_byte_token(t) {
                BYTE
            } else {
                NORMAL
            }
        })
        .collect();
    for (id, text, special) in &added {
        let id = *id as usize;
        tokens[id] = text.clone();
        filled[id] = true;
        types[id] = if Some(text.as_str()) == unk {
            UNKNOWN
        } else if *special {
            CONTROL
        } else {
            USER_DEFINED
        };
    }
    if let Some(hole) = filled.iter().position(|f| !f) {
        return Err(fail(
            &path,
            format!("token id {hole} is in neither model.vocab nor added_tokens"),
        ));
    }
    let merges = merges(&path, &tok)?;
    w.set("tokenizer.ggml.model", Value::Str(model.into()))?;
    if let Some(pre) = pre {
        w.set("tokenizer.ggml.pre", Value::Str(pre.into()))?;
    }
    if model == "llama" {
        let mut scores = vec![0.0f32; size];
        for (rank, (a, b)) in merges.iter().enumerate() {
            if let Some(id) = vocab.get(&format!("{a}{b}")).and_then(Json::as_u64) {
                let score = &mut scores[id as usize];
                if *score == 0.0 {
                    *score = -((rank + 1) as f32);
                }
            }
        }
        w.set("tokenizer.ggml.tokens", Value::ArrStr(tokens))?;
        w.set("tokenizer.ggml.scores", Value::ArrF32(scores))?;
    } else {
        w.set("tokenizer.ggml.tokens", Value::ArrStr(tokens))?;
        let merges = merges
            .into_iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        w.set("tokenizer.ggml.merges", Value::ArrStr(merges))?;
    }
    w.set("tokenizer.ggml.token_type", Value::ArrI32(types))?;
    let sp = specials(dir, vocab, &added);
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", sp.bos),
        ("tokenizer.ggml.eos_token_id", sp.eos),
        ("tokenizer.ggml.padding_token_id", sp.pad),
    ] {
        if let Some(id) = id {
            w.set(key, Value::U32(id))?;
        }
    }
    if let Some(unk) = unk.and_then(|u| vocab.get(u)).and_then(Json::as_u64) {
        w.set("tokenizer.ggml.unknown_token_id", Value::U32(unk as u32))?;
    }
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(sp.add_bos))?;
    if let Some(template) = sp.chat_template {
        w.set("tokenizer.chat_template", Value::Str(template))?;
    }
    Ok(size)
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && u8::from_str_radix(&t[3..5], 16).is_ok()
}

/// model.merges as pairs, in rank order ("a b" strings or [a, b] arrays).
fn merges(path: &Path, tok: &Json) -> Result<Vec<(String, String)>, GgufError> {
    tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Json::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Json::Array(a) if a.len() == 2 => Some((
                    a[0].as_str().unwrap_or_default().to_string(),
                    a[1].as_str().unwrap_or_default().to_string(),
                )),
                _ => None,
            };
            pair.ok_or_else(|| fail(path, format!("model.merges[{i}] is not a pair")))
        })
        .collect()
}
