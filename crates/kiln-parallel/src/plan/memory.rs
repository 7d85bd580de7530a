//! Memory per device for one layout, after Korthikanti et al. 2022
//! (arXiv:2205.05198, Table 2) for activations and Megatron-LM's
//! `theoretical_memory_usage.py` for the model states.
//!
//! Model states per parameter: 2 bytes of bf16 weights, 4 of f32 gradient
//! accumulation buffer, 12 of f32 master weights and Adam moments (18 in
//! all); ZeRO-1 shards the 12 over the data-parallel group (6 + 12/dp).

use super::{Layout, Recompute, Request};

/// Bytes per parameter of each model state.
const WEIGHT_BYTES: f64 = 2.0;
const GRAD_BYTES: f64 = 4.0;
const OPTIMIZER_BYTES: f64 = 12.0;

/// The worst stage's memory, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Memory {
    pub weights: f64,
    pub grads: f64,
    pub optimizer: f64,
    pub activations: f64,
    /// Which pipeline stage this is ("first", "last", "only").
    pub stage: &'static str,
}

impl Memory {
    pub fn total(&self) -> f64 {
        self.weights + self.grads + self.optimizer + self.activations
    }
}

/// Parameters one GPU of a stage holds: its layers' matrices split over tp,
/// their biases and norms whole, and the embedding (vocab-parallel) on the
/// first stage and again on the last when pp > 1 (the tied lm_head's copy)
/// or when the head is untied.
pub fn stage_params(req: &Request, layout: &Layout, first: bool, last: bool) -> f64 {
    let m = &req.model;
    let t = layout.tp as f64;
    let layers = (m.layers / layout.pp) as f64;
    let mut p = layers * (m.layer_matrix_params() as f64 / t + m.layer_vector_params() as f64);
    let embedding = m.embedding_params() as f64 / t;
    if first {
        p += embedding + m.other_params() as f64;
    }
    if last && (layout.pp > 1 || !m.tied_embeddings) {
        p += embedding;
    }
    p
}

/// Activation bytes one layer keeps for one micro-batch (16-bit), without
/// sequence parallelism: Korthikanti's sbh(10 + 24/t + 5as/(ht)) for GPT
/// shapes, generalised to other MLP widths, SwiGLU and grouped-query K/V.
pub fn layer_activation_bytes(req: &Request, layout: &Layout) -> f64 {
    let m = &req.model;
    let (s, b, h, t) = (
        req.seq_len as f64,
        layout.micro_batch as f64,
        m.hidden as f64,
        layout.tp as f64,
    );
    let sbh = s * b * h;
    if layout.recompute == Recompute::Full {
        // Only the layer input is kept; the layer is recomputed in backward.
        return 2.0 * sbh;
    }
    let kv = m.kv_width() as f64;
    let ffn = m.ffn as f64;
    // Not split by tp: both norms' inputs, the QKV and MLP inputs, and the
    // two dropout masks of GPT blocks.
    let replicated = if m.gpt_style { 10.0 * sbh } else { 8.0 * sbh };
    // Split by tp: Q, K, V and the projection's input; the MLP's hidden states.
    let attention = 2.0 * sbh + 4.0 * s * b * kv + 2.0 * sbh;
    let mlp = match m.mlp {
        super::Mlp::Gelu => 4.0 * s * b * ffn,
        super::Mlp::SwiGlu => 6.0 * s * b * ffn,
    };
    let mut bytes = replicated + (attention + mlp) / t;
    if layout.recompute == Recompute::None {
        // Softmax output (2 bytes), dropout mask (1) and output (2) per score.
        let per_score = if m.gpt_style { 5.0 } else { 2.0 };
        bytes += per_score * m.heads as f64 * s * s * b / t;
    }
    bytes
}

/// The larger of the first and the last stage.
pub fn memory(req: &Request, layout: &Layout) -> Memory {
    let micro_batches = layout.micro_batches(req);
    let layer = layer_activation_bytes(req, layout);
    let layers = (req.model.layers / layout.pp) as f64;
    // Full recomputation rebuilds one layer at a time on top of the inputs.
    let working_set = if layout.recompute == Recompute::Full {
        let selective = Layout {
            recompute: Recompute::Selective,
            ..layout.clone()
        };
        layer_activation_bytes(req, &selective)
    } else {
        0.0
    };
    // fp32 logits of one micro-batch (their buffer then holds the gradient).
    let logits =
        4.0 * (req.seq_len * layout.micro_batch) as f64 * req.model.vocab as f64 / layout.tp as f64;
    let stage = |first: bool, last: bool, in_flight: f64, name| {
        let params = stage_params(req, layout, first, last);
        let optimizer_share = if layout.zero == 1 {
            1.0 / layout.dp as f64
        } else {
            1.0
        };
        let mut activations = in_flight * layers * layer + working_set;
        if last {
            activations += logits;
        }
        Memory {
            weights: WEIGHT_BYTES * params,
            grads: GRAD_BYTES * params,
            optimizer: OPTIMIZER_BYTES * params * optimizer_share,
            activations,
            stage: name,
        }
    };
    if layout.pp == 1 {
        return stage(true, true, 1.0, "only");
    }
    // 1F1B: the first stage holds up to pp micro-batches in flight, the last
    // one; interleaving v chunks raises the first stage's share by
    // 1 + (p-1)/(p·v) (Megatron's theoretical_memory_usage.py).
    let in_flight = layout.pp.min(micro_batches) as f64;
    let interleave = if layout.chunks > 1 {
        1.0 + (layout.pp as f64 - 1.0) / (layout.pp * layout.chunks) as f64
    } else {
        1.0
    };
    let first = stage(true, false, in_flight * interleave, "first");
    let last = stage(false, true, 1.0, "last");
    if first.total() >= last.total() {
        first
    } else {
        last
    }
}
