//! spaCy's English tokenizer (`spacy.blank("en")`, spaCy 3.8), the segmenter
//! under datatrove's `split_into_words` and `split_into_sentences`, ported
//! step for step from its `Tokenizer` (tokenizer.pyx): split on whitespace
//! runs, peel prefixes and suffixes off each chunk (stopping at a special
//! case), keep URLs whole, split the rest at infixes, then merge token runs
//! that spell a special case containing punctuation (`_special_matcher`).
//! The rules themselves are data from spaCy (`spacy_en.json`).

use super::cache::{with_thread_cache, ChunkCache};
use super::pattern::{CharSet, Regex};
use crate::fxhash::FxHashMap;
use serde_json::Value;
use std::sync::OnceLock;

const DATA: &str = include_str!("spacy_en.json");

/// A token: a byte range of the text; `space` marks whitespace tokens
/// (datatrove drops those from its word list, the sentencizer sees them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Token {
    pub start: usize,
    pub end: usize,
    pub space: bool,
}

pub(crate) struct Tables {
    sets: Vec<CharSet>,
    prefix: Regex,
    suffix: Regex,
    infix: Regex,
    url: Regex,
    pub(crate) citation: Regex,
    /// Special case -> byte lengths of its pieces.
    specials: FxHashMap<String, Vec<usize>>,
    /// First piece of an affix-split special case -> (its pieces without
    /// special cases, the special case).
    matcher: FxHashMap<String, Vec<(Vec<String>, String)>>,
    /// The matcher's keys by first byte, as a bit per length (63: longer):
    /// rules out most tokens without hashing them.
    matcher_lens: [u64; 256],
    pub(crate) py_space: CharSet,
    pub(crate) py_alpha: CharSet,
    pub(crate) category_p: CharSet,
    pub(crate) punctuation: CharSet,
    pub(crate) terminal: CharSet,
    pub(crate) sentence_end: CharSet,
}

pub(crate) fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(Tables::load)
}

