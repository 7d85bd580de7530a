//! Train step of a SmolLM-135M-shaped Llama (30 layers, d 576, 9 heads / 3
//! kv, SwiGLU 1536, vocab 49152, tied embeddings, rope_theta 10000; random
//! init) on CPU, side by side with PyTorch (transformers' LlamaForCausalLM,
//! peft for LoRA) through benches/peers/train_step_smollm_torch.py, in the
//! same run. Four rows: f32 and bf16 (kiln's mixed precision; PyTorch
//! autocast bf16), each full fine-tuning and LoRA (rank 16, alpha 32, all 7
//! projections, the base frozen). A step is the trainer's: forward + loss +
//! backward + global-norm clip + AdamW, one host read.
//!
//! Each row runs in its own process (this binary again, `--row NAME`), so
//! its peak RSS (VmHWM) is that row's alone; so does each peer run.
//!
//!     cargo xtask bench train_smollm
//!
//! Environment: KILN_THREADS (default 2, both sides), KILN_BENCH_BATCH (1),
//! KILN_BENCH_SEQ (256), KILN_BENCH_STEPS (timed steps after one warm-up,
//! median reported; default 3), KILN_BENCH_ROWS (default
//! "f32-full,bf16-full,f32-lora,bf16-lora"), KILN_BENCH_NO_PEER=1.

use std::process::Command;
use std::time::Instant;

use kiln_abi::stats::{STAT_LOSS, STAT_SLOTS};
use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult};
use kiln_model::{Gpt, GptConfig, LlamaFamily, LoraConfig, LoraTarget, Precision};
use kiln_optim::{grad_norm_on_backend, AdamW, AdamWConfig, ParamRef};

const VOCAB: usize = 49152;
const LORA_RANK: usize = 16;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn threads() -> usize {
    env_usize("KILN_THREADS", 2)
}

/// One row of the table: a precision, full or LoRA.
#[derive(Clone, Copy)]
struct Row {
    precision: Precision,
    lora: bool,
}

impl Row {
    fn parse(s: &str) -> Row {
        let (p, mode) = s
            .trim()
            .split_once('-')
            .expect("rows are PRECISION-full|lora");
        Row {
            precision: Precision::parse(p).expect("f32 or bf16"),
            lora: match mode {
                "full" => false,
                "lora" => true,
                other => panic!("row mode {other:?}: full or lora"),
            },
        }
    }

    fn name(self) -> String {
        let mode = if self.lora { "lora" } else { "full" };
        format!("{}-{mode}", self.precision.name())
    }
}

fn smollm_config(seq: usize) -> GptConfig {
    let mut cfg = GptConfig::new_llama(LlamaFamily::Llama, VOCAB, seq, 30, 9, 3, 576, 1536, true);
    cfg.layer_norm_eps = 1e-5;
    cfg
}

/// A model, its optimizer over what it trains, and one fixed batch.
struct Step {
    be: BackendBox,
    model: Gpt,
    opt: AdamW,
    refs: Vec<ParamRef>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    b: usize,
    t: usize,
    stats: BufId,
    loss_slot: BufId,
}

