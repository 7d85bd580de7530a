//! Hugging Face `tokenizer.json`: read and write.
//!
//! Read: model `BPE` (vocab, merges as `"a b"` strings or `["a","b"]`
//! pairs, `ignore_merges`), added tokens (matched before normalization and
//! pre-tokenization, as HF does), a `normalizer` (see `hf_pipeline`), and
//! - byte-level BPE: pre-tokenizer `ByteLevel` (GPT-2 regex),
//!   `Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]` or
//!   `Sequence[Digits, ByteLevel]`, with or without `add_prefix_space`
//!   (GPT-2, Llama 3, Qwen2, SmolLM);
//! - otherwise SentencePiece-style BPE (`hf_pipeline`: Llama 2, Mistral).
//!
//! Anything that would change ids and that kiln does not implement
//! (WordPiece/Unigram models, subword prefixes, dropout, other normalizers
//! or pre-tokenizers) is refused with the key named, never ignored.
//!
//! Write: pair-form merges, special tokens in `added_tokens` and in
//! `model.vocab` (HF ignores an added token's id otherwise), the pattern's
//! non-possessive spelling (Oniguruma reads `{1,3}+` differently); a
//! tokenizer read with a normalizer, prefix space or SentencePiece model
//! gets its file's own normalizer, pre-tokenizer and decoder back.

use super::hf_pipeline;
use crate::byte_unicode::{bytes_to_string, string_to_bytes};
use crate::error::{Error, LoadError};
use crate::pattern::Pattern;
use crate::pipeline::{Digits, Pipeline, PrefixSpace, Stage};
use crate::special::AddedFlags;
use crate::tokenizer::{MergeRule, Tokenizer};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

pub(super) struct Ctx<'a> {
    pub source: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> LoadError {
        LoadError::new(self.source, field, problem)
    }

    pub fn obj<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>, LoadError> {
        v.as_object()
            .ok_or_else(|| self.err(field, "expected a JSON object"))
    }

    /// A boolean field that kiln supports only at `supported`.
    pub fn flag(
        &self,
        o: &Map<String, Value>,
        field: &str,
        key: &str,
        supported: bool,
    ) -> Result<(), LoadError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Bool(b)) if *b == supported => Ok(()),
            Some(v) => Err(self.err(
                format!("{field}.{key}"),
                format!("{v} is not supported (kiln implements {key} = {supported})"),
            )),
        }
    }

    pub fn type_of<'v>(
        &self,
        o: &'v Map<String, Value>,
        field: &str,
    ) -> Result<&'v str, LoadError> {
        o.get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err(format!("{field}.type"), "missing or not a string"))
    }

    /// A ByteLevel pre-tokenizer's settings: whether it adds a prefix space.
    fn byte_level(
        &self,
        o: &Map<String, Value>,
        field: &str,
        regex: bool,
    ) -> Result<bool, LoadError> {
        self.flag(o, field, "use_regex", regex)?;
        match o.get("add_prefix_space") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(
                format!("{field}.add_prefix_space"),
                format!("{v} is not a boolean"),
            )),
        }
    }
}

/// Whether the pre-tokenizer is byte-level (ByteLevel, alone or in a
/// Sequence); anything else is read as a SentencePiece-style model.
fn is_byte_level(pre: Option<&Value>) -> bool {
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_owned);
    match pre {
        Some(v) if ty(v).as_deref() == Some("ByteLevel") => true,
        Some(v) if ty(v).as_deref() == Some("Sequence") => v
            .get("pretokenizers")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|p| ty(p).as_deref() == Some("ByteLevel"))),
        _ => false,
    }
}

/// What a byte-level pre-tokenizer does: its regex, prefix space and
/// digit split.
type BytePre = (Pattern, PrefixSpace, Option<Digits>);

