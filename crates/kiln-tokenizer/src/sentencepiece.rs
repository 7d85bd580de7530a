//! SentencePiece-style BPE as tokenizer.json stores it (Llama 2, Mistral,
//! TinyLlama): the first symbols are characters, not bytes; a character
//! outside the vocabulary becomes its UTF-8 bytes as `<0xNN>` tokens (byte
//! fallback) or the unknown token; spaces are the `▁` of the Metaspace
//! pre-tokenizer (or of a `Prepend` + `Replace` normalizer). Decoding maps
//! `▁` back to a space, `<0xNN>` to its byte, and may strip leading spaces.

use crate::bpe::{merge_ids, PairTable};
use rustc_hash::FxHashMap;

/// When Metaspace puts a `▁` in front of a piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrependScheme {
    /// Every text between added tokens.
    Always,
    /// Only the text at the start of the input.
    First,
    Never,
}

/// HF's Metaspace pre-tokenizer: spaces become `replacement`, a
/// `replacement` is prepended as `prepend` says, and with `split` the text
/// is cut before every `replacement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metaspace {
    pub replacement: char,
    pub prepend: PrependScheme,
    pub split: bool,
}

impl Metaspace {
    /// Calls `f` with each piece of `text` (non-empty); `at_start` = the
    /// text begins the input (no added token before it).
    fn pieces(&self, text: &str, at_start: bool, mut f: impl FnMut(&str)) {
        let mut rep = [0u8; 4];
        let rep = self.replacement.encode_utf8(&mut rep);
        let mut s = text.replace(' ', rep);
        let prepend = match self.prepend {
            PrependScheme::Always => true,
            PrependScheme::First => at_start,
            PrependScheme::Never => false,
        };
        if prepend && !s.starts_with(self.replacement) {
            s.insert(0, self.replacement);
        }
        if !self.split {
            f(&s);
            return;
        }
        // HF's MergedWithNext: each replacement starts a new piece.
        let mut start = 0;
        for (i, _) in s.match_indices(self.replacement) {
            if i > start {
                f(&s[start..i]);
            }
            start = i;
        }
        if start < s.len() {
            f(&s[start..]);
        }
    }
}

/// How a character outside the vocabulary is encoded.
#[derive(Debug, Clone)]
pub(crate) struct Fallback {
    /// `<0xNN>` ids by byte, `u32::MAX` where the vocabulary lacks one;
    /// `None` without byte fallback.
    pub bytes: Option<Box<[u32; 256]>>,
    pub unk: Option<u32>,
    /// Consecutive unknown characters become one unknown token.
    pub fuse_unk: bool,
}

/// The decoder, compiled to bytes per token plus two rules.
#[derive(Debug, Clone, Default)]
pub(crate) struct CharDecode {
    /// `Replace` / `Metaspace` steps on each token's string, in order.
    pub replace: Vec<(String, String)>,
    /// `ByteFallback`: a `<0xNN>` token is its byte.
    pub byte_fallback: bool,
    /// The Metaspace decoder drops this character from the first token
    /// (where it maps it to a space elsewhere).
    pub first_drops: Option<char>,
    /// `Strip` after `Fuse`: this many leading spaces of the text go.
    pub strip_spaces: usize,
}

impl CharDecode {
    /// The bytes `piece` contributes to decoded text.
    pub fn bytes(&self, piece: &str) -> Vec<u8> {
        decoded_bytes(piece, &self.replace, self.byte_fallback)
    }

    /// The same for the first token of a text.
    pub fn first_bytes(&self, piece: &str) -> Vec<u8> {
        match self.first_drops {
            Some(c) => self.bytes(&piece.replace(c, "")),
            None => self.bytes(piece),
        }
    }
}

/// The character-level BPE model.
#[derive(Debug, Clone)]
pub(crate) struct CharBpe {
    pub metaspace: Option<Metaspace>,
    /// Single-character tokens: the first symbols.
    chars: FxHashMap<char, u32>,
    /// Every ordinary token, for `ignore_merges` (empty without it).
    whole: FxHashMap<Box<str>, u32>,
    fallback: Fallback,
    pairs: PairTable,
    /// id -> the token's string in the vocabulary (added tokens' text).
    pub pieces: Vec<Option<Box<str>>>,
    pub decode: CharDecode,
}

