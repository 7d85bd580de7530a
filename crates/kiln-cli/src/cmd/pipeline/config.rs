//! The pipeline's settings: built-in defaults (full or `--quick`), with a
//! TOML file layered on top. Only the keys a file names change; a key the
//! settings do not have is refused with the file's name, so a typo cannot
//! silently run the defaults.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::align::AlignPlan;

/// Pretraining settings; part of every stage's fingerprint from pretraining on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct Plan {
    pub vocab_size: usize,
    pub model: String,
    pub steps: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f32,
    pub warmup: u64,
    pub sample_tokens: usize,
    /// Pretraining's precision policy: "f32", "bf16" or "f16". Left out of
    /// the fingerprint when f32, so earlier run directories keep their stages.
    #[serde(default = "f32_precision", skip_serializing_if = "is_f32")]
    pub precision: String,
}

fn f32_precision() -> String {
    "f32".into()
}

fn is_f32(p: &str) -> bool {
    p == "f32"
}

impl Plan {
    /// Refuses settings pretraining could not run with, before any stage
    /// runs: the checks `kiln pretrain` makes, on the config the pipeline
    /// builds from these settings.
    pub fn validate(&self) -> Result<()> {
        let mut c = kiln_train::TrainConfig::with_model(&self.model, self.vocab_size, self.seq_len);
        c.steps = self.steps;
        c.batch_size = self.batch_size;
        c.lr = self.lr;
        c.min_lr = self.lr / 10.0;
        c.warmup = self.warmup;
        c.validate().map_err(|e| anyhow!("[pretrain] {e}"))?;
        let model = kiln_model::GptConfig::preset(&self.model, self.vocab_size)
            .map_err(|e| anyhow!("[pretrain] model: {e}"))?;
        if self.seq_len > model.max_seq_len {
            return Err(anyhow!(
                "[pretrain] seq_len {} is longer than model {:?}'s {} positions; use seq_len {} or less",
                self.seq_len,
                self.model,
                model.max_seq_len,
                model.max_seq_len
            ));
        }
        let floor = 256 + kiln_tokenizer::chat::default_special_tokens().len();
        if self.vocab_size < floor {
            return Err(anyhow!(
                "[pretrain] vocab_size {} is below 256 bytes + the chat special tokens; use at least {floor}",
                self.vocab_size
            ));
        }
        Ok(())
    }

    pub fn new(quick: bool) -> Self {
        if quick {
            Plan {
                vocab_size: 1024,
                model: "tiny".into(),
                steps: 60,
                batch_size: 8,
                seq_len: 64,
                lr: 3e-3,
                warmup: 10,
                sample_tokens: 24,
                precision: f32_precision(),
            }
        } else {
            Plan {
                vocab_size: 4096,
                model: "mini".into(),
                steps: 600,
                batch_size: 16,
                seq_len: 128,
                lr: 2e-3,
                warmup: 50,
                sample_tokens: 48,
                precision: f32_precision(),
            }
        }
    }
}

/// Everything `kiln pipeline` runs with: `[pretrain]` and `[align]`
/// (with `[align.sft]`, `[align.reward]`, `[align.dpo]`, `[align.ppo]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineConfig {
    pub pretrain: Plan,
    pub align: AlignPlan,
}

impl PipelineConfig {
    pub fn defaults(quick: bool) -> Self {
        PipelineConfig {
            pretrain: Plan::new(quick),
            align: AlignPlan::new(quick),
        }
    }

    /// The defaults with `file` (if any) layered on top.
    pub fn load(quick: bool, file: Option<&Path>) -> Result<Self> {
        let defaults = Self::defaults(quick);
        let Some(path) = file else {
            return Ok(defaults);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("config {}: cannot read", path.display()))?;
        let overrides: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow!("config {}: {}", path.display(), e.to_string().trim_end()))?;
        let mut merged = toml::Table::try_from(&defaults).expect("the defaults serialise");
        let user = overrides.clone();
        merge(&mut merged, overrides);
        let config: Self =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let message = e.message().trim_end();
                    anyhow!(
                        "config {}: {}{} (`kiln pipeline --print-config` lists every key)",
                        path.display(),
                        message,
                        where_is(&user, message)
                    )
                })?;
        config
            .pretrain
            .validate()
            .map_err(|e| anyhow!("config {}: {e:#}", path.display()))?;
        config
            .align
            .validate()
            .map_err(|e| anyhow!("config {}: {e:#}", path.display()))?;
        kiln_model::Precision::parse(&config.pretrain.precision)
            .map_err(|e| anyhow!("config {}: [pretrain] precision: {e}", path.display()))?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the settings serialise")
    }
}

/// " in [table]" for the table of `file` holding the key a serde message
/// names (`` unknown field `x` ``, `` invalid type ... for key `x` ``), so
/// the error says where to look; "" when the key is not found.
fn where_is(file: &toml::Table, message: &str) -> String {
    let Some(key) = message.split('`').nth(1) else {
        return String::new();
    };
    fn find(table: &toml::Table, key: &str, path: &mut Vec<String>) -> bool {
        if table.contains_key(key) {
            return true;
        }
        for (name, value) in table {
            if let toml::Value::Table(sub) = value {
                path.push(name.clone());
                if find(sub, key, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = Vec::new();
    if find(file, key, &mut path) && !path.is_empty() {
        format!(" in [{}]", path.join("."))
    } else {
        String::new()
    }
}

/// Layers `top` over `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<PipelineConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        PipelineConfig::load(false, Some(&path))
    }

    #[test]
    fn a_file_changes_only_the_keys_it_names() {
        let c = load_text("[pretrain]\nsteps = 7\n[align.dpo]\nlr = 1e-6\n").unwrap();
        let mut want = PipelineConfig::defaults(false);
        want.pretrain.steps = 7;
        want.align.dpo.lr = 1e-6;
        assert_eq!(c, want);
    }

    #[test]
    fn the_defaults_round_trip_through_their_toml() {
        for quick in [false, true] {
            let d = PipelineConfig::defaults(quick);
            assert_eq!(load_text(&d.to_toml()).unwrap(), d);
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = load_text("[align.dpo]\nlrr = 1e-6\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml") && e.contains("lrr"), "{e}");
        assert!(e.contains("in [align.dpo]"), "{e}");
        let e = load_text("[align]\nrlhf_rounds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml") && e.contains("rlhf_rounds"), "{e}");
        let e = load_text("[pretrain]\nsteps = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml"), "{e}");
        let e = load_text("[pretrain\n").unwrap_err().to_string();
        assert!(e.contains("p.toml"), "{e}");
    }
}
