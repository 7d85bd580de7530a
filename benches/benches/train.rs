//! Training-step throughput on CPU: forward + backward + global-norm clip +
//! AdamW for the `small` config (6 layers, d=384, 6 heads, T=256, vocab 8192,
//! B=4) and GPT-2 124M (T=1024, B=1), in f32 and bf16 (kiln's mixed-precision
//! policy), side by side with PyTorch CPU (same model, same threads; bf16 rows
//! under `torch.autocast(bfloat16)`) through benches/peers/train_step_torch.py
//! when python3 with torch is present. The step is the trainer's: the loss
//! and the norm stay on the backend and one host read ends the step.
//!
//! criterion times the `small` step (throughput in tokens as "elem/s"); the
//! summary after it times both configs directly (median of a few steps; a
//! criterion run of GPT-2 124M would take many minutes on a small machine)
//! and prints tokens/s, the kiln/PyTorch ratio, achieved GFLOP/s against a
//! measured 1024^3 GEMM, and peak RSS.
//!
//! FLOPs per token: 6N + 12·L·C·T (PaLM appendix B / nanoGPT
//! `estimate_mfu`: N = parameters without the position table, attention
//! counted as full T x T, forward + backward).
//!
//! Environment: KILN_THREADS (default: all cores), KILN_BENCH_STEPS (timed
//! steps in the summary, default 3), KILN_BENCH_SKIP_GPT2=1, KILN_BENCH_NO_PEER=1,
//! KILN_BENCH_PRECISIONS (default "f32,bf16").

use std::process::Command;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use kiln_abi::stats::{STAT_LOSS, STAT_SLOTS};
use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, MatmulArgs};
use kiln_model::{Gpt, GptConfig, Precision};
use kiln_optim::{grad_norm_on_backend, AdamW, AdamWConfig, ParamRef};

struct Case {
    name: &'static str,
    vocab: usize,
    batch: usize,
    seq: usize,
}

const SMALL: Case = Case {
    name: "small",
    vocab: 8192,
    batch: 4,
    seq: 256,
};
const GPT2: Case = Case {
    name: "gpt2-124m",
    vocab: 50257,
    batch: 1,
    seq: 1024,
};

fn threads() -> usize {
    std::env::var("KILN_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A model, its optimizer and one fixed batch.
struct Step {
    be: BackendBox,
    model: Gpt,
    opt: AdamW,
    refs: Vec<ParamRef>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    case: &'static Case,
    stats: BufId,
    loss_slot: BufId,
}

impl Step {
    fn new(case: &'static Case, precision: Precision) -> Step {
        let mut be = kiln_tensor::cpu_backend(Some(threads()));
        let mut cfg = GptConfig::preset(case.name, case.vocab).unwrap();
        cfg.max_seq_len = case.seq;
        let mut model = Gpt::new(&mut be, cfg, 0).unwrap();
        model.set_precision(&mut be, precision).unwrap();
        let refs: Vec<ParamRef> = model
            .params()
            .iter()
            .map(|p| ParamRef {
                value: p.value,
                grad: p.grad.expect("a trainable parameter has a gradient buffer"),
                value_16: p.value_16,
                len: p.shape.iter().product(),
                decay: p.decay,
            })
            .collect();
        let stats = be.alloc_buf(DType::F32, STAT_SLOTS).unwrap();
        let loss_slot = be.view_of(stats, STAT_LOSS, 1).unwrap();
        let opt = AdamW::new(&mut be, &refs, AdamWConfig::default()).unwrap();
        let n = case.batch * case.seq;
        let mut x = 12345u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % case.vocab as u64) as u32
        };
        let tokens: Vec<u32> = (0..n).map(|_| next()).collect();
        let targets: Vec<u32> = (0..n).map(|_| next()).collect();
        Step {
            be,
            model,
            opt,
            refs,
            tokens,
            targets,
            case,
            stats,
            loss_slot,
        }
    }

    fn run(&mut self) -> f32 {
        let (b, t) = (self.case.batch, self.case.seq);
        self.model.zero_grad(&mut self.be).unwrap();
        self.be.zero(self.stats).ok_or_err().unwrap();
        self.model
            .forward_loss_into(
                &mut self.be,
                &self.tokens,
                &self.targets,
                b,
                t,
                1.0,
                self.loss_slot,
            )
            .unwrap();
        self.model.backward(&mut self.be, 1.0).unwrap();
        grad_norm_on_backend(&mut self.be, &self.refs, self.stats, Some(1.0), 1.0).unwrap();
        self.opt
            .step_controlled(&mut self.be, &self.refs, 3e-4, self.stats)
            .unwrap();
        let stats = self.be.download_f32(self.stats).unwrap();
        self.opt.finish_step(true);
        stats[STAT_LOSS]
    }

    fn flops_per_token(&self) -> f64 {
        let c = &self.model.config;
        let n = c.num_params() - c.max_seq_len * c.n_embd;
        6.0 * n as f64 + 12.0 * (c.n_layer * c.n_embd * self.case.seq) as f64
    }
}

