//! The LoRA switches `kiln sft`, `kiln reward` and `kiln dpo` share, and
//! where a LoRA run writes: `OUT/adapter/` in PEFT's format (the base stays
//! where `--model` points; `kiln merge` folds the two into one model).
//! `--adapter DIR` continues training an existing adapter instead of adding
//! fresh ones; [`load_inference_model`] serves the commands that only run a
//! model (chat, generate, eval, judge) with an unmerged adapter on top.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_abi::BackendBox;
use kiln_align::policy::Policy;
use kiln_model::{Gpt, LoraConfig};

/// The adapter directory of a LoRA run.
pub const ADAPTER_DIR: &str = "adapter";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank instead of every weight (Llama,
    /// Mistral, Qwen2 models; GPT-2 is refused). The base weights stay
    /// frozen; the adapters are written to OUT/adapter/ (PEFT's
    /// adapter_config.json + adapter_model.safetensors) instead of OUT/model/.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA's alpha: the update is scaled by alpha/rank (default 2 x rank).
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f32>,
    /// Projections to adapt, comma-separated from q,k,v,o,gate,up,down
    /// (default all seven).
    #[arg(long, requires = "lora_rank")]
    pub lora_targets: Option<String>,
    /// Continue training this PEFT adapter directory (e.g. an earlier run's
    /// OUT/adapter/) on `--model`, its base: rank, alpha and targets come
    /// from its adapter_config.json.
    #[arg(long, conflicts_with = "lora_rank")]
    pub adapter: Option<PathBuf>,
}

impl LoraArgs {
    /// The adapter settings, or `None` for full fine-tuning.
    pub fn config(&self) -> Result<Option<LoraConfig>> {
        let Some(rank) = self.lora_rank else {
            return Ok(None);
        };
        let targets = LoraConfig::parse_targets(
            self.lora_targets
                .as_deref()
                .unwrap_or("q,k,v,o,gate,up,down"),
        )
        .context("--lora-targets")?;
        Ok(Some(LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f32),
            targets,
        }))
    }

    /// Whether the run trains adapters (fresh or continued) rather than
    /// every weight.
    pub fn is_on(&self) -> bool {
        self.lora_rank.is_some() || self.adapter.is_some()
    }

    /// Loads `--model`'s policy: frozen under LoRA (the base then gets no
    /// gradient buffers at all), else trainable.
    pub fn load_policy(
        &self,
        be: &mut BackendBox,
        dir: &Path,
        tokenizer: Option<&Path>,
    ) -> Result<Policy> {
        Ok(if self.is_on() {
            Policy::load_frozen(be, dir, tokenizer)?
        } else {
            Policy::load(be, dir, tokenizer)?
        })
    }

    /// Puts the run's adapters on `model`: `--adapter`'s trained ones, or
    /// fresh ones (B = 0, so the model starts as the base) for `--lora-rank`.
    pub fn apply(&self, be: &mut BackendBox, model: &mut Gpt, seed: u64) -> Result<()> {
        if let Some(dir) = &self.adapter {
            load_adapter(be, model, dir)?;
        } else if let Some(cfg) = self.config()? {
            model
                .add_lora(be, cfg, seed)
                .context("--lora-rank: cannot add adapters to this model")?;
        }
        Ok(())
    }
}

/// Loads the PEFT adapter in `dir` onto `model` (its base).
pub fn load_adapter(be: &mut BackendBox, model: &mut Gpt, dir: &Path) -> Result<()> {
    model.load_lora(be, dir).with_context(|| {
        format!(
            "--adapter {}: cannot load it onto this base model",
            dir.display()
        )
    })
}

/// A model to run, not train: `dir`'s weights loaded frozen, with the PEFT
/// adapter in `adapter` on top when one is given (unmerged: `kiln merge`
/// is not needed to try an adapter out).
pub fn load_inference_model(
    be: &mut BackendBox,
    dir: &Path,
    adapter: Option<&Path>,
) -> Result<Gpt> {
    let mut model = Gpt::load_pretrained_frozen(be, dir)
        .with_context(|| format!("checkpoint {}", dir.display()))?;
    if let Some(adapter) = adapter {
        load_adapter(be, &mut model, adapter)?;
    }
    Ok(model)
}

/// Writes a LoRA run's adapter to `OUT/adapter/`, naming `base` as its base model.
pub fn save_adapter(be: &mut BackendBox, model: &Gpt, out: &Path, base: &Path) -> Result<()> {
    let dir = out.join(ADAPTER_DIR);
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    model
        .save_lora(be, &dir, &base.to_string_lossy())
        .with_context(|| format!("writing {}", dir.display()))
}

/// Parameter counts and memory for a run's summary: what the optimizer
/// trains, what stays frozen, the process's peak resident memory
/// (/proc/self/status `VmHWM`, Linux) and that per trainable parameter.
pub fn memory_figures(model: &Gpt) -> serde_json::Value {
    let count = |ps: &[kiln_model::Param]| ps.iter().map(|p| p.len()).sum::<usize>();
    let trainable = count(model.trainable_params());
    let total = count(model.params()) + count(model.lora_params());
    let peak = peak_rss_bytes();
    serde_json::json!({
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "peak_rss_bytes": peak,
        "peak_rss_bytes_per_trainable_param": peak.map(|b| b as f64 / trainable.max(1) as f64),
    })
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
