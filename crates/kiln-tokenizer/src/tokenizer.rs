//! The tokenizer: vocabulary + pair table + pre-tokenizer + special tokens.

use crate::bpe::{self, BytePairs, PairTable, Rank};
use crate::error::{DecodeError, EncodeError, LoadError};
use crate::pattern::{Pattern, PreTokenizer};
use crate::pipeline::{Pipeline, PrefixSpace, Stage};
use crate::rules::{RankRule, TableRule};
use crate::special::{AddedFlags, SpecialMode, SpecialPolicy, Specials};
use crate::stream::StreamDecoder;
use crate::token_map::TokenMap;
use rayon::prelude::*;
use std::borrow::Cow;

/// How the pair table was built, kept so the tokenizer can be written back.
#[derive(Debug, Clone)]
pub enum MergeRule {
    /// tiktoken: any adjacent pair whose concatenation is a token merges,
    /// lowest token rank (= id) first.
    Ranks,
    /// An explicit merge list `(left, right, merged)` in priority order.
    Merges(Vec<(u32, u32, u32)>),
}

/// A byte-level BPE tokenizer. Immutable and `Sync`: share one across
/// threads (there is no per-call scratch state to contend on).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// id -> bytes for ordinary tokens; special tokens hold their text.
    id_to_bytes: Vec<Option<Box<[u8]>>>,
    /// bytes -> id for ordinary tokens.
    bytes_to_id: TokenMap,
    byte_ids: [u32; 256],
    /// The merge-list pair table (empty for rank files: see `RankRule`).
    pairs: PairTable,
    /// Every two-byte pair under the rule, for the first round of merges.
    byte_pairs: BytePairs,
    rule: MergeRule,
    /// Emit a whole pre-token when it is itself a token (tiktoken always
    /// does; HF only with `ignore_merges`).
    whole_piece_first: bool,
    max_token_len: usize,
    pattern: Pattern,
    pre: PreTokenizer,
    specials: Specials,
    /// Normalizer, prefix space or SentencePiece model (tokenizer.json);
    /// `None` keeps the direct byte-level path.
    pipeline: Option<Box<Pipeline>>,
}

fn load_err(what: &str, problem: impl Into<String>) -> LoadError {
    LoadError::new(what, "vocabulary", problem)
}

impl Tokenizer {
    /// Builds a tokenizer from tiktoken ranks (`bytes -> rank`, rank = id).
    pub fn from_ranks(
        ranks: Vec<(Vec<u8>, u32)>,
        pattern: Pattern,
        specials: Vec<(String, u32)>,
    ) -> Result<Self, LoadError> {
        let mut t = Self::base(ranks, pattern, specials, "ranks")?;
        t.byte_pairs = BytePairs::new(|a, b| RankRule::lookup(&t.bytes_to_id, &[a, b]));
        t.rule = MergeRule::Ranks;
        t.whole_piece_first = true;
        Ok(t)
    }

    /// Builds a tokenizer from a vocabulary and a merge list in priority
    /// order (`(left bytes, right bytes)`; the merged token must be in the
    /// vocabulary). `ignore_merges` = emit whole pre-tokens found in the
    /// vocabulary without merging (HF's flag).
    pub fn from_merges(
        vocab: Vec<(Vec<u8>, u32)>,
        merges: &[(Vec<u8>, Vec<u8>)],
        pattern: Pattern,
        specials: Vec<(String, u32)>,
        ignore_merges: bool,
    ) -> Result<Self, LoadError> {
        let mut t = Self::base(vocab, pattern, specials, "vocab")?;
        let mut list = Vec::with_capacity(merges.len());
        let mut pairs = PairTable::with_capacity(merges.len());
        for (rank, (l, r)) in merges.iter().enumerate() {
            let find = |b: &[u8]| t.bytes_to_id.get(b);
            let joined = [l.as_slice(), r.as_slice()].concat();
            let (Some(li), Some(ri), Some(mi)) = (find(l), find(r), find(&joined)) else {
                return Err(LoadError::new(
                    "merges",
                    format!("merges[{rank}]"),
                    format!(
                        "merge {:?} + {:?} uses or makes a token that is not in the vocabulary",
                        String::from_utf8_lossy(l),
                        String::from_utf8_lossy(r)
                    ),
                ));
            };
            // A repeated pair keeps its first (highest-priority) rank.
            if pairs.get(li, ri).is_none() {
                pairs.insert(li, ri, rank as Rank, mi);
                list.push((li, ri, mi));
            }
        }
        t.byte_pairs =
            BytePairs::new(|a, b| pairs.packed(t.byte_ids[a as usize], t.byte_ids[b as usize]));
        t.pairs = pairs;
        t.rule = MergeRule::Merges(list);
        t.whole_piece_first = ignore_merges;
        Ok(t)
    }

