//! [`Policy`]: a causal language model with its tokenizer and chat
//! template, as every alignment method trains it (SFT, DPO, PPO, GRPO) or
//! freezes it (the reference model).
//!
//! On disk a policy is one directory that transformers loads as it is
//! (`AutoModelForCausalLM`, `AutoTokenizer`, `apply_chat_template`,
//! `generate`): the model's `model.safetensors` + `config.json` (Hugging
//! Face GPT-2 format) and `generation_config.json` with the tokenizer's real
//! special-token ids (generation stops at `<|end|>`), `tokenizer.json`, and
//! `tokenizer_config.json` (kiln's chat template) + `special_tokens_map.json`.
//! An open model (a Llama-family directory with its own `chat_template`)
//! keeps its template: it is loaded from, trained with and written back to
//! its `tokenizer_config.json` unchanged.
//! The directory is written under a temporary name and swapped into place,
//! so it is complete or absent.
//!
//! The backend is passed into every call, as for [`Gpt`]: several models
//! (policy, reference, reward) share one backend.

use std::path::{Path, PathBuf};

use kiln_abi::BackendBox;
use kiln_model::{Gpt, HfExtras, SampleOptions, SpecialTokenIds};
use kiln_optim::ParamRef;
use kiln_tokenizer::formats::hf_config;
use kiln_tokenizer::{ChatTemplate, Tokenizer};

use crate::batch::TokenBatch;
use crate::AlignError;

/// The tokenizer file inside a policy / reward-model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub struct Policy {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The special-token ids its directory declares: the tokenizer's
    /// (see [`special_token_ids`]) for a new policy, the directory's when
    /// loaded.
    pub special: SpecialTokenIds,
}

impl Policy {
    /// Pairs a model with a chat tokenizer. The tokenizer needs the chat
    /// special tokens and must fit the model's vocabulary.
    pub fn new(model: Gpt, tokenizer: Tokenizer) -> Result<Policy, AlignError> {
        let template = ChatTemplate::from_tokenizer(&tokenizer)?;
        Policy::with_template(model, tokenizer, template)
    }

    /// Pairs a model with a tokenizer and the chat template it was
    /// instruction-tuned with (an open model's own, or kiln's).
    pub fn with_template(
        model: Gpt,
        tokenizer: Tokenizer,
        template: ChatTemplate,
    ) -> Result<Policy, AlignError> {
        let (tv, mv) = (tokenizer.vocab_size(), model.config.vocab_size);
        if tv > mv {
            return Err(AlignError::Config(format!(
                "the tokenizer has {tv} tokens but the model's vocabulary is {mv}; use the \
                 tokenizer the model was pretrained with"
            )));
        }
        let special = special_token_ids(&tokenizer, &template);
        Ok(Policy {
            model,
            tokenizer,
            template,
            special,
        })
    }

    /// Loads `dir` (a policy directory, or any model checkpoint directory).
    /// The tokenizer is `tokenizer` when given, else `dir/tokenizer.json`.
    pub fn load(
        be: &mut BackendBox,
        dir: &Path,
        tokenizer: Option<&Path>,
    ) -> Result<Policy, AlignError> {
        let tok = load_tokenizer(dir, tokenizer)?;
        let template = ChatTemplate::for_model_dir(dir, &tok)?;
        let loaded = Gpt::load_pretrained_with(be, dir, &[])?;
        Policy::from_loaded(loaded.model, tok, template, loaded.special)
    }

    /// [`Policy::load`] with every weight frozen (no gradient buffers): the
    /// base of a LoRA run, which then allocates none for the base at all.
    pub fn load_frozen(
        be: &mut BackendBox,
        dir: &Path,
        tokenizer: Option<&Path>,
    ) -> Result<Policy, AlignError> {
        let tok = load_tokenizer(dir, tokenizer)?;
        let template = ChatTemplate::for_model_dir(dir, &tok)?;
        let loaded = Gpt::load_pretrained_frozen_with(be, dir, &[])?;
        Policy::from_loaded(loaded.model, tok, template, loaded.special)
    }

    /// [`Policy::with_template`] keeping the special-token ids a directory
    /// declared (an old kiln directory declares none: the tokenizer's are
    /// used).
    pub(crate) fn from_loaded(
        model: Gpt,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        special: SpecialTokenIds,
    ) -> Result<Policy, AlignError> {
        let mut p = Policy::with_template(model, tokenizer, template)?;
        if special != SpecialTokenIds::default() {
            p.special = special;
        }
        Ok(p)
    }

