//! `kiln plan`: which data x tensor x pipeline layout to run a model with on
//! N GPUs, predicted on paper.
//!
//! For every layout that the shapes allow (tp inside a node and dividing the
//! heads, pp dividing the layers, dp = GPUs / (tp·pp), a micro-batch that
//! divides the per-replica batch, ZeRO 0 or 1, recomputation none, selective
//! or full) it predicts memory per device ([`memory`]) and step time
//! ([`time`]), and ranks the layouts that fit by step time. Those that do not
//! fit keep the reason. The process grid order is tp (innermost) - dp - pp,
//! Megatron's, which decides which collectives cross nodes.

pub mod hardware;
pub mod memory;
pub mod shape;
pub mod time;

pub use hardware::Gpu;
pub use memory::Memory;
pub use shape::{Mlp, ModelShape};
pub use time::StepTime;

/// Share of device memory a layout may use; the rest is the CUDA context,
/// communication buffers, GEMM workspaces and the allocator's fragmentation.
pub const USABLE_MEMORY_FRACTION: f64 = 0.9;

/// GEMM efficiency used when none is given, calibrated on one published
/// run: Narayanan et al. 2021's 1.7B model without model parallelism (137 of
/// 312 TFLOP/s per GPU on A100s) is reproduced at 0.56 once this model's
/// memory-bound work is added (`tests/narayanan.rs` holds the calibration and
/// checks the other nine rows). No kiln GPU run exists yet to calibrate on.
pub const DEFAULT_EFFICIENCY: f64 = 0.56;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Request(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recompute {
    None,
    /// Recompute the attention core (Korthikanti et al.): the s² activations go.
    Selective,
    /// Keep only each layer's input and run its forward again in backward.
    Full,
}

impl Recompute {
    pub const ALL: [Recompute; 3] = [Recompute::None, Recompute::Selective, Recompute::Full];

    pub fn name(self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Result<Self, PlanError> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                PlanError::Request(format!(
                    "unknown recompute {s:?}; use none, selective or full"
                ))
            })
    }
}

/// What to plan for.
#[derive(Clone, Debug)]
pub struct Request {
    pub model: ModelShape,
    pub gpu: Gpu,
    /// GPUs per node (at most the board's `Gpu::gpus_per_node`).
    pub gpus_per_node: usize,
    pub nodes: usize,
    pub seq_len: usize,
    /// Sequences per optimizer step, over all replicas.
    pub global_batch: usize,
    /// Share of bf16 peak the GEMMs run at.
    pub efficiency: f64,
    /// A fused attention kernel that never stores the s x s scores (kiln's
    /// CUDA plan); off, the scores are written, softmaxed and read back.
    pub flash_attention: bool,
    /// Restrict the search (`--tp 8`, `--zero 1`, ...).
    pub only: Constraints,
}

#[derive(Clone, Debug, Default)]
pub struct Constraints {
    pub tp: Option<usize>,
    pub pp: Option<usize>,
    pub micro_batch: Option<usize>,
    pub zero: Option<u8>,
    pub recompute: Option<Recompute>,
}

impl Request {
    pub fn gpus(&self) -> usize {
        self.gpus_per_node * self.nodes
    }

    /// Refuses what the cost models cannot describe.
    pub fn check(&self) -> Result<(), PlanError> {
        let fail = |m: String| Err(PlanError::Request(m));
        if self.gpus_per_node == 0 || self.gpus_per_node > self.gpu.gpus_per_node {
            return fail(format!(
                "--gpus {} per node: a {} node has 1 to {} GPUs on one NVLink domain; \
                 use --nodes for more",
                self.gpus_per_node, self.gpu.name, self.gpu.gpus_per_node
            ));
        }
        if self.nodes == 0 || self.seq_len == 0 || self.global_batch == 0 {
            return fail("--nodes, --seq-len and --global-batch must be positive".into());
        }
        if !(self.efficiency > 0.0 && self.efficiency <= 1.0) {
            return fail(format!(
                "--efficiency {} must be a share of peak in (0, 1]",
                self.efficiency
            ));
        }
        Ok(())
    }

