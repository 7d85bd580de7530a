//! Byte-level BPE tokenizer: train, encode, decode; tokenizer.json, tiktoken
//! and GPT-2 formats. tokenizer.json files of SentencePiece-style BPE
//! (Llama 2, Mistral: Metaspace, byte fallback) and with normalizers load
//! too ([`normalizer`], [`sentencepiece`]).
//!
//! - [`Tokenizer`]: encode (special tokens per call via [`SpecialPolicy`]),
//!   decode, streaming decode ([`StreamDecoder`]).
//! - [`Pattern`]: GPT-2/r50k, cl100k, o200k pre-tokenization through a
//!   hand-written lexer (regex-identical), or any regex via fancy-regex.
//! - [`formats`]: tiktoken rank files, GPT-2 vocab.json + merges.txt, HF
//!   tokenizer.json (read and write).
//! - [`train`]: BPE training with a deterministic tie-break.

pub mod bpe;
pub mod byte_unicode;
pub mod char_class;
pub mod chat;
mod chunks;
pub mod error;
pub mod formats;
pub mod hf_template;
pub mod lexer;
pub mod normalizer;
pub mod pattern;
mod pipeline;
mod rules;
pub mod sentencepiece;
pub mod special;
pub mod stream;
mod token_map;
pub mod tokenizer;
pub mod train;

pub use chat::{ChatError, ChatTemplate, EncodedChat, Message, Role};
pub use error::{DecodeError, EncodeError, Error, LoadError};
pub use hf_template::{HfChatTemplate, TemplateError, TemplateTokens};
pub use lexer::Lexer;
pub use pattern::{Pattern, PreTokenizer};
pub use special::{SpecialMode, SpecialPolicy};
pub use stream::StreamDecoder;
pub use tokenizer::{MergeRule, Tokenizer};
pub use train::{train, TrainConfig, Trainer};

/// The end-of-text token used between documents.
pub const ENDOFTEXT: &str = "<|endoftext|>";