fn precisions() -> Vec<Precision> {
    std::env::var("KILN_BENCH_PRECISIONS")
        .unwrap_or_else(|_| "f32,bf16".into())
        .split(',')
        .map(|p| Precision::parse(p.trim()).unwrap())
        .collect()
}

fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements((SMALL.batch * SMALL.seq) as u64));
    for precision in precisions() {
        let mut step = Step::new(&SMALL, precision);
        g.bench_function(format!("small B=4 T=256 {precision}"), |b| {
            b.iter(|| step.run())
        });
    }
    g.finish();
}

criterion_group!(benches, train_step);

/// Median seconds per step over `steps` steps after one warm-up step.
fn time_steps(step: &mut Step, steps: usize) -> f64 {
    step.run();
    let mut times: Vec<f64> = (0..steps)
        .map(|_| {
            let t0 = Instant::now();
            step.run();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Peak resident memory of this process so far (Linux), MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// GFLOP/s of one 1024x1024x1024 f32 matmul on the backend (best of 5).
fn gemm_peak() -> f64 {
    let mut be = kiln_tensor::cpu_backend(Some(threads()));
    let n = 1024;
    let a = be.from_f32(&vec![0.5; n * n]).unwrap();
    let b = be.from_f32(&vec![0.25; n * n]).unwrap();
    let out = be.alloc_buf(kiln_abi::DType::F32, n * n).unwrap();
    let args = MatmulArgs {
        trans_b: true,
        ..MatmulArgs::new(out, a, b, n, n, n)
    };
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            be.matmul(args).ok_or_err().unwrap();
            2.0 * (n * n * n) as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Runs the PyTorch peer; None when python3/torch is missing or it fails.
fn torch_peer(case: &Case, steps: usize, precision: Precision) -> Option<serde_json::Value> {
    if std::env::var("KILN_BENCH_NO_PEER").is_ok() {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/train_step_torch.py");
    let out = Command::new("python3")
        .args([
            script,
            "--config",
            case.name,
            "--vocab",
            &case.vocab.to_string(),
            "--batch",
            &case.batch.to_string(),
            "--seq",
            &case.seq.to_string(),
            "--threads",
            &threads().to_string(),
            "--warmup",
            "1",
            "--steps",
            &steps.to_string(),
            "--precision",
            precision.name(),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "PyTorch peer skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.lines().last()?).ok()
}

fn summary() {
    let steps: usize = std::env::var("KILN_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let peak = gemm_peak();
    println!(
        "\ntrain step summary ({} threads, {steps} timed steps; GEMM 1024^3: {peak:.1} GFLOP/s)",
        threads()
    );
    let mut cases = vec![&SMALL];
    if std::env::var("KILN_BENCH_SKIP_GPT2").is_err() {
        cases.push(&GPT2);
    }
    for case in cases {
        for precision in precisions() {
            let mut step = Step::new(case, precision);
            let secs = time_steps(&mut step, steps);
            let tok_s = (case.batch * case.seq) as f64 / secs;
            let gflops = tok_s * step.flops_per_token() / 1e9;
            // VmHWM is the process's peak so far: run one precision per process
            // (KILN_BENCH_PRECISIONS) for a per-policy memory figure.
            let rss = peak_rss_mib().unwrap_or(f64::NAN);
            drop(step);
            println!(
            "kiln    {:<10} {precision:<4} B={} T={:<5} {:>9.1} tok/s  {:>7.3} s/step  {:>6.1} GFLOP/s ({:.0}% of GEMM)  peak RSS {:.0} MiB",
            case.name, case.batch, case.seq, tok_s, secs, gflops, 100.0 * gflops / peak, rss
        );
            if let Some(p) = torch_peer(case, steps, precision) {
                let pt = p["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                let prss = p["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
                println!(
                "PyTorch {:<10} {precision:<4} B={} T={:<5} {:>9.1} tok/s  {:>7.3} s/step  {:>6.1} GFLOP/s  peak RSS {:.0} MiB  (torch {})",
                case.name,
                case.batch,
                case.seq,
                pt,
                p["step_s"].as_f64().unwrap_or(f64::NAN),
                pt * Step::flops_for(case) / 1e9,
                prss,
                p["torch"].as_str().unwrap_or("?")
            );
                println!(
                    "ratio kiln/PyTorch {:<10} {precision:<4} {:.2}x tokens/s",
                    case.name,
                    tok_s / pt
                );
            }
        }
    }
}

impl Step {
    /// FLOPs per token of a case without building the model.
    fn flops_for(case: &Case) -> f64 {
        let c = GptConfig::preset(case.name, case.vocab).unwrap();
        let n = c.num_params() - c.max_seq_len * c.n_embd;
        6.0 * n as f64 + 12.0 * (c.n_layer * c.n_embd * case.seq) as f64
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
