//! Step time for one layout: the compute of the slowest pipeline stage at a
//! stated share of peak, the tensor-parallel all-reduces on its critical
//! path, the pipeline's sends, the 1F1B bubble, the data-parallel gradient
//! reduction that backward cannot hide, and the optimizer's pass over memory.
//!
//! FLOPs follow Narayanan et al. 2021 (arXiv:2104.04473, Eq. 3); a ring
//! collective over n ranks moves 2(n-1)/n of the buffer for an all-reduce and
//! (n-1)/n for a reduce-scatter or all-gather (nccl-tests' PERFORMANCE.md).

use super::hardware::{NETWORK_EFFICIENCY, NETWORK_LATENCY_S, NVLINK_EFFICIENCY, NVLINK_LATENCY_S};
use super::memory::{self, stage_params};
use super::{Layout, Recompute, Request};

/// Bytes the AdamW step streams per parameter it updates: reads f32 grad,
/// master, m and v; writes master, m, v and the bf16 weight.
const OPTIMIZER_STREAM_BYTES: f64 = 30.0;

/// Kernels per layer per pass (norms, GEMMs, attention, activation, residual
/// adds) and the floor each costs however small: what makes tiny
/// micro-batches slow.
const KERNELS_PER_LAYER_PASS: f64 = 12.0;
const KERNEL_FLOOR_S: f64 = 5e-6;

/// Where a collective's ranks sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    NvLink,
    Network,
}

/// Seconds for a ring collective that moves `factor` x `bytes` per rank.
fn ring(req: &Request, link: Link, ranks: usize, bytes: f64, factor: f64) -> f64 {
    if ranks <= 1 {
        return 0.0;
    }
    let (bandwidth, latency) = match link {
        Link::NvLink => (
            req.gpu.nvlink_bytes_per_s * NVLINK_EFFICIENCY,
            NVLINK_LATENCY_S,
        ),
        Link::Network => (
            req.gpu.network_bytes_per_s * NETWORK_EFFICIENCY,
            NETWORK_LATENCY_S,
        ),
    };
    let n = ranks as f64;
    factor * (n - 1.0) / n * bytes / bandwidth + (n - 1.0) * latency
}

fn all_reduce(req: &Request, link: Link, ranks: usize, bytes: f64) -> f64 {
    ring(req, link, ranks, bytes, 2.0)
}

/// One step's predicted time, split the way a profile would show it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTime {
    /// Compute of all micro-batches on the slowest stage, at the stated efficiency.
    pub compute_s: f64,
    /// Tensor-parallel all-reduces (4 per layer per micro-batch, 6 with full
    /// recomputation), on the critical path.
    pub tensor_parallel_s: f64,
    /// Activation and gradient sends between stages.
    pub pipeline_sends_s: f64,
    /// Idle time of the 1F1B schedule: (pp - 1) slots.
    pub bubble_s: f64,
    /// Data-parallel gradient reduction (and ZeRO-1's all-gather) not hidden
    /// behind the last micro-batch's backward.
    pub data_parallel_s: f64,
    /// AdamW over this GPU's share of the parameters, bound by HBM bandwidth.
    pub optimizer_s: f64,
    /// FLOPs the hardware runs per step, recomputation included.
    pub hardware_flops: f64,
}

impl StepTime {
    pub fn total(&self) -> f64 {
        self.compute_s
            + self.tensor_parallel_s
            + self.pipeline_sends_s
            + self.bubble_s
            + self.data_parallel_s
            + self.optimizer_s
    }
}

/// Training FLOPs per sequence of one block (forward + 2x backward + what
/// recomputation runs again).
fn layer_train_flops(req: &Request, recompute: Recompute) -> f64 {
    let m = &req.model;
    let forward = m.layer_forward_flops(req.seq_len);
    match recompute {
        Recompute::None => 3.0 * forward,
        Recompute::Selective => 3.0 * forward + m.attention_core_flops(req.seq_len),
        Recompute::Full => 4.0 * forward,
    }
}

/// Passes over a layer in one training step: forward, a backward that costs
/// two, and the forward again under full recomputation.
fn passes(recompute: Recompute) -> f64 {
    if recompute == Recompute::Full {
        4.0
    } else {
        3.0
    }
}

