//! `kiln plan`: the best data x tensor x pipeline layouts for a model on N
//! GPUs, with predicted memory per GPU, step time and MFU, and why the
//! layouts that do not fit do not (kiln-parallel's planner).

use anyhow::{bail, Result};
use kiln_parallel::plan::{self, gib, Constraints, Evaluated, Gpu, ModelShape, Recompute, Request};

#[derive(clap::Args)]
pub struct Args {
    /// A preset (tiny, mini, small, gpt2-124m) or an HF config.json (or its
    /// directory) of a GPT-2 or Llama-family model.
    #[arg(long)]
    model: String,
    /// GPUs per node (one NVLink domain).
    #[arg(long)]
    gpus: usize,
    /// GPU type: a100, h100 or h200.
    #[arg(long)]
    gpu: String,
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Sequence length (default: the model's context).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Sequences per optimizer step over all replicas (default: about 0.5M
    /// tokens, rounded up to a multiple of the GPU count).
    #[arg(long)]
    global_batch: Option<usize>,
    /// Share of bf16 peak the GEMMs reach (default: calibrated on Narayanan
    /// et al. 2021's 1.7B run).
    #[arg(long, default_value_t = plan::DEFAULT_EFFICIENCY)]
    efficiency: f64,
    /// Attention kernel: flash (scores never stored) or unfused.
    #[arg(long, default_value = "flash", value_parser = ["flash", "unfused"])]
    attention: String,
    /// Layouts to list.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Only layouts with this tensor-parallel size.
    #[arg(long)]
    tp: Option<usize>,
    /// Only layouts with this pipeline-parallel size.
    #[arg(long)]
    pp: Option<usize>,
    /// Only layouts with this micro-batch (sequences).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Only layouts with this ZeRO stage (0 or 1).
    #[arg(long)]
    zero: Option<u8>,
    /// Only layouts with this recomputation: none, selective or full.
    #[arg(long)]
    recompute: Option<String>,
}

/// About half a million tokens per step, as GPT-2 and nanoGPT train.
const DEFAULT_BATCH_TOKENS: usize = 1 << 19;

pub fn run(args: Args) -> Result<()> {
    let model = ModelShape::from_arg(&args.model)?;
    let gpu = Gpu::named(&args.gpu)?;
    let seq_len = args.seq_len.unwrap_or(model.max_seq_len);
    let gpus = args.gpus * args.nodes;
    let global_batch = args.global_batch.unwrap_or_else(|| {
        DEFAULT_BATCH_TOKENS
            .div_ceil(seq_len.max(1))
            .div_ceil(gpus.max(1))
            * gpus.max(1)
    });
    let recompute = args
        .recompute
        .as_deref()
        .map(Recompute::parse)
        .transpose()?;
    let req = Request {
        model,
        gpu,
        gpus_per_node: args.gpus,
        nodes: args.nodes,
        seq_len,
        global_batch,
        efficiency: args.efficiency,
        flash_attention: args.attention == "flash",
        only: Constraints {
            tp: args.tp,
            pp: args.pp,
            micro_batch: args.micro_batch,
            zero: args.zero,
            recompute,
        },
    };
    let all = plan::search(&req)?;
    print_header(&req, args.efficiency == plan::DEFAULT_EFFICIENCY);
    let (fit, unfit): (Vec<&Evaluated>, Vec<&Evaluated>) =
        all.iter().partition(|e| e.unfit.is_none());
    if !fit.is_empty() {
        print_table(&req, &distinct(&fit, args.top));
        print_breakdown(&req, fit[0]);
    }
    if !unfit.is_empty() {
        println!(
            "\n{} of {} layouts do not fit; the closest to fitting:",
            unfit.len(),
            all.len()
        );
        let mut closest = unfit.clone();
        closest.sort_by(|a, b| a.memory.total().total_cmp(&b.memory.total()));
        for e in closest.iter().take(3) {
            println!(
                "  {}: {}",
                describe(&e.layout),
                e.unfit.as_deref().unwrap_or("")
            );
        }
    }
    if fit.is_empty() {
        bail!(
            "no layout of {} fits {} x {} ({:.0} GiB each): add GPUs or nodes, \
             a shorter --seq-len, or full recomputation",
            req.model.name,
            req.gpus(),
            req.gpu.name,
            gib(req.gpu.memory_bytes)
        );
    }
    Ok(())
}

fn print_header(req: &Request, default_efficiency: bool) {
    let m = &req.model;
    println!(
        "{}: {:.1}M parameters, {} layers, d {}, {} heads ({} kv), ffn {}, vocab {}",
        m.name,
        m.params() as f64 / 1e6,
        m.layers,
        m.hidden,
        m.heads,
        m.kv_heads,
        m.ffn,
        m.vocab
    );
    println!(
        "on {} node(s) x {} {} ({:.0} GiB, {:.0} TFLOP/s bf16 each); sequence {}, \
         global batch {} sequences ({} tokens)",
        req.nodes,
        req.gpus_per_node,
        req.gpu.name,
        gib(req.gpu.memory_bytes),
        req.gpu.peak_bf16_flops / 1e12,
        req.seq_len,
        req.global_batch,
        req.global_batch * req.seq_len
    );
    let source = if default_efficiency {
        "calibrated on Narayanan et al. 2021's 1.7B A100 run, as no kiln GPU run is measured \
         yet; --efficiency sets it"
    } else {
        "as given"
    };
    println!(
        "GEMMs at {:.0}% of peak: {source}. Attention {}; memory limit {:.0}% of the device.",
        100.0 * req.efficiency,
        if req.flash_attention {
            "fused (flash)"
        } else {
            "unfused"
        },
        100.0 * plan::USABLE_MEMORY_FRACTION
    );
}

fn describe(l: &plan::Layout) -> String {
    format!(
        "dp {} tp {} pp {}{} micro-batch {} zero {} recompute {}",
        l.dp,
        l.tp,
        l.pp,
        if l.chunks > 1 {
            format!(" (interleaved x{})", l.chunks)
        } else {
            String::new()
        },
        l.micro_batch,
        l.zero,
        l.recompute.name()
    )
}

/// The best micro-batch of each layout, up to `top` of them.
fn distinct<'a>(ranked: &[&'a Evaluated], top: usize) -> Vec<&'a Evaluated> {
    let mut seen = std::collections::HashSet::new();
    ranked
        .iter()
        .filter(|e| {
            let l = &e.layout;
            seen.insert((l.dp, l.tp, l.pp, l.chunks, l.zero, l.recompute))
        })
        .take(top)
        .copied()
        .collect()
}

