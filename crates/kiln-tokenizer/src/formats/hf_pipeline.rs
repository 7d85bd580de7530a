//! tokenizer.json beyond plain byte-level BPE: the `normalizer`, and the
//! SentencePiece-style BPE of Llama 2 / Mistral / TinyLlama (Metaspace or
//! no pre-tokenizer, byte fallback, the Replace/ByteFallback/Fuse/Strip or
//! Metaspace decoder). What would change ids or text and is not
//! implemented is refused with its key named.

use super::hf::Ctx;
use crate::bpe::PairTable;
use crate::error::LoadError;
use crate::normalizer::Normalizer;
use crate::pipeline::{Pipeline, Stage};
use crate::sentencepiece::{
    fallback_byte, CharBpe, CharDecode, Fallback, Metaspace, PrependScheme,
};
use crate::tokenizer::Tokenizer;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The parts of the file `hf::from_slice` has read already.
pub(super) struct CharParts<'v> {
    pub normalizer: Vec<Normalizer>,
    pub vocab: HashMap<&'v str, u32>,
    pub specials: Vec<(String, u32)>,
    pub merges: Vec<(String, String)>,
    pub ignore_merges: bool,
    pub settings: Map<String, Value>,
}

/// The file's normalizer, pre-tokenizer, decoder, post-processor and model
/// settings (the model without vocab and merges), kept to write the file
/// back.
pub(super) fn settings(
    root: &Map<String, Value>,
    model: &Map<String, Value>,
) -> Map<String, Value> {
    let mut m = Map::new();
    for key in ["normalizer", "pre_tokenizer", "decoder", "post_processor"] {
        m.insert(key.into(), root.get(key).cloned().unwrap_or(Value::Null));
    }
    let mut settings = model.clone();
    settings.remove("vocab");
    settings.remove("merges");
    m.insert("model".into(), Value::Object(settings));
    m
}

fn string_field<'v>(
    c: &Ctx,
    o: &'v Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<&'v str, LoadError> {
    o.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| c.err(format!("{field}.{key}"), "missing or not a string"))
}

/// A `{"String": s}` pattern (Replace); a `Regex` one is refused.
fn literal_pattern<'v>(
    c: &Ctx,
    o: &'v Map<String, Value>,
    field: &str,
) -> Result<&'v str, LoadError> {
    let f = format!("{field}.pattern");
    let p = o
        .get("pattern")
        .and_then(Value::as_object)
        .ok_or_else(|| c.err(&f, "missing or not an object"))?;
    match (p.get("String").and_then(Value::as_str), p.get("Regex")) {
        (Some(s), _) => Ok(s),
        (None, Some(_)) => Err(c.err(
            format!("{f}.Regex"),
            "regex replacement is not supported; kiln implements {\"String\": ...} patterns",
        )),
        _ => Err(c.err(f, "expected {\"String\": ...}")),
    }
}

/// `normalizer`: null, one step or a `Sequence`, flattened to a list.
pub(super) fn parse_normalizer(c: &Ctx, v: Option<&Value>) -> Result<Vec<Normalizer>, LoadError> {
    let mut out = Vec::new();
    if let Some(v) = v.filter(|v| !v.is_null()) {
        push_normalizer(c, v, "normalizer", &mut out)?;
    }
    Ok(out)
}

fn push_normalizer(
    c: &Ctx,
    v: &Value,
    field: &str,
    out: &mut Vec<Normalizer>,
) -> Result<(), LoadError> {
    let o = c.obj(v, field)?;
    let n = match c.type_of(o, field)? {
        "Sequence" => {
            let list = o
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| c.err(format!("{field}.normalizers"), "missing or not an array"))?;
            for (k, step) in list.iter().enumerate() {
                push_normalizer(c, step, &format!("{field}.normalizers[{k}]"), out)?;
            }
            return Ok(());
        }
        "NFC" => Normalizer::Nfc,
        "NFD" => Normalizer::Nfd,
        "NFKC" => Normalizer::Nfkc,
        "NFKD" => Normalizer::Nfkd,
        "Lowercase" => Normalizer::Lowercase,
        "StripAccents" => Normalizer::StripAccents,
        "Strip" => {
            let side = |key: &str| o.get(key).and_then(Value::as_bool).unwrap_or(false);
            Normalizer::Strip {
                left: side("strip_left"),
                right: side("strip_right"),
            }
        }
        "Prepend" => Normalizer::Prepend(string_field(c, o, field, "prepend")?.to_string()),
        "Replace" => Normalizer::Replace {
            pattern: literal_pattern(c, o, field)?.to_string(),
            content: string_field(c, o, field, "content")?.to_string(),
        },
        other => {
            return Err(c.err(
                format!("{field}.type"),
                format!(
                    "{other:?} is not supported; kiln implements NFC, NFD, NFKC, NFKD, Lowercase, \
                     StripAccents, Strip, Prepend, Replace (String pattern) and Sequence; remove \
                     it or set the normalizer to null if the model does not need it"
                ),
            ))
        }
    };
    out.push(n);
    Ok(())
}

