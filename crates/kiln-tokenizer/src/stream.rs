//! Streaming decode: tokens in, text out, never a broken character.
//!
//! A byte-level token can end in the middle of a UTF-8 character. The
//! decoder emits the longest complete prefix and holds back an incomplete
//! tail (at most 3 bytes) until the next token completes it. Bytes that can
//! never form a character become U+FFFD exactly as `String::from_utf8_lossy`
//! would, so the concatenated stream equals `decode_lossy` of all tokens.
//! SentencePiece-style tokenizers decode their first token apart and may
//! strip leading spaces; the stream does the same.

use crate::error::DecodeError;
use crate::tokenizer::Tokenizer;

pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
    /// No token yet: the next one decodes as a first token.
    first: bool,
    /// Leading spaces still to strip.
    strip: usize,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            pending: Vec::new(),
            first: true,
            strip: tokenizer.strip_spaces(),
        }
    }

    /// Adds one token; returns the text that is now complete (maybe empty).
    pub fn step(&mut self, id: u32) -> Result<String, DecodeError> {
        self.push(id)?;
        Ok(self.drain(false))
    }

    fn push(&mut self, id: u32) -> Result<(), DecodeError> {
        let tok = self.tokenizer;
        let bytes = if self.first {
            self.first = false;
            tok.first_token_bytes(id)
        } else {
            tok.token_bytes(id).map(std::borrow::Cow::Borrowed)
        };
        let mut bytes: &[u8] = &bytes.ok_or(DecodeError::UnknownId(id))?;
        while self.strip > 0 {
            match bytes.first() {
                Some(b' ') => {
                    bytes = &bytes[1..];
                    self.strip -= 1;
                }
                Some(_) => self.strip = 0,
                None => break,
            }
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Adds several tokens (e.g. a prompt prefill).
    pub fn step_many(&mut self, ids: &[u32]) -> Result<String, DecodeError> {
        for &id in ids {
            self.push(id)?;
        }
        Ok(self.drain(false))
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: any held-back bytes become U+FFFD.
    pub fn finish(mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, flush: bool) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).expect("validated prefix"));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None if flush => {
                            out.push('\u{FFFD}');
                            rest = &[];
                            break;
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }
}
