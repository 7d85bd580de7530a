//! GPT-2's `vocab.json` (= `encoder.json`) + `merges.txt` (= `vocab.bpe`).
//! Tokens are in the byte->unicode alphabet; merge k makes id 256 + k.
//! Vocabulary entries that are neither a byte nor a merge result (GPT-2's
//! `<|endoftext|>`) become special tokens.

use crate::byte_unicode::{bytes_to_string, string_to_bytes};
use crate::error::{Error, LoadError};
use crate::pattern::Pattern;
use crate::tokenizer::Tokenizer;
use std::collections::HashSet;
use std::path::Path;

/// Parses vocab.json text into `(token string, id)`.
pub fn parse_vocab(json: &[u8], source: &str) -> Result<Vec<(String, u32)>, LoadError> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| LoadError::new(source, "(root)", format!("not a JSON object: {e}")))?;
    map.into_iter()
        .map(|(k, v)| {
            let id = v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    LoadError::new(
                        source,
                        format!("{k:?}"),
                        "the id is not a non-negative integer",
                    )
                })?;
            Ok((k, id))
        })
        .collect()
}

/// Parses merges.txt: optional `#version` line, then `left right` lines.
pub fn parse_merges(text: &str, source: &str) -> Result<Vec<(String, String)>, LoadError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if (n == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(l), Some(r), None) if !l.is_empty() && !r.is_empty() => {
                out.push((l.to_string(), r.to_string()))
            }
            _ => {
                return Err(LoadError::new(
                    source,
                    format!("line {}", n + 1),
                    "expected `left right` (two tokens separated by one space)",
                ))
            }
        }
    }
    Ok(out)
}

/// Builds a tokenizer from parsed GPT-2 files (`pattern`: usually GPT-2's).
pub fn from_parts(
    vocab: Vec<(String, u32)>,
    merges: Vec<(String, String)>,
    pattern: Pattern,
    vocab_source: &str,
    merges_source: &str,
) -> Result<Tokenizer, LoadError> {
    let mut merged: HashSet<String> = HashSet::new();
    let mut merge_bytes = Vec::with_capacity(merges.len());
    for (k, (l, r)) in merges.iter().enumerate() {
        let lb = string_to_bytes(l);
        let rb = string_to_bytes(r);
        let (Some(lb), Some(rb)) = (lb, rb) else {
            return Err(LoadError::new(
                merges_source,
                format!("merge {k} ({l} {r})"),
                "a character is outside GPT-2's byte alphabet",
            ));
        };
        merged.insert(format!("{l}{r}"));
        merge_bytes.push((lb, rb));
    }
    let mut ordinary = Vec::with_capacity(vocab.len());
    let mut specials = Vec::new();
    for (s, id) in vocab {
        let is_byte = s.chars().count() == 1;
        match string_to_bytes(&s) {
            Some(b) if is_byte || merged.contains(&s) => ordinary.push((b, id)),
            _ => specials.push((s, id)),
        }
    }
    Tokenizer::from_merges(ordinary, &merge_bytes, pattern, specials, false).map_err(|mut e| {
        e.source_name = format!("{vocab_source} + {merges_source}");
        e
    })
}

/// Loads `vocab.json` + `merges.txt` with GPT-2's pattern.
pub fn load(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer, Error> {
    let vs = vocab_path.display().to_string();
    let ms = merges_path.display().to_string();
    let vocab = parse_vocab(&super::read(vocab_path)?, &vs)?;
    let merges_raw = super::read(merges_path)?;
    let text = String::from_utf8(merges_raw)
        .map_err(|e| LoadError::new(&ms, "(file)", format!("not UTF-8: {e}")))?;
    let merges = parse_merges(&text, &ms)?;
    Ok(from_parts(vocab, merges, Pattern::Gpt2, &vs, &ms)?)
}

/// Renders `(vocab.json, merges.txt)` text for a tokenizer.
pub fn to_strings(tok: &Tokenizer) -> Result<(String, String), LoadError> {
    let mut vocab = serde_json::Map::new();
    for (id, bytes) in tok.ordinary_tokens() {
        vocab.insert(bytes_to_string(bytes), id.into());
    }
    for (s, id) in tok.special_tokens() {
        vocab.insert(s.clone(), (*id).into());
    }
    let mut merges = String::from("#version: 0.2\n");
    for (l, r, _) in tok.merges()? {
        let lb = tok.token_bytes(l).expect("merge part is a token");
        let rb = tok.token_bytes(r).expect("merge part is a token");
        merges.push_str(&bytes_to_string(lb));
        merges.push(' ');
        merges.push_str(&bytes_to_string(rb));
        merges.push('\n');
    }
    let vocab = serde_json::to_string(&serde_json::Value::Object(vocab)).expect("json");
    Ok((vocab, merges))
}