/// `pre_tokenizer` of a SentencePiece-style file: null or Metaspace.
fn parse_metaspace(c: &Ctx, v: Option<&Value>) -> Result<Option<Metaspace>, LoadError> {
    let field = "pre_tokenizer";
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let o = c.obj(v, field)?;
    match c.type_of(o, field)? {
        "Metaspace" => Ok(Some(metaspace(c, o, field)?)),
        other => Err(c.err(
            format!("{field}.type"),
            format!(
                "{other:?} is not supported; kiln reads ByteLevel (alone or after a Split in a \
                 Sequence) for byte-level BPE, and Metaspace or null for SentencePiece-style BPE"
            ),
        )),
    }
}

/// A Metaspace pre-tokenizer or decoder, with HF's defaults (`always`,
/// `split`) and its legacy `add_prefix_space`.
fn metaspace(c: &Ctx, o: &Map<String, Value>, field: &str) -> Result<Metaspace, LoadError> {
    let rep = string_field(c, o, field, "replacement")?;
    let mut chars = rep.chars();
    let (Some(replacement), None) = (chars.next(), chars.next()) else {
        return Err(c.err(format!("{field}.replacement"), "expected one character"));
    };
    let mut prepend = match o.get("prepend_scheme") {
        None | Some(Value::Null) => None,
        Some(v) => Some(match v.as_str() {
            Some("first") => PrependScheme::First,
            Some("always") => PrependScheme::Always,
            Some("never") => PrependScheme::Never,
            _ => {
                return Err(c.err(
                    format!("{field}.prepend_scheme"),
                    format!("{v}: expected \"first\", \"always\" or \"never\""),
                ))
            }
        }),
    };
    if o.get("add_prefix_space") == Some(&Value::Bool(false)) {
        if prepend.is_some_and(|p| p != PrependScheme::Never) {
            return Err(c.err(
                format!("{field}.add_prefix_space"),
                "false does not match prepend_scheme (HF refuses this too); remove add_prefix_space",
            ));
        }
        prepend = Some(PrependScheme::Never);
    }
    let split = match o.get("split") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(c.err(format!("{field}.split"), format!("{v} is not a boolean"))),
    };
    Ok(Metaspace {
        replacement,
        prepend: prepend.unwrap_or(PrependScheme::Always),
        split,
    })
}

/// `decoder` of a SentencePiece-style file, compiled to per-token bytes.
fn parse_decoder(c: &Ctx, v: Option<&Value>) -> Result<CharDecode, LoadError> {
    let field = "decoder";
    let v = v.filter(|v| !v.is_null()).ok_or_else(|| {
        c.err(
            field,
            "missing: HF would join the tokens with spaces; a SentencePiece-style file needs \
             its decoder (e.g. Sequence[Replace(\"▁\", \" \"), ByteFallback, Fuse, Strip])",
        )
    })?;
    let o = c.obj(v, field)?;
    let steps: Vec<(String, &Value)> = if c.type_of(o, field)? == "Sequence" {
        o.get("decoders")
            .and_then(Value::as_array)
            .ok_or_else(|| c.err("decoder.decoders", "missing or not an array"))?
            .iter()
            .enumerate()
            .map(|(k, d)| (format!("decoder.decoders[{k}]"), d))
            .collect()
    } else {
        vec![(field.to_string(), v)]
    };
    let mut d = CharDecode::default();
    let mut fused = false;
    for (f, step) in steps {
        let so = c.obj(step, &f)?;
        match c.type_of(so, &f)? {
            "Replace" => d.replace.push((
                literal_pattern(c, so, &f)?.to_string(),
                string_field(c, so, &f, "content")?.to_string(),
            )),
            "ByteFallback" => d.byte_fallback = true,
            "Fuse" => fused = true,
            "Metaspace" => {
                let m = metaspace(c, so, &f)?;
                if m.prepend != PrependScheme::Never {
                    // Its first-token rule counts tokens: after ByteFallback
                    // or Fuse a "token" is no longer one id.
                    if d.byte_fallback || fused {
                        return Err(c.err(
                            format!("{f}.type"),
                            "a Metaspace decoder after ByteFallback or Fuse is not supported; put it first",
                        ));
                    }
                    d.first_drops = Some(m.replacement);
                }
                d.replace.push((m.replacement.to_string(), " ".into()));
            }
            "Strip" => {
                let content = string_field(c, so, &f, "content")?;
                let num = |key: &str| so.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
                if content != " " || num("stop") != 0 || !fused {
                    return Err(c.err(
                        f,
                        "kiln implements Strip of leading spaces after Fuse only (content \" \", stop 0)",
                    ));
                }
                d.strip_spaces = num("start");
            }
            other => {
                return Err(c.err(
                    format!("{f}.type"),
                    format!(
                        "{other:?} is not supported for a SentencePiece-style model; kiln \
                         implements Replace, ByteFallback, Fuse, Strip and Metaspace"
                    ),
                ))
            }
        }
    }
    Ok(d)
}