fn parse_pre_tokenizer(c: &Ctx, v: Option<&Value>) -> Result<BytePre, LoadError> {
    let field = "pre_tokenizer";
    let v = match v {
        None | Some(Value::Null) => {
            return Err(c.err(
                field,
                "missing: a byte-level BPE needs a ByteLevel pre-tokenizer",
            ))
        }
        Some(v) => v,
    };
    let o = c.obj(v, field)?;
    match c.type_of(o, field)? {
        "ByteLevel" => {
            let space = c.byte_level(o, field, true)?;
            Ok((
                Pattern::Gpt2,
                if space {
                    PrefixSpace::Text
                } else {
                    PrefixSpace::None
                },
                None,
            ))
        }
        "Sequence" => {
            let list = o
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| c.err("pre_tokenizer.pretokenizers", "missing or not an array"))?;
            let [split, bl] = &list[..] else {
                return Err(c.err(
                    "pre_tokenizer.pretokenizers",
                    "expected exactly [Split, ByteLevel(use_regex=false)] or [Digits, ByteLevel]",
                ));
            };
            let f0 = "pre_tokenizer.pretokenizers[0]";
            let so = c.obj(split, f0)?;
            let f1 = "pre_tokenizer.pretokenizers[1]";
            match c.type_of(so, f0)? {
                "Split" => {}
                "Digits" => {
                    let digits = match so.get("individual_digits") {
                        Some(Value::Bool(true)) => Digits::Individual,
                        _ => Digits::Runs,
                    };
                    let bo = c.obj(bl, f1)?;
                    if c.type_of(bo, f1)? != "ByteLevel" {
                        return Err(c.err(format!("{f1}.type"), "expected \"ByteLevel\""));
                    }
                    let space = c.byte_level(bo, f1, true)?;
                    let space = if space {
                        PrefixSpace::Text
                    } else {
                        PrefixSpace::None
                    };
                    return Ok((Pattern::Gpt2, space, Some(digits)));
                }
                _ => return Err(c.err(format!("{f0}.type"), "expected \"Split\" or \"Digits\"")),
            }
            let behavior = so.get("behavior").and_then(Value::as_str).unwrap_or("");
            if behavior != "Isolated" {
                return Err(c.err(
                    format!("{f0}.behavior"),
                    format!("{behavior:?} is not supported; kiln implements \"Isolated\""),
                ));
            }
            c.flag(so, f0, "invert", false)?;
            let pat = so
                .get("pattern")
                .and_then(Value::as_object)
                .ok_or_else(|| c.err(format!("{f0}.pattern"), "missing or not an object"))?;
            let pattern = if let Some(r) = pat.get("Regex").and_then(Value::as_str) {
                Pattern::from_regex(r)
            } else if let Some(s) = pat.get("String").and_then(Value::as_str) {
                Pattern::Custom(fancy_regex::escape(s).into_owned())
            } else {
                return Err(c.err(
                    format!("{f0}.pattern"),
                    "expected {\"Regex\": ...} or {\"String\": ...}",
                ));
            };
            let bo = c.obj(bl, f1)?;
            if c.type_of(bo, f1)? != "ByteLevel" {
                return Err(c.err(format!("{f1}.type"), "expected \"ByteLevel\""));
            }
            let space = c.byte_level(bo, f1, false)?;
            let space = if space {
                PrefixSpace::EachPiece
            } else {
                PrefixSpace::None
            };
            Ok((pattern, space, None))
        }
        other => Err(c.err(
            format!("{field}.type"),
            format!(
                "{other:?} is not supported; kiln reads ByteLevel or Sequence[Split, ByteLevel]"
            ),
        )),
    }
}

fn parse_merges(c: &Ctx, v: &Value) -> Result<Vec<(String, String)>, LoadError> {
    let arr = v
        .as_array()
        .ok_or_else(|| c.err("model.merges", "missing or not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(k, m)| {
            let field = || format!("model.merges[{k}]");
            match m {
                Value::String(s) => {
                    let mut p = s.split(' ');
                    match (p.next(), p.next(), p.next()) {
                        (Some(l), Some(r), None) => Ok((l.to_string(), r.to_string())),
                        _ => Err(c.err(field(), "a string merge must be \"left right\"")),
                    }
                }
                Value::Array(p) => match &p[..] {
                    [Value::String(l), Value::String(r)] => Ok((l.clone(), r.clone())),
                    _ => Err(c.err(field(), "a pair merge must be [\"left\", \"right\"]")),
                },
                _ => Err(c.err(field(), "expected a string or a pair of strings")),
            }
        })
        .collect()
}

