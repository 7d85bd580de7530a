//! The steps some tokenizer.json files put around BPE: a normalizer,
//! ByteLevel's `add_prefix_space`, or a SentencePiece-style model over
//! characters. A tokenizer without any of them has no pipeline and encodes
//! on the direct byte-level path, untouched.

use crate::normalizer::{normalize, Normalizer};
use crate::sentencepiece::CharBpe;
use serde_json::{Map, Value};

/// Where ByteLevel's `add_prefix_space` puts its space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrefixSpace {
    None,
    /// `ByteLevel(use_regex=true)`: in front of each text it is handed
    /// (the text between added tokens, or each piece `Digits` made) that
    /// does not start with one, before the regex split.
    Text,
    /// `Sequence[Split, ByteLevel(use_regex=false)]`: ByteLevel runs on
    /// each piece the Split made, so each piece gets its space.
    EachPiece,
}

/// HF's `Digits` pre-tokenizer ahead of ByteLevel (StarCoder, SmolLM):
/// digits (`char::is_numeric`) are split off, each on its own or in runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Digits {
    Individual,
    Runs,
}

impl Digits {
    /// Calls `f` with the digit and non-digit pieces of `text`, in order.
    pub fn split<'a>(self, text: &'a str, mut f: impl FnMut(&'a str)) {
        let mut start = 0;
        let mut prev_digit = false;
        for (i, c) in text.char_indices() {
            let digit = c.is_numeric();
            let cut = i > start && (digit != prev_digit || (digit && self == Digits::Individual));
            if cut {
                f(&text[start..i]);
                start = i;
            }
            prev_digit = digit;
        }
        if start < text.len() {
            f(&text[start..]);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// Byte-level BPE on the normalized text, after `Digits` if set.
    ByteLevel(PrefixSpace, Option<Digits>),
    /// SentencePiece-style BPE.
    Chars(Box<CharBpe>),
}

#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    pub normalizer: Vec<Normalizer>,
    pub stage: Stage,
    /// The file's `normalizer`, `pre_tokenizer`, `decoder` and model
    /// settings, written back as they were read.
    pub hf: Map<String, Value>,
}

impl Pipeline {
    /// The text between added tokens, normalized.
    pub fn normalized<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.normalizer.is_empty() {
            text.into()
        } else {
            normalize(&self.normalizer, text).into()
        }
    }

    pub fn chars(&self) -> Option<&CharBpe> {
        match &self.stage {
            Stage::Chars(c) => Some(c),
            Stage::ByteLevel(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(d: Digits, text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        d.split(text, |p| v.push(p));
        v
    }

    #[test]
    fn digits_split_as_hf() {
        assert_eq!(
            split(Digits::Individual, "a 123b"),
            ["a ", "1", "2", "3", "b"]
        );
        assert_eq!(split(Digits::Runs, "a 123b4"), ["a ", "123", "b", "4"]);
        assert_eq!(split(Digits::Runs, "٣٤x"), ["٣٤", "x"]);
        assert!(split(Digits::Individual, "").is_empty());
    }
}
