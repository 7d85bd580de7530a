//! The parameter list of a Llama-family decoder (HF `LlamaForCausalLM`
//! names and `named_parameters` order, `nn.Linear` `[out, in]` layout) and
//! where each block's tensors sit in it.

use crate::params::{Init, ParamSpec};
use crate::GptConfig;

/// Offsets of one block's parameters inside its group (HF order:
/// self_attn q, k, v (each with a bias under Qwen2), o; mlp gate, up,
/// down; input_layernorm; post_attention_layernorm).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots {
    pub q_w: usize,
    pub q_b: Option<usize>,
    pub k_w: usize,
    pub k_b: Option<usize>,
    pub v_w: usize,
    pub v_b: Option<usize>,
    pub o_w: usize,
    pub gate_w: usize,
    pub up_w: usize,
    pub down_w: usize,
    pub ln1_w: usize,
    pub ln2_w: usize,
    pub per_layer: usize,
}

pub(crate) fn slots(cfg: &GptConfig) -> Slots {
    let bias = cfg.llama.as_ref().is_some_and(|l| l.qkv_bias);
    let b = usize::from(bias);
    let q_w = 0;
    let k_w = q_w + 1 + b;
    let v_w = k_w + 1 + b;
    let o_w = v_w + 1 + b;
    let opt = |i: usize| bias.then_some(i + 1);
    Slots {
        q_w,
        q_b: opt(q_w),
        k_w,
        k_b: opt(k_w),
        v_w,
        v_b: opt(v_w),
        o_w,
        gate_w: o_w + 1,
        up_w: o_w + 2,
        down_w: o_w + 3,
        ln1_w: o_w + 4,
        ln2_w: o_w + 5,
        per_layer: o_w + 6,
    }
}

/// Index of block `layer`'s parameter at offset `slot` (after `embed_tokens`).
pub(crate) fn layer_index(cfg: &GptConfig, layer: usize, slot: usize) -> usize {
    1 + layer * slots(cfg).per_layer + slot
}

/// Index of `model.norm.weight` (an untied `lm_head.weight` follows).
pub(crate) fn norm_index(cfg: &GptConfig) -> usize {
    1 + cfg.n_layer * slots(cfg).per_layer
}

/// Every parameter, in HF `named_parameters` order. Init as transformers'
/// Llama: N(0, 0.02) weights, zero biases, norms 1, padding rows 0.
pub(crate) fn specs(cfg: &GptConfig) -> Vec<ParamSpec> {
    let arch = cfg.llama.as_ref().expect("a Llama-family config");
    let (c, f) = (cfg.n_embd, arch.intermediate_size);
    let kv = cfg.n_kv_head() * cfg.head_dim();
    let std = 0.02f32;
    let spec = |name: String, shape: Vec<usize>, init: Init, vocab_rows: bool| ParamSpec {
        decay: shape.len() == 2,
        name,
        shape,
        init,
        hf_transposed: false,
        vocab_rows,
    };
    let weight = |name: String, out_f: usize, in_f: usize| {
        spec(
            name,
            vec![out_f, in_f],
            Init::Normal {
                std,
                rows_used: None,
            },
            false,
        )
    };
    let vocab_table = |name: &str| {
        spec(
            name.into(),
            vec![cfg.padded_vocab_size, c],
            Init::Normal {
                std,
                rows_used: Some(cfg.vocab_size),
            },
            true,
        )
    };
    let mut out = vec![vocab_table("model.embed_tokens.weight")];
    for l in 0..cfg.n_layer {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (proj, width) in [("q_proj", c), ("k_proj", kv), ("v_proj", kv)] {
            out.push(weight(p(&format!("self_attn.{proj}.weight")), width, c));
            if arch.qkv_bias {
                out.push(spec(
                    p(&format!("self_attn.{proj}.bias")),
                    vec![width],
                    Init::Zeros,
                    false,
                ));
            }
        }
        out.push(weight(p("self_attn.o_proj.weight"), c, c));
        out.push(weight(p("mlp.gate_proj.weight"), f, c));
        out.push(weight(p("mlp.up_proj.weight"), f, c));
        out.push(weight(p("mlp.down_proj.weight"), c, f));
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            out.push(spec(
                p(&format!("{norm}.weight")),
                vec![c],
                Init::Ones,
                false,
            ));
        }
    }
    out.push(spec("model.norm.weight".into(), vec![c], Init::Ones, false));
    if !arch.tie_word_embeddings {
        out.push(vocab_table("lm_head.weight"));
    }
    debug_assert_eq!(
        out.len(),
        norm_index(cfg) + 1 + usize::from(!arch.tie_word_embeddings)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LlamaFamily;

    #[test]
    fn slots_follow_the_specs() {
        for family in [LlamaFamily::Llama, LlamaFamily::Qwen2] {
            let cfg = GptConfig::new_llama(family, 50, 16, 2, 4, 2, 32, 48, false);
            let specs = specs(&cfg);
            let s = slots(&cfg);
            let name = |slot: usize| specs[layer_index(&cfg, 1, slot)].name.clone();
            assert_eq!(name(s.q_w), "model.layers.1.self_attn.q_proj.weight");
            assert_eq!(name(s.v_w), "model.layers.1.self_attn.v_proj.weight");
            assert_eq!(name(s.down_w), "model.layers.1.mlp.down_proj.weight");
            assert_eq!(
                name(s.ln2_w),
                "model.layers.1.post_attention_layernorm.weight"
            );
            if let Some(kb) = s.k_b {
                assert_eq!(name(kb), "model.layers.1.self_attn.k_proj.bias");
            }
            assert_eq!(specs[norm_index(&cfg)].name, "model.norm.weight");
            assert_eq!(specs.last().unwrap().name, "lm_head.weight");
            let counted: usize = specs
                .iter()
                .map(|s| {
                    if s.vocab_rows {
                        cfg.vocab_size * cfg.n_embd
                    } else {
                        s.shape.iter().product()
                    }
                })
                .sum();
            assert_eq!(counted, cfg.num_params());
        }
    }
}