    /// Writes `dir` (model + tokenizer files), replacing it atomically.
    pub fn save(&self, be: &mut BackendBox, dir: &Path) -> Result<(), AlignError> {
        save_dir_with(dir, |tmp| self.write_into(be, tmp, &self.hf_extras()))
    }

    /// What a policy directory holds beside the weights: the special-token
    /// ids, tokenizer_config.json (chat template) and special_tokens_map.json.
    pub(crate) fn hf_extras(&self) -> HfExtras {
        let json = |v: serde_json::Value| {
            serde_json::to_vec_pretty(&v).expect("a JSON value always serialises")
        };
        // An open model's tokenizer files go back as they came: its
        // template and special tokens are what its users' tools expect.
        let (config, map) = match self.template.model_config() {
            Some(config) => (
                config.clone(),
                hf_config::special_tokens_map_of(self.template.tokens()),
            ),
            None => (
                hf_config::tokenizer_config(&self.tokenizer, self.model.config.max_seq_len),
                hf_config::special_tokens_map(&self.tokenizer),
            ),
        };
        HfExtras {
            special: self.special.clone(),
            files: vec![
                (hf_config::TOKENIZER_CONFIG_FILE.to_string(), json(config)),
                (hf_config::SPECIAL_TOKENS_MAP_FILE.to_string(), json(map)),
            ],
            ..HfExtras::default()
        }
    }

    /// Writes the model files (with `extras`) and tokenizer.json into an
    /// existing `dir` (for directories holding more, like a reward model's).
    pub(crate) fn write_into(
        &self,
        be: &mut BackendBox,
        dir: &Path,
        extras: &HfExtras,
    ) -> Result<(), AlignError> {
        // save_pretrained replaces its directory: give it a subdirectory
        // and move the files up.
        let model_dir = dir.join(".model");
        self.model.save_pretrained_with(be, &model_dir, extras)?;
        for entry in std::fs::read_dir(&model_dir).map_err(|e| AlignError::io(&model_dir, e))? {
            let entry = entry.map_err(|e| AlignError::io(&model_dir, e))?;
            let to = dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(|e| AlignError::io(&to, e))?;
        }
        std::fs::remove_dir(&model_dir).map_err(|e| AlignError::io(&model_dir, e))?;
        let tok_path = dir.join(TOKENIZER_FILE);
        kiln_tokenizer::formats::hf::save(&self.tokenizer, &tok_path).map_err(|e| {
            AlignError::Tokenizer {
                path: tok_path.clone(),
                problem: e.to_string(),
            }
        })
    }

    /// The model's context length (positions).
    pub fn max_seq_len(&self) -> usize {
        self.model.config.max_seq_len
    }

    /// The id used to pad batches (`<|end|>`; padding is never attended
    /// to by real positions nor learned).
    pub fn pad_id(&self) -> u32 {
        self.template.end_id()
    }

    /// The model's parameters for an optimizer.
    pub fn param_refs(&self) -> Vec<ParamRef> {
        param_refs(&self.model)
    }

    /// Runs the model on `batch` (next-token layout) and returns each
    /// position's log-probability of its target, `[b*t]`, 0 where the
    /// target is ignored. Activations are kept for
    /// [`Policy::backward_logprobs`].
    pub fn token_logprobs(
        &mut self,
        be: &mut BackendBox,
        batch: &TokenBatch,
    ) -> Result<Vec<f32>, AlignError> {
        let losses =
            self.model
                .forward_token_losses(be, &batch.tokens, &batch.targets, batch.b, batch.t)?;
        Ok(losses
            .iter()
            .zip(&batch.targets)
            .map(|(&l, &y)| if batch_counts(y) { -l } else { 0.0 })
            .collect())
    }

    /// Summed log-probability of each row's learned tokens, `[b]` (e.g. a
    /// completion's `log π(y|x)`). Activations are kept as for
    /// [`Policy::token_logprobs`].
    pub fn sequence_logprobs(
        &mut self,
        be: &mut BackendBox,
        batch: &TokenBatch,
    ) -> Result<Vec<f32>, AlignError> {
        let lp = self.token_logprobs(be, batch)?;
        Ok(batch.sum_counted_per_row(&lp))
    }

    /// `grads += Σ_i dloss_dlogp[i] · ∂ log p_i / ∂θ` for the last
    /// [`Policy::token_logprobs`] / [`Policy::sequence_logprobs`] call;
    /// `dloss_dlogp` is `[b*t]` (positions without a target are ignored).
    /// For a sequence-level gradient `g_r` put `g_r` on every counted
    /// position of row `r`.
    pub fn backward_logprobs(
        &mut self,
        be: &mut BackendBox,
        dloss_dlogp: &[f32],
    ) -> Result<(), AlignError> {
        // loss_i = -log p_i, so d/dθ of Σ g_i log p_i is Σ (-g_i) dloss_i/dθ.
        let weights: Vec<f32> = dloss_dlogp.iter().map(|&g| -g).collect();
        self.model.backward_weighted(be, &weights)?;
        Ok(())
    }