    fn base(
        vocab: Vec<(Vec<u8>, u32)>,
        pattern: Pattern,
        specials: Vec<(String, u32)>,
        what: &str,
    ) -> Result<Self, LoadError> {
        let pre = PreTokenizer::new(&pattern).map_err(|e| {
            LoadError::new(
                what,
                "pattern",
                format!("the pre-tokenization regex does not compile: {e}"),
            )
        })?;
        let max_id = vocab
            .iter()
            .map(|(_, i)| *i)
            .chain(specials.iter().map(|(_, i)| *i))
            .max()
            .unwrap_or(0);
        let mut id_to_bytes: Vec<Option<Box<[u8]>>> = vec![None; max_id as usize + 1];
        let mut bytes_to_id = TokenMap::with_capacity(vocab.len());
        let mut max_token_len = 0;
        for (bytes, id) in vocab {
            if bytes.is_empty() {
                return Err(load_err(what, format!("token id {id} is empty")));
            }
            if id_to_bytes[id as usize].is_some() {
                return Err(load_err(what, format!("token id {id} appears twice")));
            }
            max_token_len = max_token_len.max(bytes.len());
            let b: Box<[u8]> = bytes.into();
            if let Some(old) = bytes_to_id.insert(&b, id) {
                return Err(load_err(
                    what,
                    format!(
                        "the token {:?} has two ids, {old} and {id}",
                        String::from_utf8_lossy(&b)
                    ),
                ));
            }
            id_to_bytes[id as usize] = Some(b);
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] = bytes_to_id.get(&[b][..]).ok_or_else(|| {
                load_err(
                    what,
                    format!("byte 0x{b:02x} has no token; a byte-level BPE needs all 256"),
                )
            })?;
        }
        for (text, id) in &specials {
            if let Some(Some(existing)) = id_to_bytes.get(*id as usize) {
                if existing.as_ref() != text.as_bytes() {
                    return Err(LoadError::new(
                        what,
                        "special tokens",
                        format!("special token {text:?} reuses id {id} of an ordinary token"),
                    ));
                }
            }
            id_to_bytes[*id as usize] = Some(text.as_bytes().into());
        }
        Ok(Tokenizer {
            id_to_bytes,
            bytes_to_id,
            byte_ids,
            pairs: PairTable::default(),
            byte_pairs: BytePairs::default(),
            rule: MergeRule::Ranks,
            whole_piece_first: true,
            max_token_len,
            pattern,
            pre,
            specials: Specials::new(specials),
            pipeline: None,
        })
    }

    /// Runs `pipeline` around this byte-level tokenizer's BPE.
    pub(crate) fn with_pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = Some(Box::new(pipeline));
        self
    }

    /// A SentencePiece-style tokenizer (`pipeline.stage` is `Chars`).
    /// `ordinary` holds each token's decoded bytes, the preferred token of
    /// equal bytes first (for `token_id`); `merges` is for writing back.
    pub(crate) fn from_char_bpe(
        ordinary: Vec<(Box<[u8]>, u32)>,
        specials: Vec<(String, u32)>,
        merges: Vec<(u32, u32, u32)>,
        ignore_merges: bool,
        pipeline: Pipeline,
    ) -> Self {
        let max_id = ordinary
            .iter()
            .map(|(_, i)| *i)
            .chain(specials.iter().map(|(_, i)| *i))
            .max()
            .unwrap_or(0);
        let mut id_to_bytes: Vec<Option<Box<[u8]>>> = vec![None; max_id as usize + 1];
        let mut bytes_to_id = TokenMap::with_capacity(ordinary.len());
        let mut max_token_len = 0;
        for (bytes, id) in ordinary {
            max_token_len = max_token_len.max(bytes.len());
            if bytes_to_id.get(&bytes).is_none() {
                bytes_to_id.insert(&bytes, id);
            }
            id_to_bytes[id as usize] = Some(bytes);
        }
        let chars = pipeline.chars().expect("a character-level pipeline");
        for (text, id) in &specials {
            let piece = chars.pieces[*id as usize].as_deref().unwrap_or(text);
            id_to_bytes[*id as usize] = Some(chars.decode.bytes(piece).into());
        }
        let pattern = Pattern::Custom(String::new());
        let pre = PreTokenizer::new(&pattern).expect("the empty regex compiles");
        Tokenizer {
            id_to_bytes,
            bytes_to_id,
            byte_ids: [0; 256],
            pairs: PairTable::default(),
            byte_pairs: BytePairs::default(),
            rule: MergeRule::Merges(merges),
            whole_piece_first: ignore_merges,
            max_token_len,
            pattern,
            pre,
            specials: Specials::new(specials),
            pipeline: Some(Box::new(pipeline)),
        }
    }

    pub(crate) fn pipeline(&self) -> Option<&Pipeline> {
        self.pipeline.as_deref()
    }

    /// tokenizer.json's `lstrip`/`rstrip`/`single_word` of added tokens.
    pub(crate) fn with_added_flags(mut self, flags: &[(String, AddedFlags)]) -> Self {
        self.specials.set_flags(flags);
        self
    }

    /// Uses the fancy-regex engine on the verbatim pattern instead of the
    /// hand-written lexer (the reference path; slower).
    pub fn with_regex_pretokenizer(mut self) -> Result<Self, fancy_regex::Error> {
        self.pre = PreTokenizer::regex(&self.pattern)?;
        Ok(self)
    }

    // ---- encode ----

    /// Encodes one pre-token, appending ids to `out`.
    #[inline]
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(self.byte_ids[piece[0] as usize]);
            return;
        }
        if self.whole_piece_first && piece.len() <= self.max_token_len {
            if let Some(id) = self.bytes_to_id.get(piece) {
                out.push(id);
                return;
            }
        }
        scratch.clear();
        scratch.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        self.merge(piece, scratch, Rank::MAX);
        out.extend_from_slice(scratch);
    }

    /// Merges `ids` (the byte ids of `piece`) under this tokenizer's rule,
    /// with pairs of rank below `limit`: one monomorphized loop per rule, no
    /// dispatch per pair.
    #[inline(always)]
    fn merge(&self, piece: &[u8], ids: &mut Vec<u32>, limit: Rank) {
        match self.rule {
            MergeRule::Ranks => bpe::merge_below(
                piece,
                ids,
                &RankRule {
                    map: &self.bytes_to_id,
                    max_token_len: self.max_token_len,
                    bytes: &self.byte_pairs,
                },
                limit,
            ),
            MergeRule::Merges(_) => bpe::merge_below(
                piece,
                ids,
                &TableRule {
                    table: &self.pairs,
                    bytes: &self.byte_pairs,
                },
                limit,
            ),
        }
    }

    /// Encodes text with no special-token handling, appending to `out`.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) {
        self.encode_text(text, true, out)
    }

    /// Encodes the text between special tokens; `at_start` = it begins the
    /// input (Metaspace's `prepend_scheme: "first"` asks).
    #[inline]
    pub(crate) fn encode_text(&self, text: &str, at_start: bool, out: &mut Vec<u32>) {
        match &self.pipeline {
            None => {
                let mut scratch = Vec::new();
                self.pre
                    .split(text, |p| self.encode_piece(p.as_bytes(), out, &mut scratch));
            }
            Some(p) => self.encode_through(p, text, at_start, out),
        }
    }

    /// `encode_text` through a pipeline: as HF, an empty text (before or
    /// after normalizing) gives nothing, not even a prefix.
    fn encode_through(&self, p: &Pipeline, text: &str, at_start: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let text = p.normalized(text);
        if text.is_empty() {
            return;
        }
        match &p.stage {
            Stage::Chars(model) => model.encode(&text, at_start, out),
            Stage::ByteLevel(space, digits) => {
                let mut scratch = Vec::new();
                // ByteLevel runs on each piece `Digits` made (or the text).
                let mut byte_level = |text: &str| {
                    let text = match space {
                        PrefixSpace::Text if !text.starts_with(' ') => {
                            Cow::Owned(format!(" {text}"))
                        }
                        _ => Cow::Borrowed(text),
                    };
                    self.pre.split(&text, |piece| {
                        if *space == PrefixSpace::EachPiece && !piece.starts_with(' ') {
                            let spaced = format!(" {piece}");
                            self.encode_piece(spaced.as_bytes(), out, &mut scratch)
                        } else {
                            self.encode_piece(piece.as_bytes(), out, &mut scratch)
                        }
                    });
                };
                match digits {
                    Some(d) => d.split(&text, byte_level),
                    None => byte_level(&text),
                }
            }
        }
    }

    /// Encodes text; special-token text is plain text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_ordinary_into(text, &mut out);
        out
    }

    /// Encodes text, treating special-token text as `policy` says.
    pub fn encode(&self, text: &str, policy: &SpecialPolicy) -> Result<Vec<u32>, EncodeError> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_into(text, policy, &mut out)?;
        Ok(out)
    }

    /// Like `encode`, appending to `out`.
    pub fn encode_into(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        out: &mut Vec<u32>,
    ) -> Result<(), EncodeError> {
        if self.specials.is_empty() || policy.is_all_text() {
            self.encode_text(text, true, out);
            return Ok(());
        }
        let mut last = 0;
        for m in self.specials.find_iter(text) {
            match policy.mode(m.token) {
                SpecialMode::Text => continue,
                SpecialMode::Error => {
                    return Err(EncodeError::DisallowedSpecial {
                        token: m.token.to_string(),
                        byte_offset: m.start,
                    })
                }
                SpecialMode::Special => {
                    self.encode_text(&text[last..m.start], last == 0, out);
                    out.push(m.id);
                    last = m.end;
                }
            }
        }
        self.encode_text(&text[last..], last == 0, out);
        Ok(())
    }

    /// Encodes one text on the rayon pool with the ids of [`Self::encode`]:
    /// special tokens are found first, then the ordinary text between them
    /// is cut about every `chunk_bytes` where the pre-tokenizer would split
    /// anyway (see `chunks`; a custom regex pattern is cut at special
    /// tokens only), and the pieces are encoded in parallel.
    pub fn encode_parallel(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        chunk_bytes: usize,
    ) -> Result<Vec<u32>, EncodeError> {
        // (start, end) of ordinary text, or a special token's id.
        enum Job {
            Text(usize, usize),
            Special(u32),
        }
        let mut segments = Vec::new();
        let mut last = 0;
        if !self.specials.is_empty() && !policy.is_all_text() {
            for m in self.specials.find_iter(text) {
                match policy.mode(m.token) {
                    SpecialMode::Text => continue,
                    SpecialMode::Error => {
                        return Err(EncodeError::DisallowedSpecial {
                            token: m.token.to_string(),
                            byte_offset: m.start,
                        })
                    }
                    SpecialMode::Special => {
                        segments.push(Job::Text(last, m.start));
                        segments.push(Job::Special(m.id));
                        last = m.end;
                    }
                }
            }
        }
        segments.push(Job::Text(last, text.len()));
        // A pipeline normalizes (or prefixes) whole texts: no cuts.
        let cuttable = matches!(self.pre, PreTokenizer::Lexer(_)) && self.pipeline.is_none();
        let mut jobs = Vec::with_capacity(segments.len());
        for seg in segments {
            match seg {
                Job::Text(a, b) if cuttable => {
                    let mut start = a;
                    for cut in crate::chunks::cut_points(&text[a..b], chunk_bytes) {
                        jobs.push(Job::Text(start, a + cut));
                        start = a + cut;
                    }
                    jobs.push(Job::Text(start, b));
                }
                other => jobs.push(other),
            }
        }
        let parts: Vec<Vec<u32>> = jobs
            .par_iter()
            .map(|job| match *job {
                Job::Text(a, b) => {
                    let mut out = Vec::with_capacity((b - a) / 3);
                    self.encode_text(&text[a..b], a == 0, &mut out);
                    out
                }
                Job::Special(id) => vec![id],
            })
            .collect();
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out)
    }

    /// Encodes many texts in parallel (rayon).
    pub fn encode_batch(
        &self,
        texts: &[&str],
        policy: &SpecialPolicy,
    ) -> Result<Vec<Vec<u32>>, EncodeError> {
        texts.par_iter().map(|t| self.encode(t, policy)).collect()
    }

    /// Encodes a single-piece byte string with merges of rank < `limit`
    /// (used to recover merge lists from rank files).
    pub(crate) fn merge_bytes_below(&self, bytes: &[u8], limit: Rank) -> Vec<u32> {
        let mut ids: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        self.merge(bytes, &mut ids, limit);
        ids
    }

    // ---- decode ----

    /// The bytes of a token (a special token's text for special ids).
    #[inline]
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.id_to_bytes.get(id as usize)?.as_deref()
    }

    /// The bytes of `id` as the first token of a text: a Metaspace decoder
    /// drops the first token's `▁` instead of making it a space.
    pub(crate) fn first_token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        let bytes = self.token_bytes(id)?;
        match self.char_model() {
            Some(m) if m.decode.first_drops.is_some() => {
                let piece = m.pieces.get(id as usize)?.as_deref()?;
                Some(Cow::Owned(m.decode.first_bytes(piece)))
            }
            _ => Some(Cow::Borrowed(bytes)),
        }
    }

    /// Leading spaces that decoding strips (SentencePiece's `Strip`).
    pub(crate) fn strip_spaces(&self) -> usize {
        self.char_model().map_or(0, |m| m.decode.strip_spaces)
    }

    fn char_model(&self) -> Option<&crate::sentencepiece::CharBpe> {
        self.pipeline.as_ref()?.chars()
    }

    /// Decoded bytes; for SentencePiece-style tokenizers with the rules of
    /// their decoder (`▁` is a space, `<0xNN>` a byte, leading spaces
    /// stripped). Their invalid UTF-8 differs from HF's in `decode_lossy`
    /// only: HF's ByteFallback makes each byte of a bad run a U+FFFD.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        if self.char_model().is_some() {
            if let Some(&first) = ids.first() {
                let b = self
                    .first_token_bytes(first)
                    .ok_or(DecodeError::UnknownId(first))?;
                out.extend_from_slice(&b);
            }
            for &id in ids.iter().skip(1) {
                out.extend_from_slice(self.token_bytes(id).ok_or(DecodeError::UnknownId(id))?);
            }
            let spaces = out
                .iter()
                .take(self.strip_spaces())
                .take_while(|&&b| b == b' ')
                .count();
            out.drain(..spaces);
            return Ok(out);
        }
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id).ok_or(DecodeError::UnknownId(id))?);
        }
        Ok(out)
    }

    /// Decodes to a string; fails if the bytes are not valid UTF-8.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DecodeError> {
        String::from_utf8(self.decode_bytes(ids)?).map_err(|e| DecodeError::InvalidUtf8 {
            valid_up_to: e.utf8_error().valid_up_to(),
        })
    }

    /// Decodes, replacing invalid UTF-8 with U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> Result<String, DecodeError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// A decoder for token-by-token output that never splits a character.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    // ---- inspection ----

    /// Largest id + 1 (ids may have gaps, as in p50k and cl100k).
    pub fn vocab_size(&self) -> usize {
        self.id_to_bytes.len()
    }

    /// Number of ordinary (non-special) tokens.
    pub fn ordinary_len(&self) -> usize {
        self.bytes_to_id.len()
    }

    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.bytes_to_id.get(bytes)
    }

    pub fn special_id(&self, token: &str) -> Option<u32> {
        self.specials.id(token)
    }

    /// The special tokens with their matcher.
    pub(crate) fn specials(&self) -> &crate::special::Specials {
        &self.specials
    }

    /// Special tokens and their ids, sorted by id.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        self.specials.tokens()
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    pub fn merge_rule(&self) -> &MergeRule {
        &self.rule
    }

    pub fn ignores_merges(&self) -> bool {
        self.whole_piece_first
    }

    /// Ordinary tokens `(id, bytes)` in id order.
    pub fn ordinary_tokens(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.id_to_bytes
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i as u32, b.as_deref()?)))
            .filter(|(i, b)| self.bytes_to_id.get(b) == Some(*i))
    }

    /// The merge list `(left, right, merged)` in priority order. For rank
    /// files it is recovered: each token is BPE-encoded with lower ranks
    /// only; the two parts left are its merge.
    pub fn merges(&self) -> Result<Vec<(u32, u32, u32)>, LoadError> {
        match &self.rule {
            MergeRule::Merges(m) => Ok(m.clone()),
            MergeRule::Ranks => {
                let mut toks: Vec<(u32, &[u8])> = self
                    .ordinary_tokens()
                    .filter(|(_, b)| b.len() > 1)
                    .collect();
                toks.sort_by_key(|(id, _)| *id);
                let mut out = Vec::with_capacity(toks.len());
                for (id, bytes) in toks {
                    let parts = self.merge_bytes_below(bytes, id);
                    match parts[..] {
                        [l, r] => out.push((l, r, id)),
                        _ => {
                            return Err(LoadError::new(
                                "ranks",
                                format!("token {id}"),
                                "no merge list reproduces this rank file (a token is not the merge of two lower-ranked tokens)",
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}
