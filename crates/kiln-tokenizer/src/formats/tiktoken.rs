//! tiktoken rank files: one `base64(token) rank` line per token, no header,
//! no special tokens, no regex (those come from the encoding's name).

use crate::error::{Error, LoadError};
use crate::pattern::Pattern;
use crate::Tokenizer;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::path::Path;

/// Pattern and special tokens of a named OpenAI encoding.
#[derive(Debug, Clone)]
pub struct EncodingSpec {
    pub name: &'static str,
    pub pattern: Pattern,
    pub specials: Vec<(String, u32)>,
}

/// The named encodings tiktoken ships (their rank files are not embedded
/// here; load them from a file).
pub fn openai_encoding(name: &str) -> Option<EncodingSpec> {
    let s = |v: &[(&str, u32)]| v.iter().map(|(t, i)| (t.to_string(), *i)).collect();
    Some(match name {
        "r50k_base" | "r50k" | "gpt2" => EncodingSpec {
            name: "r50k_base",
            pattern: Pattern::Gpt2,
            specials: s(&[("<|endoftext|>", 50256)]),
        },
        "p50k_base" | "p50k" => EncodingSpec {
            name: "p50k_base",
            pattern: Pattern::Gpt2,
            specials: s(&[("<|endoftext|>", 50256)]),
        },
        "cl100k_base" | "cl100k" => EncodingSpec {
            name: "cl100k_base",
            pattern: Pattern::Cl100k,
            specials: s(&[
                ("<|endoftext|>", 100257),
                ("<|fim_prefix|>", 100258),
                ("<|fim_middle|>", 100259),
                ("<|fim_suffix|>", 100260),
                ("<|endofprompt|>", 100276),
            ]),
        },
        "o200k_base" | "o200k" => EncodingSpec {
            name: "o200k_base",
            pattern: Pattern::O200k,
            specials: s(&[("<|endoftext|>", 199999), ("<|endofprompt|>", 200018)]),
        },
        _ => return None,
    })
}

/// Parses rank-file text into `(token bytes, rank)`.
pub fn parse_ranks(data: &[u8], source: &str) -> Result<Vec<(Vec<u8>, u32)>, LoadError> {
    let mut out = Vec::new();
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let at = || format!("line {}", n + 1);
        let mut parts = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|p| !p.is_empty());
        let (Some(tok), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(LoadError::new(
                source,
                at(),
                "expected `<base64 token> <rank>`",
            ));
        };
        let bytes = STANDARD
            .decode(tok)
            .map_err(|e| LoadError::new(source, at(), format!("bad base64 token: {e}")))?;
        let rank = std::str::from_utf8(rank)
            .ok()
            .and_then(|r| r.parse::<u32>().ok())
            .ok_or_else(|| LoadError::new(source, at(), "the rank is not a number"))?;
        out.push((bytes, rank));
    }
    Ok(out)
}

/// Builds a tokenizer from rank-file bytes.
pub fn from_bytes(
    data: &[u8],
    source: &str,
    pattern: Pattern,
    specials: Vec<(String, u32)>,
) -> Result<Tokenizer, LoadError> {
    let ranks = parse_ranks(data, source)?;
    Tokenizer::from_ranks(ranks, pattern, specials).map_err(|mut e| {
        e.source_name = source.to_string();
        e
    })
}

/// Loads a `.tiktoken` file. `encoding` names the OpenAI encoding (pattern
/// and special tokens); when `None` it is guessed from the file name.
pub fn load(path: &Path, encoding: Option<&str>) -> Result<Tokenizer, Error> {
    let source = path.display().to_string();
    let guess = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = encoding.unwrap_or(&guess);
    let spec = openai_encoding(name).ok_or_else(|| {
        LoadError::new(
            &source,
            "encoding",
            format!(
                "unknown encoding {name:?}: name the file r50k_base/p50k_base/cl100k_base/o200k_base.tiktoken or pass the encoding"
            ),
        )
    })?;
    let data = super::read(path)?;
    Ok(from_bytes(&data, &source, spec.pattern, spec.specials)?)
}

/// Writes ordinary tokens as a rank file (rank = id).
pub fn to_string(tok: &Tokenizer) -> String {
    let mut out = String::new();
    for (id, bytes) in tok.ordinary_tokens() {
        out.push_str(&STANDARD.encode(bytes));
        out.push(' ');
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out
}
