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
    /// `ByteLevel(use_regex=true)`: in front of each text between added
    /// tokens that does not start with one, before the regex split.
    Text,
    /// `Sequence[Split, ByteLevel(use_regex=false)]`: ByteLevel runs on
    /// each piece the Split made, so each piece gets its space.
    EachPiece,
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// Byte-level BPE on the normalized text.
    ByteLevel(PrefixSpace),
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
            Stage::ByteLevel(_) => None,
        }
    }
}