/// Builds a SentencePiece-style tokenizer: characters are the first
/// symbols, merges join vocabulary strings.
pub(super) fn char_bpe(
    c: &Ctx,
    root: &Map<String, Value>,
    model: &Map<String, Value>,
    p: CharParts,
) -> Result<Tokenizer, LoadError> {
    let metaspace = parse_metaspace(c, root.get("pre_tokenizer"))?;
    let decode = parse_decoder(c, root.get("decoder"))?;
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    let bytes = byte_fallback.then(|| {
        let mut t = Box::new([u32::MAX; 256]);
        for (b, slot) in t.iter_mut().enumerate() {
            if let Some(&id) = p.vocab.get(format!("<0x{b:02X}>").as_str()) {
                *slot = id;
            }
        }
        t
    });
    let unk = match model.get("unk_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(
            *p.vocab
                .get(u.as_str())
                .ok_or_else(|| c.err("model.unk_token", format!("{u:?} is not in model.vocab")))?,
        ),
        Some(v) => return Err(c.err("model.unk_token", format!("{v} is not a string"))),
    };
    let every_byte = bytes
        .as_ref()
        .is_some_and(|t| t.iter().all(|&i| i != u32::MAX));
    if unk.is_none() && !every_byte {
        return Err(c.err(
            "model.unk_token",
            "null, and byte_fallback does not cover all 256 <0xNN> tokens: HF would drop \
             characters outside the vocabulary; set unk_token (or byte_fallback with all \
             <0xNN> tokens), or, for a byte-level BPE, a ByteLevel pre_tokenizer",
        ));
    }
    let fallback = Fallback {
        bytes,
        unk,
        fuse_unk: model.get("fuse_unk").and_then(Value::as_bool) == Some(true),
    };

    let max_id = p
        .vocab
        .values()
        .chain(p.specials.iter().map(|(_, i)| i))
        .copied()
        .max()
        .unwrap_or(0);
    let mut pieces: Vec<Option<Box<str>>> = vec![None; max_id as usize + 1];
    let mut ordinary: Vec<(Box<str>, u32)> = Vec::with_capacity(p.vocab.len());
    for (s, &id) in &p.vocab {
        if pieces[id as usize].is_some() {
            return Err(c.err(
                format!("model.vocab[{s:?}]"),
                format!("token id {id} appears twice"),
            ));
        }
        pieces[id as usize] = Some((*s).into());
        if !p.specials.iter().any(|(t, _)| t == s) {
            ordinary.push(((*s).into(), id));
        }
    }
    for (text, id) in &p.specials {
        pieces[*id as usize].get_or_insert_with(|| text.as_str().into());
    }
    ordinary.sort_by_key(|(_, id)| *id);

    let mut table = PairTable::with_capacity(p.merges.len());
    let mut list = Vec::with_capacity(p.merges.len());
    for (rank, (l, r)) in p.merges.iter().enumerate() {
        let find = |s: &str| p.vocab.get(s).copied();
        let joined = format!("{l}{r}");
        let (Some(li), Some(ri), Some(mi)) = (find(l), find(r), find(&joined)) else {
            return Err(c.err(
                format!("model.merges[{rank}]"),
                format!("merge {l:?} + {r:?} uses or makes a token that is not in the vocabulary"),
            ));
        };
        if table.get(li, ri).is_none() {
            table.insert(li, ri, rank as u32, mi);
            list.push((li, ri, mi));
        }
    }

    // Decoded bytes per token; `<0xNN>` tokens last, so that `token_id`
    // of a space finds "▁", not <0x20>.
    let is_byte = |s: &str| decode.byte_fallback && fallback_byte(s).is_some();
    let mut decoded: Vec<(Box<[u8]>, u32)> = Vec::with_capacity(ordinary.len());
    for pass_bytes in [false, true] {
        for (s, id) in ordinary.iter().filter(|(s, _)| is_byte(s) == pass_bytes) {
            decoded.push((decode.bytes(s).into(), *id));
        }
    }
    let model = CharBpe::new(
        metaspace,
        pieces,
        &ordinary,
        table,
        fallback,
        p.ignore_merges,
        decode,
    );
    Ok(Tokenizer::from_char_bpe(
        decoded,
        p.specials,
        list,
        p.ignore_merges,
        Pipeline {
            normalizer: p.normalizer,
            stage: Stage::Chars(Box::new(model)),
            hf: p.settings,
        },
    ))
}
