//! A bounded memo of chunk tokenizations, as spaCy's tokenizer keeps one
//! (`Tokenizer._cache`): a chunk's tokens depend on its text alone and
//! words repeat, so each distinct chunk runs the affix rules once.

use super::spacy::Token;
use crate::fxhash::FxHashMap;
use std::cell::RefCell;

/// Longer chunks (base64, long paths) seldom repeat: tokenized every time.
const MAX_CHUNK: usize = 256;
/// Bytes one thread's cache may hold before it starts over.
const BUDGET: usize = 8 << 20;
/// Rough heap cost of an entry besides its key and spans (map slot, box).
const ENTRY_OVERHEAD: usize = 48;

pub(crate) struct ChunkCache {
    /// Chunk -> its range of `spans`.
    map: FxHashMap<Box<str>, (u32, u32)>,
    /// Token byte ranges, relative to the chunk's start.
    spans: Vec<(u32, u32)>,
    bytes: usize,
    budget: usize,
}

impl ChunkCache {
    pub(crate) fn new(budget: usize) -> Self {
        ChunkCache {
            map: FxHashMap::default(),
            spans: Vec::new(),
            bytes: 0,
            budget,
        }
    }

    /// Appends the tokens of the chunk `text[a..b]` to `out`: remembered
    /// ones, or those `compute` appends (then remembered).
    pub(crate) fn tokens(
        &mut self,
        text: &str,
        (a, b): (usize, usize),
        space: bool,
        out: &mut Vec<Token>,
        compute: impl FnOnce(&mut Vec<Token>),
    ) {
        let chunk = &text[a..b];
        if chunk.len() > MAX_CHUNK {
            return compute(out);
        }
        if let Some(&(s, e)) = self.map.get(chunk) {
            out.extend(
                self.spans[s as usize..e as usize]
                    .iter()
                    .map(|&(ts, te)| Token {
                        start: a + ts as usize,
                        end: a + te as usize,
                        space,
                    }),
            );
            return;
        }
        let first = out.len();
        compute(out);
        let new = &out[first..];
        let cost = ENTRY_OVERHEAD + chunk.len() + new.len() * size_of::<(u32, u32)>();
        if self.bytes + cost > self.budget {
            // Starting over keeps memory bounded; frequent words return fast.
            self.map.clear();
            self.spans.clear();
            self.bytes = 0;
        }
        let s = self.spans.len() as u32;
        self.spans.extend(
            new.iter()
                .map(|t| ((t.start - a) as u32, (t.end - a) as u32)),
        );
        self.map.insert(chunk.into(), (s, self.spans.len() as u32));
        self.bytes += cost;
    }
}

thread_local! {
    static CACHE: RefCell<ChunkCache> = RefCell::new(ChunkCache::new(BUDGET));
}

/// Runs `f` with this thread's cache (one per thread: no locking).
pub(crate) fn with_thread_cache<R>(f: impl FnOnce(&mut ChunkCache) -> R) -> R {
    CACHE.with_borrow_mut(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words::spacy::tables;
    use proptest::prelude::*;

    /// Pieces that exercise every rule: special cases, prefixes, suffixes,
    /// infixes, URLs, emoticons, contractions, non-ASCII text and spaces.
    const PIECES: &[&str] = &[
        "don't",
        "Don't",
        "can't",
        "cannot",
        "gonna",
        "dont",
        "Im",
        "it's",
        "’S",
        "'s",
        "Mr.",
        "e.g.",
        "i.e.",
        "U.S.",
        "vs.",
        "etc.",
        "a.m.",
        "10a.m.",
        "10km",
        "5kg.",
        "3.5%",
        "$5",
        "US$10",
        "€3",
        "1,000",
        "(1",
        ")",
        "[a]",
        "{x}",
        "...",
        "…",
        "--",
        "stop-believing",
        "a-b-c",
        "1-2",
        "x/y",
        "a=b",
        "C++",
        "#1!",
        "&",
        "*",
        "_x_",
        "https://example.com/a?b=c",
        "www.kiln.dev/x.html",
        "me@x.org",
        "127.0.0.1:80",
        ":)",
        ":-)",
        ";)",
        "<3",
        ":(",
        "=)",
        "xD",
        "^_^",
        "(:",
        "'quoted'",
        "\"",
        "“hi”",
        "‘a’",
        "«b»",
        "rock’n’roll",
        "café",
        "naïve",
        "Ünïcode",
        "日本語。",
        "😀",
        "°C",
        "a.",
        "A.",
        "end.",
        "?!",
        "¿qué?",
        "-",
        "—",
        "'",
        "''",
        "\\",
        "\u{301}",
        " ",
        "\t",
        "\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
    ];

    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            3 => proptest::sample::select(PIECES).prop_map(String::from),
            1 => "\\PC{0,6}",
            1 => "[a-zA-Z0-9.,:;'\"()\\-/@$%]{1,8}",
        ];
        let sep = proptest::sample::select(&["", " ", "  ", "\n", "\t", " \u{a0}"][..]);
        proptest::collection::vec((piece, sep), 0..24).prop_map(|v| {
            v.into_iter()
                .flat_map(|(p, s)| [p, s.to_string()])
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The cached tokenization is the uncached one, cold or warm, with
        /// this thread's cache and with one so small that it keeps starting over.
        #[test]
        fn cached_tokens_equal_uncached(t in text()) {
            let tab = tables();
            let want = tab.tokenize_with(&t, None);
            let mut small = ChunkCache::new(256);
            for _ in 0..2 {
                prop_assert_eq!(&tab.tokenize(&t), &want);
                prop_assert_eq!(&tab.tokenize_with(&t, Some(&mut small)), &want);
            }
        }
    }
}
