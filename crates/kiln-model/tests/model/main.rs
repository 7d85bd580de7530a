//! kiln-model behaviour on the CPU backend: finite-difference gradients,
//! gradient accumulation, buffer reuse, generation and checkpoints.
//! (PyTorch reference fixtures live in the workspace tests: tests/it/gpt2_reference.rs.)

mod align;
mod checkpoint;
mod generate;
mod gradcheck;
mod llama_checkpoint;
mod llama_reference;
mod lora_reference;
mod packing;
mod training;

use kiln_abi::BackendBox;
use kiln_model::{Gpt, GptConfig, LlamaFamily, Rng};

pub fn backend() -> BackendBox {
    kiln_tensor::cpu_backend(Some(1))
}

/// A small model with weights large enough that logits are far from ties
/// and every parameter (LayerNorm and biases included) carries gradient.
pub fn perturbed_model(be: &mut BackendBox, cfg: GptConfig, seed: u64) -> Gpt {
    let mut gpt = Gpt::new(be, cfg.clone(), seed).unwrap();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut values = gpt.read_params(be).unwrap();
    for (p, v) in gpt.params().iter().zip(values.iter_mut()) {
        let is_ln_weight =
            (p.name.contains("ln_") || p.name.contains("norm")) && p.name.ends_with(".weight");
        let used = if is_vocab_table(&p.name) {
            cfg.vocab_size * cfg.n_embd
        } else {
            v.len()
        };
        for x in &mut v[..used] {
            *x = if is_ln_weight {
                1.0 + 0.2 * rng.normal()
            } else if p.shape.len() == 1 {
                0.1 * rng.normal()
            } else {
                0.3 * rng.normal()
            };
        }
    }
    gpt.write_params(be, &values).unwrap();
    gpt
}

/// A `[Vp, C]` parameter whose rows past the real vocabulary are padding.
pub fn is_vocab_table(name: &str) -> bool {
    [
        "transformer.wte.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
    ]
    .contains(&name)
}

/// Deterministic token ids below `vocab`.
pub fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

pub fn tiny_config() -> GptConfig {
    GptConfig::new(29, 8, 2, 2, 16)
}

/// A tiny Qwen2-style config (q/k/v biases, grouped-query attention, an
/// untied lm_head: every Llama-family parameter kind) with a sliding window
/// shorter than the context.
pub fn tiny_llama_config() -> GptConfig {
    let mut cfg = GptConfig::new_llama(LlamaFamily::Qwen2, 29, 8, 2, 4, 2, 16, 24, false);
    cfg.llama.as_mut().unwrap().sliding_window = Some(5);
    cfg
}