    pub fn usable_memory(&self) -> f64 {
        self.gpu.memory_bytes * USABLE_MEMORY_FRACTION
    }
}

/// One way to lay the model out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    pub zero: u8,
    pub recompute: Recompute,
    /// Model chunks per GPU: 1 is plain 1F1B, v > 1 the interleaved 1F1B
    /// schedule (needs micro-batches to be a multiple of pp).
    pub chunks: usize,
}

impl Layout {
    /// Micro-batches per step on each replica.
    pub fn micro_batches(&self, req: &Request) -> usize {
        req.global_batch / (self.dp * self.micro_batch)
    }
}

/// A layout with its predictions.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub layout: Layout,
    pub memory: Memory,
    pub time: StepTime,
    /// Why it does not fit, if it does not.
    pub unfit: Option<String>,
}

impl Evaluated {
    pub fn step_s(&self) -> f64 {
        self.time.total()
    }

    pub fn tokens_per_s(&self, req: &Request) -> f64 {
        (req.global_batch * req.seq_len) as f64 / self.step_s()
    }

    /// Model FLOPs utilisation (PaLM's definition: no recomputation counted).
    pub fn mfu(&self, req: &Request) -> f64 {
        req.model.model_flops(req.global_batch, req.seq_len)
            / (self.step_s() * req.gpus() as f64 * req.gpu.peak_bf16_flops)
    }

    /// What Narayanan et al. report: hardware FLOP/s per GPU, recomputation
    /// included.
    pub fn achieved_flops_per_gpu(&self, req: &Request) -> f64 {
        self.time.hardware_flops / (self.step_s() * req.gpus() as f64)
    }

    /// Share of the step the pipeline stands idle: (p-1)/(v·m+p-1).
    pub fn bubble_fraction(&self, req: &Request) -> f64 {
        let p = self.layout.pp as f64;
        let m = self.layout.micro_batches(req) as f64;
        let v = self.layout.chunks as f64;
        (p - 1.0) / (v * m + p - 1.0)
    }
}

/// Predicts one layout; `None` with the reason when the shapes forbid it.
pub fn evaluate(req: &Request, layout: &Layout) -> Result<Evaluated, String> {
    check_layout(req, layout)?;
    let memory = memory::memory(req, layout);
    let time = time::step_time(req, layout);
    let usable = req.usable_memory();
    let unfit = (memory.total() > usable).then(|| {
        format!(
            "needs {:.1} GiB per GPU on its {} stage, {:.1} usable of {:.0}: weights {:.1}, \
             grads {:.1}, optimizer {:.1}, activations {:.1}",
            gib(memory.total()),
            memory.stage,
            gib(usable),
            gib(req.gpu.memory_bytes),
            gib(memory.weights),
            gib(memory.grads),
            gib(memory.optimizer),
            gib(memory.activations),
        )
    });
    Ok(Evaluated {
        layout: layout.clone(),
        memory,
        time,
        unfit,
    })
}

pub fn gib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0 * 1024.0)
}

