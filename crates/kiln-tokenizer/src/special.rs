//! Special tokens: matched in the raw text before pre-tokenization, each
//! call choosing per token whether it is the special id, plain text, or an
//! error (tiktoken's `allowed_special` / `disallowed_special`).

use aho_corasick::{AhoCorasick, MatchKind};
use std::sync::OnceLock;

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

/// tokenizer.json's matching options of an added token (HF's
/// `AddedToken`): `lstrip`/`rstrip` take the whitespace before/after an
/// occurrence into the token, `single_word` matches only between non-word
/// characters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddedFlags {
    pub lstrip: bool,
    pub rstrip: bool,
    pub single_word: bool,
}

/// The special tokens of a tokenizer and their matcher.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    tokens: Vec<(String, u32)>,
    matcher: Option<AhoCorasick>,
    /// Per token (as `tokens`), or empty when no token sets any flag.
    flags: Vec<AddedFlags>,
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
        Specials {
            tokens,
            matcher,
            flags: Vec::new(),
        }
    }

    /// Sets the matching options of the tokens named (by content).
    pub fn set_flags(&mut self, flags: &[(String, AddedFlags)]) {
        if flags.iter().all(|(_, f)| *f == AddedFlags::default()) {
            return;
        }
        self.flags = self
            .tokens
            .iter()
            .map(|(t, _)| {
                flags
                    .iter()
                    .find(|(c, _)| c == t)
                    .map(|(_, f)| *f)
                    .unwrap_or_default()
            })
            .collect();
    }

    /// The matching options of a token.
    pub fn flags(&self, token: &str) -> AddedFlags {
        self.tokens
            .iter()
            .position(|(t, _)| t == token)
            .and_then(|i| self.flags.get(i).copied())
            .unwrap_or_default()
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

    /// Occurrences of special tokens in `text`, leftmost-longest, with
    /// their `lstrip`/`rstrip`/`single_word` options applied as HF's
    /// `AddedVocabulary::find_matches` does.
    pub fn find_iter<'a>(&'a self, text: &'a str) -> Matches<'a> {
        Matches {
            specials: self,
            text,
            hits: self.matcher.as_ref().map(|m| m.find_iter(text)),
            last: 0,
        }
    }
}

/// The iterator of [`Specials::find_iter`].
pub struct Matches<'a> {
    specials: &'a Specials,
    text: &'a str,
    hits: Option<aho_corasick::FindIter<'a, 'a>>,
    /// End of the previous match.
    last: usize,
}

impl<'a> Iterator for Matches<'a> {
    type Item = SpecialMatch<'a>;

    fn next(&mut self) -> Option<SpecialMatch<'a>> {
        loop {
            let hit = self.hits.as_mut()?.next()?;
            let k = hit.pattern().as_usize();
            let (token, id) = &self.specials.tokens[k];
            let (mut start, mut end) = (hit.start(), hit.end());
            if let Some(f) = self.specials.flags.get(k) {
                let text = self.text;
                if f.single_word
                    && (text[..start].chars().next_back().is_some_and(is_word_char)
                        || text[end..].chars().next().is_some_and(is_word_char))
                {
                    continue;
                }
                if start < self.last {
                    // inside whitespace a previous token's rstrip took
                    continue;
                }
                if f.lstrip {
                    let trimmed = text[..start].trim_end_matches(char::is_whitespace).len();
                    start = trimmed.max(self.last);
                }
                if f.rstrip {
                    end = text.len() - text[end..].trim_start_matches(char::is_whitespace).len();
                }
            }
            self.last = end;
            return Some(SpecialMatch {
                start,
                end,
                token,
                id: *id,
            });
        }
    }
}

/// The regex crate's `\w` (HF tests word characters with it).
fn is_word_char(c: char) -> bool {
    static WORD: OnceLock<fancy_regex::Regex> = OnceLock::new();
    let re = WORD.get_or_init(|| fancy_regex::Regex::new(r"^\w$").expect("valid regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf)).unwrap_or(false)
}
