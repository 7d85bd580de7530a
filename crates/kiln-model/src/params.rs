//! The parameter list (HF GPT-2 names, kiln layouts) and GPT-2 initialisation.

use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult};

use crate::{GptConfig, ModelError, Rng};

/// One parameter tensor on the backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Hugging Face GPT-2 name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// kiln layout: linear weights `[out, in]`, `wte` `[Vp, C]`.
    pub shape: Vec<usize>,
    /// The f32 values (the master copy under mixed precision).
    pub value: BufId,
    /// The gradient (f32 in every precision policy: it accumulates), or
    /// `None` for a frozen parameter (the base under LoRA): no optimizer
    /// reads it, so no buffer is held and backward skips the products that
    /// would fill it (input gradients still flow through the weight).
    pub grad: Option<BufId>,
    /// Mixed precision: the 16-bit copy the forward and backward compute
    /// with, rewritten from `value` after every optimizer update.
    pub value_16: Option<BufId>,
    /// Weight decay applies: 2-D weights (matmul weights, wte, wpe).
    pub decay: bool,
}

impl Param {
    /// The buffer the model computes with: the 16-bit copy under mixed
    /// precision, else the f32 values.
    pub fn weight(&self) -> BufId {
        self.value_16.unwrap_or(self.value)
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Frozen: no gradient buffer (see [`Param::grad`]).
    pub fn is_frozen(&self) -> bool {
        self.grad.is_none()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    Zeros,
    Ones,
    /// N(0, std^2); for `wte` only the first `rows_used` rows (real vocab).
    Normal {
        std: f32,
        rows_used: Option<usize>,
    },
}

/// Name, shape and init of one parameter, before any buffer exists.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub decay: bool,
    pub init: Init,
    /// Stored transposed in HF checkpoints (Conv1D `[in, out]`).
    pub hf_transposed: bool,
    /// `[Vp, C]` in kiln, `[V, C]` in checkpoints (an embedding or lm_head).
    pub vocab_rows: bool,
}

/// Parameters per transformer block, in HF `named_parameters` order.
pub(crate) const PER_LAYER: usize = 12;
pub(crate) const WTE: usize = 0;
pub(crate) const WPE: usize = 1;

/// Offsets of a GPT-2 block's parameters inside its group of 12 (public:
/// kiln-parallel's tensor-parallel block indexes its shards with them).
pub mod slot {
    pub const LN1_W: usize = 0;
    pub const LN1_B: usize = 1;
    pub const QKV_W: usize = 2;
    pub const QKV_B: usize = 3;
    pub const ATTN_PROJ_W: usize = 4;
    pub const ATTN_PROJ_B: usize = 5;
    pub const LN2_W: usize = 6;
    pub const LN2_B: usize = 7;
    pub const FC_W: usize = 8;
    pub const FC_B: usize = 9;
    pub const FC_PROJ_W: usize = 10;
    pub const FC_PROJ_B: usize = 11;
}

/// Index of block `layer`'s parameter `slot` in the parameter list.
pub(crate) fn layer_index(layer: usize, slot: usize) -> usize {
    2 + layer * PER_LAYER + slot
}

/// Index of `ln_f.weight` (`ln_f.bias` follows).
pub(crate) fn ln_f_index(cfg: &GptConfig) -> usize {
    2 + cfg.n_layer * PER_LAYER
}

/// Index of the final norm's weight (GPT-2's `ln_f.weight`, Llama's `model.norm.weight`).
pub(crate) fn final_norm_index(cfg: &GptConfig) -> usize {
    match cfg.llama {
        None => ln_f_index(cfg),
        Some(_) => crate::llama_params::norm_index(cfg),
    }
}

/// Index of the output projection: the tied embedding, or Llama's untied `lm_head.weight`.
pub(crate) fn lm_head_index(cfg: &GptConfig) -> usize {
    match &cfg.llama {
        Some(l) if !l.tie_word_embeddings => crate::llama_params::norm_index(cfg) + 1,
        _ => WTE,
    }
}

/// Every parameter of `cfg`, in HF `named_parameters` order.
pub(crate) fn specs(cfg: &GptConfig) -> Vec<ParamSpec> {
    if cfg.llama.is_some() {
        return crate::llama_params::specs(cfg);
    }
    let c = cfg.n_embd;
    let std = 0.02f32;
    // GPT-2 scales the init of the projections that write into the residual stream.
    let resid_std = std / ((2 * cfg.n_layer) as f32).sqrt();
    let spec = |name: String, shape: Vec<usize>, init: Init, hf_transposed: bool| ParamSpec {
        decay: shape.len() == 2,
        vocab_rows: name == "transformer.wte.weight",
        name,
        shape,
        init,
        hf_transposed,
    };
    let normal = |s: f32| Init::Normal {
        std: s,
        rows_used: None,
    };
    let mut out = vec![
        spec(
            "transformer.wte.weight".into(),
            vec![cfg.padded_vocab_size, c],
            Init::Normal {
                std,
                rows_used: Some(cfg.vocab_size),
            },
            false,
        ),
        spec(
            "transformer.wpe.weight".into(),
            vec![cfg.max_seq_len, c],
            normal(std),
            false,
        ),
    ];
    for l in 0..cfg.n_layer {
        let p = |s: &str| format!("transformer.h.{l}.{s}");
        out.extend([
            spec(p("ln_1.weight"), vec![c], Init::Ones, false),
            spec(p("ln_1.bias"), vec![c], Init::Zeros, false),
            spec(p("attn.c_attn.weight"), vec![3 * c, c], normal(std), true),
            spec(p("attn.c_attn.bias"), vec![3 * c], Init::Zeros, false),
            spec(p("attn.c_proj.weight"), vec![c, c], normal(resid_std), true),
            spec(p("attn.c_proj.bias"), vec![c], Init::Zeros, false),
            spec(p("ln_2.weight"), vec![c], Init::Ones, false),
            spec(p("ln_2.bias"), vec![c], Init::Zeros, false),
            spec(p("mlp.c_fc.weight"), vec![4 * c, c], normal(std), true),
            spec(p("mlp.c_fc.bias"), vec![4 * c], Init::Zeros, false),
            spec(
                p("mlp.c_proj.weight"),
                vec![c, 4 * c],
                normal(resid_std),
                true,
            ),
            spec(p("mlp.c_proj.bias"), vec![c], Init::Zeros, false),
        ]);
    }
    out.push(spec(
        "transformer.ln_f.weight".into(),
        vec![c],
        Init::Ones,
        false,
    ));
    out.push(spec(
        "transformer.ln_f.bias".into(),
        vec![c],
        Init::Zeros,
        false,
    ));
    debug_assert_eq!(out.len(), ln_f_index(cfg) + 2);
    out
}

/// Host values of one parameter per its init, drawing from `rng` in order.
pub(crate) fn init_values(spec: &ParamSpec, rng: &mut Rng) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    match spec.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal { std, rows_used } => {
            let cols = *spec.shape.last().unwrap_or(&1);
            let used = rows_used.map_or(n, |r| r * cols);
            let mut v = vec![0.0f32; n];
            for x in &mut v[..used] {
                *x = std * rng.normal();
            }
            v
        }
    }
}

