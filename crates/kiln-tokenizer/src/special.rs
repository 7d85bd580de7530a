//! Special tokens: matched in the raw text before pre-tokenization, each
//! call choosing per token whether it is the special id, plain text, or an
//! error (tiktoken's `allowed_special` / `disallowed_special`).

use aho_corasick::{AhoCorasick, MatchKind};

/// What to do when a special token's text appears in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialMode {
    /// Emit the special token's id.
    Special,
    /// Encode the text like any other text.
    Text,
    /// Refuse the input (`EncodeError::DisallowedSpecial`).
    Error,
}

/// Per-call special-token policy: a default plus per-token overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialPolicy {
    default: SpecialMode,
    overrides: Vec<(String, SpecialMode)>,
}

impl SpecialPolicy {
    /// Every special token in the text becomes its id (HF's behaviour).
    pub fn allow_all() -> Self {
        Self::uniform(SpecialMode::Special)
    }
    /// Special-token text is ordinary text (tiktoken's `encode_ordinary`).
    pub fn all_text() -> Self {
        Self::uniform(SpecialMode::Text)
    }
    /// Any special-token text is an error (tiktoken's `encode` default).
    pub fn deny_all() -> Self {
        Self::uniform(SpecialMode::Error)
    }
    pub fn uniform(mode: SpecialMode) -> Self {
        SpecialPolicy {
            default: mode,
            overrides: Vec::new(),
        }
    }
    /// Overrides the mode of one token.
    pub fn with(mut self, token: impl Into<String>, mode: SpecialMode) -> Self {
        self.overrides.push((token.into(), mode));
        self
    }
    pub fn mode(&self, token: &str) -> SpecialMode {
        self.overrides
            .iter()
            .rev()
            .find(|(t, _)| t == token)
            .map(|(_, m)| *m)
            .unwrap_or(self.default)
    }
    pub(crate) fn is_all_text(&self) -> bool {
        self.default == SpecialMode::Text
            && self.overrides.iter().all(|(_, m)| *m == SpecialMode::Text)
    }
}

/// The special tokens of a tokenizer and their matcher.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    tokens: Vec<(String, u32)>,
    matcher: Option<AhoCorasick>,
}

/// One special-token occurrence in a text.
pub struct SpecialMatch<'t> {
    pub start: usize,
    pub end: usize,
    pub token: &'t str,
    pub id: u32,
}

impl Specials {
    pub fn new(mut tokens: Vec<(String, u32)>) -> Self {
        tokens.sort_by_key(|(_, id)| *id);
        tokens.dedup();
        let matcher = if tokens.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(tokens.iter().map(|(t, _)| t.as_str()))
                    .expect("special token automaton builds"),
            )
        };
        Specials { tokens, matcher }
    }

    pub fn tokens(&self) -> &[(String, u32)] {
        &self.tokens
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, i)| *i)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Occurrences of special tokens in `text`, leftmost-longest.
    pub fn find_iter<'a>(&'a self, text: &'a str) -> impl Iterator<Item = SpecialMatch<'a>> + 'a {
        self.matcher.iter().flat_map(move |m| {
            m.find_iter(text).map(move |hit| {
                let (token, id) = &self.tokens[hit.pattern().as_usize()];
                SpecialMatch {
                    start: hit.start(),
                    end: hit.end(),
                    token,
                    id: *id,
                }
            })
        })
    }
}
