//! Small fixtures for the unit tests: a chat tokenizer and tiny models.

use kiln_abi::BackendBox;
use kiln_model::{Gpt, GptConfig};
use kiln_tokenizer::{chat, Pattern, Tokenizer};

use crate::policy::Policy;

const CORPUS: &[&str] = &[
    "What is the capital of France? Paris is the capital of France.",
    "Name a red fruit. An apple is a red fruit. Say hello. Hello there, friend!",
    "How many legs does a cat have? A cat has four legs. Count to three: one, two, three.",
    "The sun is bright and warm and good. The rain is cold and bad.",
];

/// A byte-level BPE with the chat special tokens (about 300 tokens).
pub fn chat_tokenizer() -> Tokenizer {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    kiln_tokenizer::train(CORPUS, 300, Pattern::Gpt2, &refs, 0).unwrap()
}

/// A 2-layer, 64-wide GPT with `max_seq_len` positions over `tok`.
pub fn tiny_policy(be: &mut BackendBox, seed: u64, max_seq_len: usize) -> Policy {
    let tok = chat_tokenizer();
    let cfg = GptConfig::new(tok.vocab_size(), max_seq_len, 2, 4, 64);
    let model = Gpt::new(be, cfg, seed).unwrap();
    Policy::new(model, tok).unwrap()
}

/// Relative closeness for gradients computed two ways.
pub fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("lengths {} vs {}", a.len(), b.len()));
    }
    let scale = a
        .iter()
        .chain(b)
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-12);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if (x - y).abs() > tol * scale {
            return Err(format!("element {i}: {x} vs {y} (scale {scale})"));
        }
    }
    Ok(())
}