    /// Samples an assistant reply to `prompt` (ids ending with
    /// `<|assistant|>`); stops after `<|end|>` unless `opts.stop_token`
    /// says otherwise. Returns the new ids.
    pub fn generate(
        &mut self,
        be: &mut BackendBox,
        prompt: &[u32],
        opts: &SampleOptions,
    ) -> Result<Vec<u32>, AlignError> {
        let opts = SampleOptions {
            stop_token: opts.stop_token.or(Some(self.template.end_id())),
            ..opts.clone()
        };
        Ok(self.model.generate(be, prompt, &opts)?)
    }

    /// Frees the model's backend buffers.
    pub fn release(self, be: &mut BackendBox) -> Result<(), AlignError> {
        self.model.release(be)?;
        Ok(())
    }
}

/// The ids a chat model's directory declares. kiln's: `<|endoftext|>` is
/// bos and pad, generation stops at `<|end|>` (config.json's eos) or
/// `<|endoftext|>`. An open model's: its template's bos and pad, and
/// generation stops at the end of a turn or at its eos.
pub fn special_token_ids(tok: &Tokenizer, template: &ChatTemplate) -> SpecialTokenIds {
    if !template.is_kiln() {
        let id = |t: &Option<String>| t.as_deref().and_then(|t| tok.special_id(t));
        let tokens = template.tokens();
        let mut eos = vec![template.end_id()];
        eos.extend(id(&tokens.eos_token).filter(|&e| e != template.end_id()));
        return SpecialTokenIds {
            bos: id(&tokens.bos_token),
            eos,
            pad: id(&tokens.pad_token),
        };
    }
    let eot = tok.special_id(kiln_tokenizer::ENDOFTEXT);
    SpecialTokenIds {
        bos: eot,
        eos: std::iter::once(template.end_id()).chain(eot).collect(),
        pad: eot,
    }
}

fn batch_counts(target: u32) -> bool {
    target != crate::batch::IGNORE
}

/// [`ParamRef`]s of what `model` trains, in order: every parameter
/// ([`Gpt::params`]), or under LoRA the adapters alone (the base is frozen:
/// no optimizer state, never updated).
pub fn param_refs(model: &Gpt) -> Vec<ParamRef> {
    model
        .trainable_params()
        .iter()
        .map(|p| ParamRef {
            value: p.value,
            grad: p.grad.expect("a trainable parameter has a gradient buffer"),
            value_16: p.value_16,
            len: p.shape.iter().product(),
            decay: p.decay,
        })
        .collect()
}

/// `tokenizer` if given, else `dir/tokenizer.json`; a missing file names the
/// `--tokenizer` fix.
pub fn load_tokenizer(dir: &Path, tokenizer: Option<&Path>) -> Result<Tokenizer, AlignError> {
    let path: PathBuf = match tokenizer {
        Some(p) => p.to_path_buf(),
        None => {
            let p = dir.join(TOKENIZER_FILE);
            if !p.is_file() {
                return Err(AlignError::Tokenizer {
                    path: p,
                    problem: "not found; the model directory has no tokenizer, so pass \
                              --tokenizer FILE (the tokenizer.json it was pretrained with)"
                        .into(),
                });
            }
            p
        }
    };
    kiln_tokenizer::formats::load(&path).map_err(|e| AlignError::Tokenizer {
        path: path.clone(),
        problem: e.to_string(),
    })
}