/// Uploads `values` and, with `grads`, allocates zeroed gradient buffers.
/// Each host copy is dropped once uploaded and the gradients come after
/// every value, so loading holds the model once on the host plus once on
/// the backend, never host copies and gradients together.
pub(crate) fn upload_params<V: AsRef<[f32]>>(
    be: &mut BackendBox,
    specs: &[ParamSpec],
    values: impl IntoIterator<Item = V>,
    grads: bool,
) -> Result<Vec<Param>, ModelError> {
    let mut params = Vec::with_capacity(specs.len());
    for (spec, v) in specs.iter().zip(values) {
        let value = be.from_f32(v.as_ref())?;
        params.push(Param {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
            value,
            grad: None,
            value_16: None,
            decay: spec.decay,
        });
    }
    if grads {
        alloc_grads(be, &mut params)?;
    }
    Ok(params)
}

/// Gives every frozen parameter of `params` a zeroed gradient buffer.
pub(crate) fn alloc_grads(be: &mut BackendBox, params: &mut [Param]) -> Result<(), ModelError> {
    for p in params.iter_mut().filter(|p| p.grad.is_none()) {
        p.grad = Some(be.alloc_buf(DType::F32, p.len())?);
    }
    Ok(())
}

/// Frees the gradient buffers of `params`, freezing them.
pub(crate) fn free_grads(be: &mut BackendBox, params: &mut [Param]) -> Result<(), ModelError> {
    for p in params {
        if let Some(g) = p.grad.take() {
            be.free(g).ok_or_err()?;
        }
    }
    Ok(())
}
