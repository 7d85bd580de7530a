//! Byte-level BPE tokenizer: train, encode, decode; tokenizer.json, tiktoken and GPT-2 formats.