fn print_table(req: &Request, rows: &[&Evaluated]) {
    println!(
        "\n{:>4} {:>4} {:>3} {:>3} {:>2} {:>4} {:>4} {:>9} {:>10} {:>9} {:>11} {:>6} {:>6}",
        "rank",
        "dp",
        "tp",
        "pp",
        "v",
        "mb",
        "zero",
        "recompute",
        "GiB/GPU",
        "step s",
        "tokens/s",
        "MFU",
        "bubble"
    );
    for (i, e) in rows.iter().enumerate() {
        let l = &e.layout;
        println!(
            "{:>4} {:>4} {:>3} {:>3} {:>2} {:>4} {:>4} {:>9} {:>10.1} {:>9.3} {:>11.0} {:>5.1}% {:>5.1}%",
            i + 1,
            l.dp,
            l.tp,
            l.pp,
            l.chunks,
            l.micro_batch,
            l.zero,
            l.recompute.name(),
            gib(e.memory.total()),
            e.step_s(),
            e.tokens_per_s(req),
            100.0 * e.mfu(req),
            100.0 * e.bubble_fraction(req)
        );
    }
}

fn print_breakdown(req: &Request, e: &Evaluated) {
    let m = &e.memory;
    println!(
        "\nbest layout, memory per GPU ({} stage): weights {:.2} GiB, grads {:.2}, optimizer {:.2}, \
         activations {:.2}; {:.1} of {:.1} GiB usable",
        m.stage,
        gib(m.weights),
        gib(m.grads),
        gib(m.optimizer),
        gib(m.activations),
        gib(m.total()),
        gib(req.usable_memory())
    );
    let t = &e.time;
    println!(
        "best layout, step {:.3} s: compute {:.3}, tensor-parallel all-reduces {:.3}, \
         pipeline sends {:.3}, bubble {:.3}, data-parallel reduction {:.3}, optimizer {:.3}",
        t.total(),
        t.compute_s,
        t.tensor_parallel_s,
        t.pipeline_sends_s,
        t.bubble_s,
        t.data_parallel_s,
        t.optimizer_s
    );
}
