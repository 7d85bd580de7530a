//! Pre-tokenization patterns: the three fixed OpenAI patterns (hand-written
//! lexer fast path, verbatim regex as reference) and custom regexes.

use crate::lexer::Lexer;

/// tiktoken's r50k/p50k/gpt2 pattern, verbatim (tiktoken-rs 0.12).
pub const GPT2_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
/// GPT-2's original spelling, as in HF's ByteLevel pre-tokenizer.
pub const GPT2_PATTERN_HF: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// tiktoken's cl100k pattern, verbatim (possessive spelling).
pub const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
/// cl100k's original (non-possessive) spelling: the one to write into
/// tokenizer.json, because Oniguruma reads `{1,3}+` as a repetition.
pub const CL100K_PATTERN_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// o200k, verbatim (the same in tiktoken and HF files).
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+"
);

/// A pre-tokenization pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// GPT-2 / r50k / p50k.
    Gpt2,
    /// GPT-4 / cl100k (kiln's training default).
    Cl100k,
    /// GPT-4o / o200k.
    O200k,
    /// Any other regex (fancy-regex syntax); unmatched text is kept as its
    /// own piece (HF `Split(Isolated)` behaviour), never dropped.
    Custom(String),
}

impl Pattern {
    /// Parses a CLI/config name (`gpt2`, `r50k`, `cl100k`, `gpt4`, `o200k`)
    /// or a regex. A regex spelled like one of the fixed patterns maps to it.
    pub fn parse(s: &str) -> Pattern {
        match s {
            "gpt2" | "r50k" | "r50k_base" | "p50k" | "p50k_base" => Pattern::Gpt2,
            "cl100k" | "cl100k_base" | "gpt4" => Pattern::Cl100k,
            "o200k" | "o200k_base" => Pattern::O200k,
            _ => Pattern::from_regex(s),
        }
    }

    /// Recognizes the known spellings of the fixed patterns.
    pub fn from_regex(regex: &str) -> Pattern {
        match regex {
            GPT2_PATTERN | GPT2_PATTERN_HF => Pattern::Gpt2,
            CL100K_PATTERN | CL100K_PATTERN_HF => Pattern::Cl100k,
            O200K_PATTERN => Pattern::O200k,
            other => Pattern::Custom(other.to_string()),
        }
    }

    /// The regex (verbatim tiktoken spelling for the fixed patterns).
    pub fn regex(&self) -> &str {
        match self {
            Pattern::Gpt2 => GPT2_PATTERN,
            Pattern::Cl100k => CL100K_PATTERN,
            Pattern::O200k => O200K_PATTERN,
            Pattern::Custom(s) => s,
        }
    }

    /// The spelling to write into a HF tokenizer.json `Split` (Oniguruma).
    pub fn hf_regex(&self) -> &str {
        match self {
            Pattern::Gpt2 => GPT2_PATTERN_HF,
            Pattern::Cl100k => CL100K_PATTERN_HF,
            Pattern::O200k => O200K_PATTERN,
            Pattern::Custom(s) => s,
        }
    }

    /// Short name for messages and `info`.
    pub fn name(&self) -> &str {
        match self {
            Pattern::Gpt2 => "gpt2",
            Pattern::Cl100k => "cl100k",
            Pattern::O200k => "o200k",
            Pattern::Custom(_) => "custom",
        }
    }

    pub(crate) fn lexer(&self) -> Option<Lexer> {
        match self {
            Pattern::Gpt2 => Some(Lexer::Gpt2),
            Pattern::Cl100k => Some(Lexer::Cl100k),
            Pattern::O200k => Some(Lexer::O200k),
            Pattern::Custom(_) => None,
        }
    }
}

/// Splits text into pre-tokens: the lexer for fixed patterns, fancy-regex
/// otherwise (or on request, as the reference the lexer is tested against).
#[derive(Debug, Clone)]
pub enum PreTokenizer {
    Lexer(Lexer),
    Regex(Box<fancy_regex::Regex>),
}

impl PreTokenizer {
    /// The fast pre-tokenizer for `pattern`.
    pub fn new(pattern: &Pattern) -> Result<Self, fancy_regex::Error> {
        match pattern.lexer() {
            Some(l) => Ok(PreTokenizer::Lexer(l)),
            None => Self::regex(pattern),
        }
    }

    /// The regex engine on the pattern's verbatim regex.
    pub fn regex(pattern: &Pattern) -> Result<Self, fancy_regex::Error> {
        // Deep recursion in pathological inputs is bounded by fancy-regex's
        // backtrack limit; the default is fine for the stock patterns.
        Ok(PreTokenizer::Regex(Box::new(fancy_regex::Regex::new(
            pattern.regex(),
        )?)))
    }

    /// Calls `f` with each pre-token; the pieces concatenate to `text`.
    #[inline]
    pub fn split<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        match self {
            PreTokenizer::Lexer(l) => l.split(text, f),
            PreTokenizer::Regex(re) => {
                let mut last = 0;
                for m in re.find_iter(text) {
                    let m = match m {
                        Ok(m) => m,
                        // Backtrack limit hit: keep the rest as one piece
                        // rather than losing text.
                        Err(_) => break,
                    };
                    if m.start() > last {
                        f(&text[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        f(m.as_str());
                    }
                    last = m.end();
                }
                if last < text.len() {
                    f(&text[last..]);
                }
            }
        }
    }

    pub fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut v = Vec::new();
        self.split(text, |p| v.push(p));
        v
    }
}