/// Writes a directory atomically: `fill` writes into a fresh staging
/// directory beside `dir`, which then replaces `dir`.
pub(crate) fn save_dir_with(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), AlignError>,
) -> Result<(), AlignError> {
    let name = dir
        .file_name()
        .ok_or_else(|| AlignError::format(dir, "the output path has no directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| AlignError::io(&parent, e))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.saving-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| AlignError::io(&tmp, e))?;
        fill(&tmp)?;
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| AlignError::io(dir, e))?;
        }
        kiln_stdx::fs::rename_dir_atomic(&tmp, dir).map_err(|e| AlignError::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{prompt_completion, LmSequence};
    use crate::testutil::{chat_tokenizer, tiny_policy};
    use kiln_abi::BackendExt;
    use kiln_model::GptConfig;

    fn pair_batch(p: &Policy) -> TokenBatch {
        let prompt = p.tokenizer.encode_ordinary("Name a red fruit.");
        let (a, la) = prompt_completion(&prompt, &p.tokenizer.encode_ordinary("An apple."));
        let (b, lb) = prompt_completion(&prompt[..3], &p.tokenizer.encode_ordinary("Hello."));
        TokenBatch::next_token(
            &[
                LmSequence {
                    ids: &a,
                    learn: &la,
                },
                LmSequence {
                    ids: &b,
                    learn: &lb,
                },
            ],
            p.pad_id(),
        )
        .unwrap()
    }

    #[test]
    fn token_logprobs_are_the_log_softmax_of_the_logits() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut p = tiny_policy(&mut be, 4, 32);
        let batch = pair_batch(&p);
        let lp = p.token_logprobs(&mut be, &batch).unwrap();
        let logits = p.model.logits(&mut be).unwrap();
        let v = p.model.config.vocab_size;
        for i in 0..batch.b * batch.t {
            if !batch.is_counted(i) {
                assert_eq!(lp[i], 0.0);
                continue;
            }
            let row = &logits[i * v..(i + 1) * v];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let want = row[batch.targets[i] as usize] as f64 - lse;
            assert!(
                (lp[i] as f64 - want).abs() < 1e-4,
                "pos {i}: {} vs {want}",
                lp[i]
            );
        }
        let seq = p.sequence_logprobs(&mut be, &batch).unwrap();
        let by_hand = batch.sum_counted_per_row(&lp);
        assert_eq!(seq, by_hand);
    }

    #[test]
    fn backward_logprobs_matches_finite_differences() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let mut p = tiny_policy(&mut be, 8, 32);
        let batch = pair_batch(&p);
        // objective: 0.5 logp(row 0) - 2 logp(row 1)
        let g_row = [0.5f32, -2.0];
        let objective = |p: &mut Policy, be: &mut BackendBox| -> f64 {
            let s = p.sequence_logprobs(be, &batch).unwrap();
            g_row[0] as f64 * s[0] as f64 + g_row[1] as f64 * s[1] as f64
        };
        p.model.zero_grad(&mut be).unwrap();
        p.sequence_logprobs(&mut be, &batch).unwrap();
        let g: Vec<f32> = (0..batch.b * batch.t).map(|i| g_row[i / batch.t]).collect();
        p.backward_logprobs(&mut be, &g).unwrap();
        let refs = p.param_refs();
        let lnf_b = refs.len() - 1;
        let grad = be.download_f32(refs[lnf_b].grad).unwrap();
        let value = be.download_f32(refs[lnf_b].value).unwrap();
        for j in [0, 7, 33] {
            let h = 1e-2f32;
            let mut v = value.clone();
            v[j] += h;
            be.upload_f32(refs[lnf_b].value, &v).unwrap();
            let up = objective(&mut p, &mut be);
            v[j] = value[j] - h;
            be.upload_f32(refs[lnf_b].value, &v).unwrap();
            let down = objective(&mut p, &mut be);
            be.upload_f32(refs[lnf_b].value, &value).unwrap();
            let fd = (up - down) / (2.0 * h as f64);
            assert!(
                (fd - grad[j] as f64).abs() < 2e-3 + 2e-2 * fd.abs(),
                "ln_f.bias[{j}]: fd {fd} vs {}",
                grad[j]
            );
        }
    }

    #[test]
    fn save_load_round_trip_keeps_weights_and_tokenizer() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let p = tiny_policy(&mut be, 5, 32);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("policy");
        p.save(&mut be, &out).unwrap();
        let back = Policy::load(&mut be, &out, None).unwrap();
        assert_eq!(
            back.model.read_params(&mut be).unwrap(),
            p.model.read_params(&mut be).unwrap()
        );
        assert_eq!(back.template, p.template);
        let text = "What is the capital of France?";
        assert_eq!(
            back.tokenizer.encode_ordinary(text),
            p.tokenizer.encode_ordinary(text)
        );
        // no stray staging directories are left behind
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["policy".to_string()]);
        let e = Policy::load(&mut be, dir.path(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--tokenizer"), "{e}");
    }

    #[test]
    fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let tok = chat_tokenizer();
        let cfg = GptConfig::new(tok.vocab_size() - 1, 16, 1, 1, 8);
        let model = Gpt::new(&mut be, cfg, 1).unwrap();
        let e = Policy::new(model, tok).err().unwrap().to_string();
        assert!(e.contains("vocabulary"), "{e}");
    }
}
