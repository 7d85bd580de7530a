//! Shared test fixtures: a chat tokenizer trained on the task text and tiny
//! random models on the CPU backend.

use kiln_abi::BackendBox;
use kiln_model::{Gpt, GptConfig};
use kiln_tokenizer::chat::default_special_tokens;
use kiln_tokenizer::{ChatTemplate, Pattern, Tokenizer};

use crate::tasks::{all_tasks, reference_answer, TaskKind};

pub fn chat_tokenizer() -> (Tokenizer, ChatTemplate) {
    let mut rng = kiln_model::Rng::new(0);
    let corpus: Vec<String> = TaskKind::ALL
        .iter()
        .flat_map(|&k| all_tasks(k))
        .map(|t| format!("{} {}", t.prompt, reference_answer(&t, &mut rng)))
        .collect();
    let specials = default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let tok = kiln_tokenizer::train(&corpus, 400, Pattern::Gpt2, &refs, 0).unwrap();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap();
    (tok, template)
}

pub fn backend() -> BackendBox {
    kiln_tensor::cpu_backend(Some(1))
}

/// A 1-layer, d=16 model over the tokenizer's vocabulary, context 48.
pub fn tiny_model(be: &mut BackendBox, tok: &Tokenizer, seed: u64) -> Gpt {
    let config = GptConfig::new(tok.vocab_size(), 48, 1, 2, 16);
    Gpt::new(be, config, seed).unwrap()
}