/// Parses tokenizer.json bytes.
pub fn from_slice(json: &[u8], source: &str) -> Result<Tokenizer, LoadError> {
    let c = Ctx { source };
    let root: Value =
        serde_json::from_slice(json).map_err(|e| c.err("(root)", format!("invalid JSON: {e}")))?;
    let root = c.obj(&root, "(root)")?;
    let normalizer = hf_pipeline::parse_normalizer(&c, root.get("normalizer"))?;
    let model = c.obj(
        root.get("model").ok_or_else(|| c.err("model", "missing"))?,
        "model",
    )?;
    if let Some(t) = model.get("type") {
        if t != "BPE" {
            return Err(c.err(
                "model.type",
                format!("{t} is not supported; kiln reads BPE models only (not WordPiece, Unigram or WordLevel)"),
            ));
        }
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => {
                return Err(c.err(
                    format!("model.{key}"),
                    format!("{v} is not supported; use null"),
                ))
            }
        }
    }
    match model.get("dropout") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_f64() == Some(0.0) => {}
        Some(v) => {
            return Err(c.err(
                "model.dropout",
                format!("{v}: dropout is not supported (it makes encoding random); set it to null"),
            ))
        }
    }
    let ignore_merges = model
        .get("ignore_merges")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let vocab = parse_vocab(&c, model)?;
    let (specials, flags) = parse_added_tokens(&c, root, &vocab, !normalizer.is_empty())?;
    let merges = parse_merges(&c, model.get("merges").unwrap_or(&Value::Array(Vec::new())))?;
    let settings = hf_pipeline::settings(root, model);
    if !is_byte_level(root.get("pre_tokenizer")) {
        return Ok(hf_pipeline::char_bpe(
            &c,
            root,
            model,
            hf_pipeline::CharParts {
                normalizer,
                vocab,
                specials,
                merges,
                ignore_merges,
                settings,
            },
        )?
        .with_added_flags(&flags));
    }
    let (pattern, space, digits) = parse_pre_tokenizer(&c, root.get("pre_tokenizer"))?;
    c.flag(model, "model", "byte_fallback", false)?;

    let mut ordinary = Vec::with_capacity(vocab.len());
    for (s, id) in &vocab {
        if specials.iter().any(|(t, _)| t == s) {
            continue;
        }
        let bytes = string_to_bytes(s).ok_or_else(|| {
            c.err(
                format!("model.vocab[{s:?}]"),
                "the token has characters outside the byte-level alphabet and is not an added token",
            )
        })?;
        ordinary.push((bytes, *id));
    }
    let mut merge_bytes = Vec::with_capacity(merges.len());
    for (k, (l, r)) in merges.iter().enumerate() {
        match (string_to_bytes(l), string_to_bytes(r)) {
            (Some(lb), Some(rb)) => merge_bytes.push((lb, rb)),
            _ => {
                return Err(c.err(
                    format!("model.merges[{k}]"),
                    "a character is outside the byte-level alphabet",
                ))
            }
        }
    }
    let tok = Tokenizer::from_merges(ordinary, &merge_bytes, pattern, specials, ignore_merges)
        .map_err(|mut e| {
            e.source_name = source.to_string();
            if e.location == "vocabulary" {
                e.location = "model.vocab".into();
            } else if e.location.starts_with("merges[") {
                e.location = format!("model.{}", e.location);
            }
            e
        })?
        .with_added_flags(&flags);
    if normalizer.is_empty() && space == PrefixSpace::None && digits.is_none() {
        return Ok(tok);
    }
    Ok(tok.with_pipeline(Pipeline {
        normalizer,
        stage: Stage::ByteLevel(space, digits),
        hf: settings,
    }))
}

/// `model.vocab`: token string -> id.
fn parse_vocab<'v>(
    c: &Ctx,
    model: &'v Map<String, Value>,
) -> Result<HashMap<&'v str, u32>, LoadError> {
    let vocab_obj = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| c.err("model.vocab", "missing or not an object"))?;
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(vocab_obj.len());
    for (k, v) in vocab_obj {
        let id = v
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                c.err(
                    format!("model.vocab[{k:?}]"),
                    "the id is not a non-negative integer",
                )
            })?;
        vocab.insert(k, id);
    }
    Ok(vocab)
}

/// `added_tokens`: (content, id) and matching options, matched in the raw
/// text. With a normalizer, HF matches `normalized: true` tokens in the
/// normalized text instead, which kiln does not do: such a token is
/// refused.
fn parse_added_tokens(
    c: &Ctx,
    root: &Map<String, Value>,
    vocab: &HashMap<&str, u32>,
    normalizes: bool,
) -> Result<AddedTokens, LoadError> {
    let mut specials = Vec::new();
    let mut flags = Vec::new();
    let Some(added) = root.get("added_tokens") else {
        return Ok((specials, flags));
    };
    let arr = added
        .as_array()
        .ok_or_else(|| c.err("added_tokens", "not an array"))?;
    for (k, a) in arr.iter().enumerate() {
        let f = format!("added_tokens[{k}]");
        let o = c.obj(a, &f)?;
        let content = o
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| c.err(format!("{f}.content"), "missing or not a string"))?;
        let id = o
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| c.err(format!("{f}.id"), "missing or not a non-negative integer"))?;
        if normalizes && o.get("normalized").and_then(Value::as_bool) == Some(true) {
            return Err(c.err(
                format!("{f}.normalized"),
                format!("{content:?} is matched in normalized text, which kiln does not implement; set \"normalized\": false (as Llama, Mistral and Qwen files do)"),
            ));
        }
        let flag = |key: &str| o.get(key).and_then(Value::as_bool).unwrap_or(false);
        flags.push((
            content.to_string(),
            AddedFlags {
                lstrip: flag("lstrip"),
                rstrip: flag("rstrip"),
                single_word: flag("single_word"),
            },
        ));
        // HF prefers the model's id when the token is in the vocab.
        let id = vocab.get(content).copied().unwrap_or(id);
        specials.push((content.to_string(), id));
    }
    Ok((specials, flags))
}