impl CharBpe {
    pub fn new(
        metaspace: Option<Metaspace>,
        pieces: Vec<Option<Box<str>>>,
        ordinary: &[(Box<str>, u32)],
        pairs: PairTable,
        fallback: Fallback,
        ignore_merges: bool,
        decode: CharDecode,
    ) -> Self {
        let mut chars = FxHashMap::default();
        let mut whole = FxHashMap::default();
        for (s, id) in ordinary {
            let mut it = s.chars();
            if let (Some(c), None) = (it.next(), it.next()) {
                chars.insert(c, *id);
            }
            if ignore_merges {
                whole.insert(s.clone(), *id);
            }
        }
        CharBpe {
            metaspace,
            chars,
            whole,
            fallback,
            pairs,
            pieces,
            decode,
        }
    }

    /// Encodes normalized text between added tokens.
    pub fn encode(&self, text: &str, at_start: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut scratch = Vec::new();
        match &self.metaspace {
            Some(m) => m.pieces(text, at_start, |p| self.encode_piece(p, out, &mut scratch)),
            None => self.encode_piece(text, out, &mut scratch),
        }
    }

    /// HF's `BPE::merge_word` without subword prefixes or dropout.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>, ids: &mut Vec<u32>) {
        if let Some(&id) = self.whole.get(piece) {
            out.push(id);
            return;
        }
        ids.clear();
        // A pending unknown token (fused over consecutive characters).
        let mut unk = false;
        for c in piece.chars() {
            if let Some(&id) = self.chars.get(&c) {
                if unk {
                    ids.extend(self.fallback.unk);
                    unk = false;
                }
                ids.push(id);
                continue;
            }
            if let Some(bytes) = &self.fallback.bytes {
                let mut buf = [0u8; 4];
                let utf8 = c.encode_utf8(&mut buf).as_bytes();
                if utf8.iter().all(|&b| bytes[b as usize] != u32::MAX) {
                    // As HF: a pending unknown token stays pending (it
                    // follows these bytes, and may fuse with a later one).
                    ids.extend(utf8.iter().map(|&b| bytes[b as usize]));
                    continue;
                }
            }
            if unk && !self.fallback.fuse_unk {
                ids.extend(self.fallback.unk);
            }
            unk = self.fallback.unk.is_some();
        }
        if unk {
            ids.extend(self.fallback.unk);
        }
        merge_ids(ids, &self.pairs);
        out.extend_from_slice(ids);
    }
}

/// The bytes a token contributes to decoded text, as the decoder steps
/// `Replace`/`Metaspace` (`from` -> `to`) and `ByteFallback` make them.
pub(crate) fn decoded_bytes(
    piece: &str,
    replace: &[(String, String)],
    byte_fallback: bool,
) -> Vec<u8> {
    if byte_fallback {
        if let Some(b) = fallback_byte(piece) {
            return vec![b];
        }
    }
    let mut s = piece.to_string();
    for (from, to) in replace {
        s = s.replace(from.as_str(), to);
    }
    s.into_bytes()
}

/// The byte of a `<0xNN>` token (HF's ByteFallback test).
pub(crate) fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(m: &Metaspace, text: &str, at_start: bool) -> Vec<String> {
        let mut v = Vec::new();
        m.pieces(text, at_start, |p| v.push(p.to_string()));
        v
    }

    #[test]
    fn metaspace_prepends_and_splits_as_hf() {
        let mut m = Metaspace {
            replacement: '▁',
            prepend: PrependScheme::First,
            split: true,
        };
        assert_eq!(pieces(&m, "a  b", true), ["▁a", "▁", "▁b"]);
        assert_eq!(pieces(&m, "a b", false), ["a", "▁b"]);
        assert_eq!(pieces(&m, " a", true), ["▁a"]);
        m.split = false;
        assert_eq!(pieces(&m, "a b", true), ["▁a▁b"]);
        m.prepend = PrependScheme::Always;
        assert_eq!(pieces(&m, "a", false), ["▁a"]);
    }

    #[test]
    fn byte_tokens_decode_to_their_byte() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xfF>"), Some(0xff));
        assert_eq!(fallback_byte("<0x0A0>"), None);
        let rep = [("▁".to_string(), " ".to_string())];
        assert_eq!(decoded_bytes("▁the", &rep, true), b" the");
        assert_eq!(decoded_bytes("<0x41>", &rep, false), b"<0x41>");
    }
}
