//! GPT-2 and Llama-family decoders (Llama, Mistral, Qwen2: RMSNorm, RoPE,
//! SwiGLU, grouped-query attention; `GptConfig::llama`) over a kiln
//! [`Backend`](kiln_abi::Backend): config, parameters,
//! one explicit forward and backward per layer (llm.c style, no autograd),
//! KV-cache generation and sampling, and checkpoints in Hugging Face's GPT-2
//! format (safetensors + config.json).
//!
//! Data flow of a training step: [`Gpt::forward`] (encoder -> blocks ->
//! ln_f -> tied lm_head -> fused cross-entropy, activations kept) ->
//! [`Gpt::backward`] (the same ops mirrored, gradients accumulated into
//! [`Param::grad`]) -> an optimizer over [`Gpt::params`].

mod activations;
mod backward;
mod block;
mod checkpoint;
mod checkpoint_llama;
mod config;
mod error;
mod forward;
mod generate;
mod llama_backward;
mod llama_block;
mod llama_params;
mod lora;
mod lora_io;
mod model;
pub mod moe;
pub mod ops;
mod packing;
mod params;
mod precision;
pub mod rng;
mod rope;
pub mod safetensors_stream;
pub mod sample;
mod special_ids;
mod stage;

pub use checkpoint::{
    HfExtras, LoadedDir, SpecialTokenIds, CONFIG_FILE, GENERATION_CONFIG_FILE, SHARD_INDEX_FILE,
    WEIGHTS_FILE,
};
pub use config::{padded_vocab, GptConfig, Llama3RopeScaling, LlamaArch, LlamaFamily, PRESETS};
pub use error::ModelError;
pub use lora::{peft_tensor_name, Lora, LoraConfig, LoraTarget};
pub use lora_io::{read_adapter_config, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use model::Gpt;
pub use packing::Packing;
pub use params::{slot, Param};
pub use precision::{activation_bytes, BytesPerParam, Precision};
pub use rng::Rng;
pub use sample::{sample_token, SampleOptions};
pub use stage::{split_layers, Stage, StageGrad, StageInput, StageOutput};
