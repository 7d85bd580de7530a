//! The perplexity filter's scorer: a kiln checkpoint and its tokenizer.
//!
//! A document is encoded as pretraining saw it (`<|endoftext|>` first, so its
//! first token is predicted too), cut into windows of the model's context
//! (each window predicts its tokens from at most `max_seq_len` tokens of
//! context, like `kiln eval`), and scored as `exp(mean next-token loss)`.
//! Curation scores documents in parallel: each worker thread borrows its
//! own single-threaded model instance from a pool (small matrices gain
//! nothing from splitting one forward across threads).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use kiln_abi::BackendBox;
use kiln_data::filters::perplexity::DocScorer;
use kiln_model::Gpt;
use kiln_tokenizer::{SpecialPolicy, Tokenizer};

/// Full windows per forward pass (bounds the activation memory).
const WINDOWS_PER_FORWARD: usize = 8;

struct Instance {
    be: BackendBox,
    model: Gpt,
}

pub struct ModelScorer {
    checkpoint: PathBuf,
    /// Each scoring thread opens its own backend (one compute thread each).
    backend: crate::backend::BackendArg,
    tokenizer: Tokenizer,
    eot: Option<u32>,
    pool: Mutex<Vec<Instance>>,
    description: String,
}

impl ModelScorer {
    /// `model` is a checkpoint directory (config.json + model.safetensors)
    /// or a `kiln pretrain` run directory (its newest checkpoint is used).
    pub fn load(
        model: &Path,
        tokenizer: &Path,
        backend: &crate::backend::BackendArg,
    ) -> Result<Self> {
        let checkpoint = resolve_checkpoint(model)?;
        let tok = kiln_tokenizer::formats::load(tokenizer)
            .with_context(|| format!("--perplexity-tokenizer {}", tokenizer.display()))?;
        let first = load_instance(&checkpoint, backend)?;
        let model_vocab = first.model.config.vocab_size;
        if tok.vocab_size() > model_vocab {
            bail!(
                "--perplexity-tokenizer {} has {} tokens but the model {} only {}: \
                 give the tokenizer the model was trained with",
                tokenizer.display(),
                tok.vocab_size(),
                checkpoint.display(),
                model_vocab
            );
        }
        let description = format!(
            "{} [{}] + {} [{}]",
            checkpoint.display(),
            file_stamp(&checkpoint.join("model.safetensors")),
            tokenizer.display(),
            file_stamp(tokenizer)
        );
        Ok(ModelScorer {
            checkpoint,
            backend: backend.clone(),
            eot: tok.special_id(kiln_tokenizer::ENDOFTEXT),
            tokenizer: tok,
            pool: Mutex::new(vec![first]),
            description,
        })
    }

    /// Mean next-token cross-entropy (nats) of `ids[1..]` given what
    /// precedes each token, in windows of the model's context.
    fn mean_loss(&self, ids: &[u32]) -> Result<f64, String> {
        let popped = self.pool.lock().expect("scorer pool poisoned").pop();
        let mut inst = match popped {
            Some(i) => i,
            None => load_instance(&self.checkpoint, &self.backend).map_err(|e| format!("{e:#}"))?,
        };
        let result = window_loss(&mut inst, ids);
        self.pool.lock().expect("scorer pool poisoned").push(inst);
        result
    }
}

impl DocScorer for ModelScorer {
    fn score(&self, text: &str) -> Result<f64, String> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        ids.extend(self.eot);
        self.tokenizer
            .encode_into(text, &SpecialPolicy::all_text(), &mut ids)
            .map_err(|e| e.to_string())?;
        if ids.len() < 2 {
            return Err(
                "too short to score: the tokenizer has no <|endoftext|> to predict the \
                 first token from, and the text is one token"
                    .into(),
            );
        }
        Ok(self.mean_loss(&ids)?.exp())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

fn window_loss(inst: &mut Instance, ids: &[u32]) -> Result<f64, String> {
    let t_max = inst.model.config.max_seq_len;
    let predicted = ids.len() - 1;
    let full = predicted / t_max;
    let mut total = 0f64;
    let mut forward = |start: usize, rows: usize, t: usize| -> Result<(), String> {
        let mut tokens = Vec::with_capacity(rows * t);
        let mut targets = Vec::with_capacity(rows * t);
        for r in 0..rows {
            let s = start + r * t;
            tokens.extend_from_slice(&ids[s..s + t]);
            targets.extend_from_slice(&ids[s + 1..s + t + 1]);
        }
        let mean = inst
            .model
            .forward(&mut inst.be, &tokens, Some(&targets), rows, t)
            .map_err(|e| e.to_string())?
            .expect("a forward with targets returns the loss");
        total += mean as f64 * (rows * t) as f64;
        Ok(())
    };
    let mut w = 0;
    while w < full {
        let rows = (full - w).min(WINDOWS_PER_FORWARD);
        forward(w * t_max, rows, t_max)?;
        w += rows;
    }
    let rest = predicted - full * t_max;
    if rest > 0 {
        forward(full * t_max, 1, rest)?;
    }
    Ok(total / predicted as f64)
}

fn load_instance(checkpoint: &Path, backend: &crate::backend::BackendArg) -> Result<Instance> {
    let mut be = crate::backend::open(backend, Some(1))?;
    let model = Gpt::load_pretrained(&mut be, checkpoint)
        .with_context(|| format!("--perplexity-model {}", checkpoint.display()))?;
    Ok(Instance { be, model })
}

/// A checkpoint directory as given, or a run directory's newest checkpoint.
fn resolve_checkpoint(dir: &Path) -> Result<PathBuf> {
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    match kiln_train::checkpoint::latest_checkpoint(dir) {
        Ok(Some((_, ckpt))) => Ok(ckpt),
        _ => bail!(
            "--perplexity-model {}: neither a checkpoint directory (config.json + \
             model.safetensors) nor a `kiln pretrain` run directory with a checkpoint",
            dir.display()
        ),
    }
}

/// Size and modification time: cheap, and changes when the file does.
fn file_stamp(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!("{} bytes, mtime {mtime}", m.len())
        }
        Err(_) => "missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long document is cut into windows of the model's context; the
    /// full windows share one forward pass, and the score is the
    /// token-weighted mean over the windows, each scored on its own.
    #[test]
    fn long_documents_are_scored_window_by_window() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let config = kiln_model::GptConfig::new(64, 8, 1, 2, 16);
        let model = Gpt::new(&mut be, config, 7).unwrap();
        let mut inst = Instance { be, model };
        // 20 predictions with context 8: windows of 8, 8 and 4 tokens,
        // weighted by their token counts.
        let ids: Vec<u32> = (0..21).map(|i| (i * 7 + 1) % 64).collect();
        let part = |inst: &mut Instance, s: usize, t: usize| {
            inst.model
                .forward(
                    &mut inst.be,
                    &ids[s..s + t],
                    Some(&ids[s + 1..s + t + 1]),
                    1,
                    t,
                )
                .unwrap()
                .unwrap() as f64
                * t as f64
        };
        let expect =
            (part(&mut inst, 0, 8) + part(&mut inst, 8, 8) + part(&mut inst, 16, 4)) / 20.0;
        let got = window_loss(&mut inst, &ids).unwrap();
        assert!((expect - got).abs() < 1e-5, "{expect} vs {got}");
    }
}