/// Why the shapes forbid a layout, if they do.
pub fn check_layout(req: &Request, l: &Layout) -> Result<(), String> {
    let m = &req.model;
    let node = req.gpus_per_node;
    if l.tp == 0 || l.pp == 0 || l.dp == 0 || l.micro_batch == 0 || l.chunks == 0 {
        return Err("every parallel size and the micro-batch must be positive".into());
    }
    if l.tp * l.pp * l.dp != req.gpus() {
        return Err(format!(
            "dp {} x tp {} x pp {} must equal the {} GPUs",
            l.dp,
            l.tp,
            l.pp,
            req.gpus()
        ));
    }
    if !node.is_multiple_of(l.tp) {
        return Err(format!(
            "tp {} must divide the {node} GPUs of a node (tensor parallelism stays on NVLink)",
            l.tp
        ));
    }
    if !m.kv_heads.is_multiple_of(l.tp) || !m.ffn.is_multiple_of(l.tp) {
        return Err(format!(
            "tp {} must divide the {} key/value heads and the MLP width {}",
            l.tp, m.kv_heads, m.ffn
        ));
    }
    if !m.layers.is_multiple_of(l.pp) {
        return Err(format!("pp {} must divide the {} layers", l.pp, m.layers));
    }
    if !req.global_batch.is_multiple_of(l.dp * l.micro_batch) {
        return Err(format!(
            "the global batch {} must be a multiple of dp {} x micro-batch {}",
            req.global_batch, l.dp, l.micro_batch
        ));
    }
    if l.chunks > 1 {
        if l.pp == 1 {
            return Err("interleaving needs pipeline parallelism (pp > 1)".into());
        }
        if !m.layers.is_multiple_of(l.pp * l.chunks) {
            return Err(format!(
                "pp {} x {} chunks must divide the {} layers",
                l.pp, l.chunks, m.layers
            ));
        }
        if !l.micro_batches(req).is_multiple_of(l.pp) {
            return Err(format!(
                "interleaving needs the {} micro-batches to be a multiple of pp {}",
                l.micro_batches(req),
                l.pp
            ));
        }
    }
    if l.zero > 1 {
        return Err(format!("ZeRO stage {} is not modelled; use 0 or 1", l.zero));
    }
    Ok(())
}

/// Every layout allowed by the shapes and the constraints, predicted; those
/// that fit first, fastest first.
pub fn search(req: &Request) -> Result<Vec<Evaluated>, PlanError> {
    req.check()?;
    let node = req.gpus_per_node;
    let n = req.gpus();
    let divisors = |x: usize| (1..=x).filter(move |d| x.is_multiple_of(*d));
    let mut out = Vec::new();
    for tp in divisors(node) {
        for pp in divisors(req.model.layers).filter(|pp| n.is_multiple_of(tp * pp)) {
            let dp = n / (tp * pp);
            for micro_batch in [1, 2, 4, 8, 16, 32] {
                for zero in [0u8, 1] {
                    for recompute in Recompute::ALL {
                        for chunks in [1, 2, 3, 4] {
                            let layout = Layout {
                                dp,
                                tp,
                                pp,
                                micro_batch,
                                zero,
                                recompute,
                                chunks,
                            };
                            let pointless = (zero == 1 && dp == 1)
                                || (recompute == Recompute::Selective && req.flash_attention);
                            if pointless || !req.only.admits(&layout) {
                                continue;
                            }
                            if let Ok(e) = evaluate(req, &layout) {
                                out.push(e);
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(PlanError::Request(explain_no_layout(req)));
    }
    out.sort_by(|a, b| {
        a.unfit
            .is_some()
            .cmp(&b.unfit.is_some())
            .then(a.step_s().total_cmp(&b.step_s()))
            .then(a.memory.total().total_cmp(&b.memory.total()))
    });
    Ok(out)
}

impl Constraints {
    fn admits(&self, l: &Layout) -> bool {
        self.tp.is_none_or(|v| v == l.tp)
            && self.pp.is_none_or(|v| v == l.pp)
            && self.micro_batch.is_none_or(|v| v == l.micro_batch)
            && self.zero.is_none_or(|v| v == l.zero)
            && self.recompute.is_none_or(|v| v == l.recompute)
    }
}

/// The first constraint that rules every layout out, in words.
fn explain_no_layout(req: &Request) -> String {
    let n = req.gpus();
    let c = &req.only;
    let tp = c.tp.unwrap_or(1);
    let pp = c.pp.unwrap_or(1);
    if !n.is_multiple_of(tp * pp) {
        return format!("tp {tp} x pp {pp} does not divide the {n} GPUs");
    }
    let probe = Layout {
        dp: n / (tp * pp),
        tp,
        pp,
        micro_batch: c.micro_batch.unwrap_or(1),
        zero: c.zero.unwrap_or(0),
        recompute: c.recompute.unwrap_or(Recompute::None),
        chunks: 1,
    };
    match check_layout(req, &probe) {
        Err(why) => format!("no layout is possible: {why}"),
        Ok(()) => "no layout is possible with these constraints".into(),
    }
}