/// HBM traffic of one layer's memory-bound work for one micro-batch on one
/// GPU, over a training step. Norms, activations, bias adds and residuals
/// move roughly what the layer stores for backward (the sbh terms
/// of Korthikanti et al.; Megatron fuses bias+GELU and bias+dropout+add, so
/// each byte stored is about one byte of traffic per pass). Unfused attention also writes the scores, and its
/// softmax reads and writes them before P·V reads them: 8 bytes per score
/// per forward pass; a flash kernel keeps them on chip.
fn layer_memory_bytes(req: &Request, layout: &Layout) -> f64 {
    let m = &req.model;
    let stored = memory::layer_activation_bytes(
        req,
        &Layout {
            recompute: Recompute::Selective,
            ..layout.clone()
        },
    );
    let elementwise = passes(layout.recompute) * stored;
    if req.flash_attention {
        return elementwise;
    }
    let scores =
        (m.heads / layout.tp) as f64 * (req.seq_len * req.seq_len * layout.micro_batch) as f64;
    let score_passes = if layout.recompute == Recompute::None {
        3.0
    } else {
        4.0
    };
    elementwise + score_passes * 8.0 * scores
}

pub fn step_time(req: &Request, layout: &Layout) -> StepTime {
    let m = &req.model;
    let micro_batches = layout.micro_batches(req) as f64;
    let b = layout.micro_batch as f64;
    let (t, p) = (layout.tp, layout.pp);
    let flops_per_s = req.gpu.peak_bf16_flops * req.efficiency;

    // The last stage runs its layers and the logits: it sets the pace.
    let layers_per_stage = (m.layers / p) as f64;
    let logits = 3.0 * m.logits_forward_flops(req.seq_len);
    let slot_flops =
        b * (layers_per_stage * layer_train_flops(req, layout.recompute) + logits) / t as f64;
    let slot_compute = slot_flops / flops_per_s
        + layers_per_stage * layer_memory_bytes(req, layout) / req.gpu.hbm_bytes_per_s
        + layers_per_stage * passes(layout.recompute) * KERNELS_PER_LAYER_PASS * KERNEL_FLOOR_S;

    let activation_bytes = 2.0 * (req.seq_len * layout.micro_batch * m.hidden) as f64;
    let all_reduces = if layout.recompute == Recompute::Full {
        6.0
    } else {
        4.0
    };
    let slot_tp =
        layers_per_stage * all_reduces * all_reduce(req, Link::NvLink, t, activation_bytes);

    // Megatron's scatter/gather: each tp rank sends its 1/t share of the
    // activation, forward and backward.
    let slot_send = if p > 1 {
        let link = if t * layout.dp >= req.gpus_per_node && req.gpus() > req.gpus_per_node {
            Link::Network
        } else {
            Link::NvLink
        };
        ring(req, link, 2, 2.0 * activation_bytes / t as f64, 2.0)
    } else {
        0.0
    };

    // Interleaving v chunks per GPU cuts the bubble v-fold and sends v times
    // as often (Narayanan et al. 2021, section 2.2.2).
    let v = layout.chunks as f64;
    let slot_send = v * slot_send;
    let slot = slot_compute + slot_tp + slot_send;
    let bubble = (p as f64 - 1.0) / v * slot;

    // Gradients of the first stage (it holds the embedding), fp32.
    let params = stage_params(req, layout, true, p == 1);
    let dp_link = if t * layout.dp > req.gpus_per_node {
        Link::Network
    } else {
        Link::NvLink
    };
    let (reduce, gather) = if layout.zero == 1 {
        (
            ring(req, dp_link, layout.dp, 4.0 * params, 1.0),
            ring(req, dp_link, layout.dp, 2.0 * params, 1.0),
        )
    } else {
        (all_reduce(req, dp_link, layout.dp, 4.0 * params), 0.0)
    };
    // DDP-style buckets overlap the reduction with one micro-batch's backward.
    let hidden_by_backward = slot_compute * 2.0 / 3.0;
    let data_parallel = (reduce - hidden_by_backward).max(0.0) + gather;

    let shard = if layout.zero == 1 {
        params / layout.dp as f64
    } else {
        params
    };
    let optimizer = shard * OPTIMIZER_STREAM_BYTES / req.gpu.hbm_bytes_per_s;

    let per_sequence_hw = m.layers as f64 * layer_train_flops(req, layout.recompute) + logits;
    StepTime {
        compute_s: micro_batches * slot_compute,
        tensor_parallel_s: micro_batches * slot_tp,
        pipeline_sends_s: micro_batches * slot_send,
        bubble_s: bubble,
        data_parallel_s: data_parallel,
        optimizer_s: optimizer,
        hardware_flops: req.global_batch as f64 * per_sequence_hw,
    }
}