/// Added tokens `(content, id)` and their matching options.
type AddedTokens = (Vec<(String, u32)>, Vec<(String, AddedFlags)>);

/// Loads a tokenizer.json file.
pub fn load(path: &Path) -> Result<Tokenizer, Error> {
    let data = super::read(path)?;
    Ok(from_slice(&data, &path.display().to_string())?)
}

fn added_tokens_value(tok: &Tokenizer) -> Vec<Value> {
    tok.special_tokens()
        .iter()
        .map(|(s, id)| {
            let f = tok.specials().flags(s);
            json!({
                "id": id, "content": s, "single_word": f.single_word, "lstrip": f.lstrip,
                "rstrip": f.rstrip, "normalized": false, "special": true
            })
        })
        .collect()
}

/// A SentencePiece-style tokenizer as its file had it: the normalizer,
/// pre-tokenizer, decoder, post-processor and model settings read, vocab
/// and merges as vocabulary strings.
fn char_value(tok: &Tokenizer, pipeline: &Pipeline, pieces: &[Option<Box<str>>]) -> Value {
    let mut vocab = Map::new();
    for (id, piece) in pieces.iter().enumerate() {
        if let Some(p) = piece {
            vocab.insert(p.to_string(), id.into());
        }
    }
    let piece = |id: u32| pieces[id as usize].as_deref().unwrap_or_default();
    let merges: Vec<Value> = match tok.merge_rule() {
        MergeRule::Merges(m) => m
            .iter()
            .map(|&(l, r, _)| json!([piece(l), piece(r)]))
            .collect(),
        MergeRule::Ranks => Vec::new(),
    };
    let hf = &pipeline.hf;
    let mut model = hf
        .get("model")
        .cloned()
        .unwrap_or_else(|| json!({"type": "BPE"}));
    model["vocab"] = Value::Object(vocab);
    model["merges"] = Value::Array(merges);
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens_value(tok),
        "normalizer": hf.get("normalizer").cloned().unwrap_or(Value::Null),
        "pre_tokenizer": hf.get("pre_tokenizer").cloned().unwrap_or(Value::Null),
        "post_processor": hf.get("post_processor").cloned().unwrap_or(Value::Null),
        "decoder": hf.get("decoder").cloned().unwrap_or(Value::Null),
        "model": model
    })
}

/// Renders a tokenizer as tokenizer.json.
pub fn to_value(tok: &Tokenizer) -> Result<Value, LoadError> {
    if let Some(p) = tok.pipeline() {
        if let Some(m) = p.chars() {
            return Ok(char_value(tok, p, &m.pieces));
        }
    }
    let mut vocab = Map::new();
    for (id, bytes) in tok.ordinary_tokens() {
        vocab.insert(bytes_to_string(bytes), id.into());
    }
    for (s, id) in tok.special_tokens() {
        vocab.insert(s.clone(), (*id).into());
    }
    let added = added_tokens_value(tok);
    let merges: Vec<Value> = tok
        .merges()?
        .into_iter()
        .map(|(l, r, _)| {
            let s = |id: u32| bytes_to_string(tok.token_bytes(id).expect("merge part is a token"));
            json!([s(l), s(r)])
        })
        .collect();
    let pre = match tok.pattern() {
        Pattern::Gpt2 => json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        }),
        p => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": p.hf_regex()}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]
        }),
    };
    // Rank files merge whole pre-tokens first (tiktoken); merge lists do not.
    let ignore_merges = matches!(tok.merge_rule(), MergeRule::Ranks) || tok.ignores_merges();
    let mut normalizer = Value::Null;
    let mut pre = pre;
    if let Some(p) = tok.pipeline() {
        // Normalizer and prefix space are the file's own settings.
        normalizer = p.hf.get("normalizer").cloned().unwrap_or(Value::Null);
        pre = p.hf.get("pre_tokenizer").cloned().unwrap_or(pre);
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges
        }
    }))
}

/// tokenizer.json text.
pub fn to_string(tok: &Tokenizer) -> Result<String, LoadError> {
    Ok(serde_json::to_string(&to_value(tok)?).expect("json serializes"))
}

/// Writes tokenizer.json atomically.
pub fn save(tok: &Tokenizer, path: &Path) -> Result<(), Error> {
    let text = to_string(tok)?;
    kiln_stdx::fs::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}