impl Tables {
    fn load() -> Tables {
        let v: Value = serde_json::from_str(DATA).expect("spacy_en.json is valid JSON");
        let sets: Vec<CharSet> = v["sets"]
            .as_array()
            .unwrap()
            .iter()
            .map(CharSet::from_json)
            .collect();
        let re = |k: &str| Regex::from_json(&v[k], &sets);
        let specials = v["exceptions"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, pieces)| {
                let lens = pieces
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().len())
                    .collect();
                (k.clone(), lens)
            })
            .collect();
        let mut t = Tables {
            prefix: re("prefix"),
            suffix: re("suffix"),
            infix: re("infix"),
            url: re("url"),
            citation: re("citation"),
            specials,
            matcher: FxHashMap::default(),
            matcher_lens: [0; 256],
            py_space: CharSet::from_json(&v["py_space"]),
            py_alpha: CharSet::from_json(&v["py_alpha"]),
            category_p: CharSet::from_json(&v["category_p"]),
            punctuation: CharSet::from_points(&v["punctuation_set"]),
            terminal: CharSet::from_points(&v["terminal_punctuation"]),
            sentence_end: CharSet::from_points(&v["sentencizer_punct"]),
            sets,
        };
        // add_special_case: with faster_heuristics, only the special cases
        // that contain a prefix, infix, suffix or space go to the matcher,
        // as their tokenization without special cases.
        let mut matcher: FxHashMap<String, Vec<(Vec<String>, String)>> = FxHashMap::default();
        let mut keys: Vec<&String> = t.specials.keys().collect();
        keys.sort();
        for key in keys {
            let chars: Vec<char> = key.chars().collect();
            let affixed = t.find_prefix(&chars) > 0
                || !t.infix.find_iter(&t.sets, &chars).is_empty()
                || t.find_suffix(&chars) > 0
                || key.contains(' ');
            if !affixed {
                continue;
            }
            let mut toks = Vec::new();
            t.tokenize_affixes(key, false, None, &mut toks);
            let pieces: Vec<String> = toks
                .iter()
                .map(|x| key[x.start..x.end].to_string())
                .collect();
            matcher
                .entry(pieces[0].clone())
                .or_default()
                .push((pieces, key.clone()));
        }
        for k in matcher.keys() {
            t.matcher_lens[k.as_bytes()[0] as usize] |= 1 << k.len().min(63);
        }
        t.matcher = matcher;
        t
    }

    #[inline]
    pub(crate) fn is_py_space(&self, c: char) -> bool {
        if c.is_ascii() {
            matches!(
                c,
                ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f'
            )
        } else {
            self.py_space.contains(c)
        }
    }

    fn find_prefix(&self, s: &[char]) -> usize {
        self.prefix.search(&self.sets, s).map_or(0, |(a, b)| b - a)
    }

    fn find_suffix(&self, s: &[char]) -> usize {
        self.suffix.search(&self.sets, s).map_or(0, |(a, b)| b - a)
    }

    pub(crate) fn url_match(&self, s: &[char]) -> bool {
        // Every URL the pattern accepts has a dot (host or IP address).
        s.contains(&'.') && self.url.match_at(&self.sets, s, 0).is_some()
    }

    pub(crate) fn sets(&self) -> &[CharSet] {
        &self.sets
    }

    /// `Tokenizer.__call__`: the tokens of `text`, whitespace tokens
    /// included, with this thread's chunk cache.
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        with_thread_cache(|cache| self.tokenize_with(text, Some(cache)))
    }

    /// [`Tables::tokenize`] with the given cache, or none (the reference
    /// the cache is tested against).
    pub(crate) fn tokenize_with(&self, text: &str, cache: Option<&mut ChunkCache>) -> Vec<Token> {
        let mut toks = Vec::with_capacity(text.len() / 4 + 1);
        self.tokenize_affixes(text, true, cache, &mut toks);
        self.apply_special_cases(text, &mut toks);
        toks
    }

    /// `_tokenize_affixes`: chunks between whitespace changes; a chunk of
    /// whitespace loses one leading ' ' (spaCy's `spacy` flag) and becomes
    /// a token if anything is left.
    fn tokenize_affixes(
        &self,
        text: &str,
        specials: bool,
        mut cache: Option<&mut ChunkCache>,
        out: &mut Vec<Token>,
    ) {
        let mut chunk = |a: usize, b: usize, space: bool, out: &mut Vec<Token>| {
            let compute =
                |out: &mut Vec<Token>| self.tokenize_chunk(text, a, b, space, specials, out);
            match cache.as_deref_mut() {
                Some(c) => c.tokens(text, (a, b), space, out, compute),
                None => compute(out),
            }
        };
        let mut it = text.char_indices();
        let Some((_, c0)) = it.next() else { return };
        let mut in_ws = self.is_py_space(c0);
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if self.is_py_space(c) != in_ws {
                if start < i {
                    chunk(start, i, in_ws, out);
                }
                start = if c == ' ' { i + 1 } else { i };
                in_ws = !in_ws;
            }
        }
        if start < text.len() {
            chunk(start, text.len(), in_ws, out);
        }
    }

    /// `_try_specials_and_cache` + `_tokenize` on `text[a..b]`.
    fn tokenize_chunk(
        &self,
        text: &str,
        a: usize,
        b: usize,
        space: bool,
        specials: bool,
        out: &mut Vec<Token>,
    ) {
        if specials && self.push_special(text, a, b, space, out) {
            return;
        }
        let chunk = &text[a..b];
        let chars: Vec<char> = chunk.chars().collect();
        // Byte offset (in `text`) of every char position of the chunk.
        let mut at: Vec<usize> = chunk.char_indices().map(|(i, _)| a + i).collect();
        at.push(b);
        let special =
            |i: usize, j: usize| specials && self.specials.contains_key(&text[at[i]..at[j]]);
        let tok = |i: usize, j: usize| Token {
            start: at[i],
            end: at[j],
            space,
        };
        // _split_affixes
        let (mut lo, mut hi) = (0usize, chars.len());
        let mut prefixes: Vec<Token> = Vec::new();
        let mut suffixes: Vec<Token> = Vec::new();
        let mut last = usize::MAX;
        while lo < hi && hi - lo != last {
            if special(lo, hi) {
                break;
            }
            last = hi - lo;
            let pre = self.find_prefix(&chars[lo..hi]);
            if pre != 0 && lo + pre < hi && special(lo + pre, hi) {
                prefixes.push(tok(lo, lo + pre));
                lo += pre;
                break;
            }
            let suf = self.find_suffix(&chars[lo + pre..hi]);
            if suf != 0 && lo < hi - suf && special(lo, hi - suf) {
                suffixes.push(tok(hi - suf, hi));
                hi -= suf;
                break;
            }
            if pre != 0 && suf != 0 && pre + suf <= hi - lo {
                prefixes.push(tok(lo, lo + pre));
                suffixes.push(tok(hi - suf, hi));
                lo += pre;
                hi -= suf;
            } else if pre != 0 {
                prefixes.push(tok(lo, lo + pre));
                lo += pre;
            } else if suf != 0 {
                suffixes.push(tok(hi - suf, hi));
                hi -= suf;
            }
        }
        // _attach_tokens
        out.extend_from_slice(&prefixes);
        if lo < hi {
            if specials && self.push_special(text, at[lo], at[hi], space, out) {
            } else if self.url_match(&chars[lo..hi]) {
                out.push(tok(lo, hi));
            } else {
                let mut start = lo;
                for (ms, me) in self.infix.find_iter(&self.sets, &chars[lo..hi]) {
                    let (ms, me) = (lo + ms, lo + me);
                    if ms == lo {
                        continue; // an infix at the start is not a split
                    }
                    if ms != start {
                        out.push(tok(start, ms));
                    }
                    if ms != me {
                        out.push(tok(ms, me));
                    }
                    start = me;
                }
                if start < hi {
                    out.push(tok(start, hi));
                }
            }
        }
        out.extend(suffixes.iter().rev());
    }

    fn push_special(
        &self,
        text: &str,
        a: usize,
        b: usize,
        space: bool,
        out: &mut Vec<Token>,
    ) -> bool {
        let Some(lens) = self.specials.get(&text[a..b]) else {
            return false;
        };
        let mut s = a;
        for &l in lens {
            out.push(Token {
                start: s,
                end: s + l,
                space,
            });
            s += l;
        }
        true
    }

    /// `_apply_special_cases`: token runs spelling an affix-split special
    /// case are re-tokenized as that special case (longest runs first, then
    /// earliest; a run overlapping a taken one is skipped).
    fn apply_special_cases(&self, text: &str, toks: &mut Vec<Token>) {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for i in 0..toks.len() {
            let tok = &text[toks[i].start..toks[i].end];
            let Some(&b0) = tok.as_bytes().first() else {
                continue;
            };
            if self.matcher_lens[b0 as usize] >> tok.len().min(63) & 1 == 0 {
                continue;
            }
            let Some(pats) = self.matcher.get(tok) else {
                continue;
            };
            for (pieces, _) in pats {
                let n = pieces.len();
                if i + n <= toks.len()
                    && pieces
                        .iter()
                        .zip(&toks[i..i + n])
                        .all(|(p, t)| *p == text[t.start..t.end])
                {
                    spans.push((i, i + n));
                }
            }
        }
        if spans.is_empty() {
            return;
        }
        spans.sort_by(|a, b| (b.1 - b.0).cmp(&(a.1 - a.0)).then(a.0.cmp(&b.0)));
        spans.dedup();
        let mut seen = vec![false; toks.len()];
        let mut kept = Vec::new();
        for &(s, e) in &spans {
            if !seen[s] && !seen[e - 1] {
                kept.push((s, e));
            }
            seen[s..e].iter_mut().for_each(|x| *x = true);
        }
        kept.sort_unstable();
        let mut out = Vec::with_capacity(toks.len());
        let mut i = 0;
        for (s, e) in kept {
            out.extend_from_slice(&toks[i..s]);
            let (a, b) = (toks[s].start, toks[e - 1].end);
            if !self.push_special(text, a, b, toks[s].space, &mut out) {
                out.extend_from_slice(&toks[s..e]);
            }
            i = e;
        }
        out.extend_from_slice(&toks[i..]);
        *toks = out;
    }
}