impl Step {
    fn new(row: Row, b: usize, t: usize) -> Step {
        let mut be = kiln_tensor::cpu_backend(Some(threads()));
        let mut model = Gpt::new(&mut be, smollm_config(t), 0).unwrap();
        model.set_precision(&mut be, row.precision).unwrap();
        if row.lora {
            let cfg = LoraConfig {
                rank: LORA_RANK,
                alpha: 2.0 * LORA_RANK as f32,
                targets: LoraTarget::ALL.to_vec(),
            };
            model.add_lora(&mut be, cfg, 1).unwrap();
        }
        let refs: Vec<ParamRef> = model
            .trainable_params()
            .iter()
            .map(|p| ParamRef {
                value: p.value,
                grad: p.grad.expect("a trainable parameter has a gradient buffer"),
                value_16: p.value_16,
                len: p.len(),
                decay: p.decay,
            })
            .collect();
        let stats = be.alloc_buf(DType::F32, STAT_SLOTS).unwrap();
        let loss_slot = be.view_of(stats, STAT_LOSS, 1).unwrap();
        let opt = AdamW::new(&mut be, &refs, AdamWConfig::default()).unwrap();
        // The same batch as the peer: inputs as labels, shifted by one.
        let mut x = 12345u64;
        let ids: Vec<u32> = (0..b * (t + 1))
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % VOCAB as u64) as u32
            })
            .collect();
        let rows = |off: usize| -> Vec<u32> {
            (0..b)
                .flat_map(|i| ids[i * (t + 1) + off..i * (t + 1) + off + t].to_vec())
                .collect()
        };
        Step {
            tokens: rows(0),
            targets: rows(1),
            be,
            model,
            opt,
            refs,
            b,
            t,
            stats,
            loss_slot,
        }
    }

    fn run(&mut self) -> f32 {
        for r in &self.refs {
            self.be.zero(r.grad).ok_or_err().unwrap();
        }
        self.be.zero(self.stats).ok_or_err().unwrap();
        self.model
            .forward_loss_into(
                &mut self.be,
                &self.tokens,
                &self.targets,
                self.b,
                self.t,
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
}

/// Peak resident memory of this process so far (Linux), MiB.
fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The child: times one row and prints one JSON line.
fn run_row(row: Row) {
    let (b, t, steps) = (
        env_usize("KILN_BENCH_BATCH", 1),
        env_usize("KILN_BENCH_SEQ", 256),
        env_usize("KILN_BENCH_STEPS", 3),
    );
    let mut step = Step::new(row, b, t);
    step.run();
    let mut times = Vec::new();
    let mut loss = f32::NAN;
    for _ in 0..steps {
        let t0 = Instant::now();
        loss = step.run();
        times.push(t0.elapsed().as_secs_f64());
    }
    assert!(loss.is_finite(), "loss {loss}");
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let trainable: usize = step.model.trainable_params().iter().map(|p| p.len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "row": row.name(), "step_s": med, "tokens_per_s": (b * t) as f64 / med,
            "peak_rss_mib": peak_rss_mib(), "trainable_params": trainable, "loss": loss,
        })
    );
}

/// Runs `cmd` and parses the last line of its stdout as JSON.
fn json_of(mut cmd: Command, who: &str) -> Option<serde_json::Value> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{who} failed: {}", err.lines().last().unwrap_or(""));
        return None;
    }
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last()?).ok()
}

fn peer(row: Row) -> Option<serde_json::Value> {
    if std::env::var("KILN_BENCH_NO_PEER").is_ok() {
        return None;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/peers/train_step_smollm_torch.py"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for (k, v) in [
        ("--batch", env_usize("KILN_BENCH_BATCH", 1)),
        ("--seq", env_usize("KILN_BENCH_SEQ", 256)),
        ("--threads", threads()),
        ("--steps", env_usize("KILN_BENCH_STEPS", 3)),
        ("--warmup", 1),
        ("--lora-rank", if row.lora { LORA_RANK } else { 0 }),
    ] {
        cmd.args([k.to_string(), v.to_string()]);
    }
    cmd.args(["--precision", row.precision.name()]);
    json_of(cmd, "PyTorch peer")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--row") {
        return run_row(Row::parse(&args[i + 1]));
    }
    let rows = std::env::var("KILN_BENCH_ROWS")
        .unwrap_or_else(|_| "f32-full,bf16-full,f32-lora,bf16-lora".into());
    println!(
        "SmolLM-135M-shaped train step: B={} T={}, {} threads, {} timed steps (median)",
        env_usize("KILN_BENCH_BATCH", 1),
        env_usize("KILN_BENCH_SEQ", 256),
        threads(),
        env_usize("KILN_BENCH_STEPS", 3)
    );
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>10} {:>8}",
        "row", "kiln tok/s", "kiln MiB", "torch tok/s", "torch MiB", "ratio"
    );
    for row in rows.split(',').map(Row::parse) {
        let mut me = Command::new(std::env::current_exe().unwrap());
        me.args(["--row", &row.name()]);
        let k = json_of(me, "kiln");
        let p = peer(row);
        let f = |v: &Option<serde_json::Value>, key: &str| {
            v.as_ref().and_then(|v| v[key].as_f64()).unwrap_or(f64::NAN)
        };
        println!(
            "{:<10} {:>12.1} {:>10.0} {:>12.1} {:>10.0} {:>7.2}x",
            row.name(),
            f(&k, "tokens_per_s"),
            f(&k, "peak_rss_mib"),
            f(&p, "tokens_per_s"),
            f(&p, "peak_rss_mib"),
            f(&k, "tokens_per_s") / f(&p, "tokens_per_s"),
        );
    }
}
