//! Autoregressive generation with per-layer KV caches, batched.
//!
//! All sequences of a batch advance in lockstep, one position per step, so
//! that one `attention_kv_forward` with a single `t_past` serves them all,
//! whatever their prompt lengths:
//! 1. prefill: positions `0..L_min-1` (`L_min` = shortest prompt) of every
//!    prompt run through the blocks in chunks, filling the caches;
//! 2. steps: at position `p` every sequence feeds one token (its prompt
//!    token while `p` is inside its prompt, else its last sampled token),
//!    and the sequences whose prompt ends at or before `p` sample the next
//!    token from their row of the logits.
//!
//! Every op works row by row (or batch entry by batch entry), so a sequence
//! computes the same numbers alone or in a batch; a finished sequence keeps
//! its row (fed a dummy token) until the whole batch is done.

use kiln_abi::{BackendBox, BackendExt, BufId, DType, EmbeddingArgs, IntoBResult, ROption};

use crate::block::{block_forward, Attention, BlockIo};
use crate::llama_block::llama_block_forward;
use crate::ops::{layernorm, lm_head, rmsnorm, LayerNormIo};
use crate::params::{final_norm_index, lm_head_index, ln_f_index, WPE, WTE};
use crate::rope::Positions;
use crate::sample::sample_token;
use crate::{Gpt, GptConfig, ModelError, Rng, SampleOptions};

/// Positions per prefill call: bounds the activation buffers to
/// `batch * PREFILL_CHUNK` rows whatever the prompt length.
const PREFILL_CHUNK: usize = 64;
/// Bytes of key/value cache one lockstep batch may hold: a batch bigger
/// than this runs in consecutive groups (the ids are the same, since each
/// sequence samples with its own seed), so sampling 10,000 replies does
/// not hold 10,000 caches at once.
const KV_CACHE_BUDGET: usize = 512 << 20;

/// Buffers for up to `batch` sequences of up to `t_max` positions.
pub(crate) struct GenBuffers {
    batch: usize,
    /// Rows (batch x positions) one forward call may run.
    rows: usize,
    t_max: usize,
    tokens: BufId,
    /// Block input/output, alternating between layers.
    x: [BufId; 2],
    residual2: BufId,
    ln: BufId,
    mean: BufId,
    rstd: BufId,
    qkv: BufId,
    atty: BufId,
    proj: BufId,
    fch: BufId,
    fch_gelu: BufId,
    logits: BufId,
    k_cache: Vec<BufId>,
    v_cache: Vec<BufId>,
    all: Vec<BufId>,
}

impl GenBuffers {
    fn new(
        be: &mut BackendBox,
        cfg: &GptConfig,
        batch: usize,
        t_max: usize,
        act: DType,
    ) -> Result<Self, ModelError> {
        let c = cfg.n_embd;
        let rows = batch * PREFILL_CHUNK.min(t_max);
        let mut all = Vec::new();
        let mut buf = |dtype: DType, len: usize| -> Result<BufId, ModelError> {
            let id = be.alloc(dtype, len.max(1)).ok_or_err()?;
            all.push(id);
            Ok(id)
        };
        // The policy's dtype for activations and caches; norm statistics f32.
        let f = act;
        let tokens = buf(DType::U32, rows)?;
        let x = [buf(f, rows * c)?, buf(f, rows * c)?];
        let residual2 = buf(f, rows * c)?;
        let ln = buf(f, rows * c)?;
        let mean = buf(DType::F32, rows)?;
        let rstd = buf(DType::F32, rows)?;
        let qkv = buf(f, rows * cfg.qkv_width())?;
        let atty = buf(f, rows * c)?;
        let proj = buf(f, rows * c)?;
        let fch = buf(f, rows * cfg.mlp_in_width())?;
        let fch_gelu = buf(f, rows * cfg.mlp_act_width())?;
        let logits = buf(f, batch * cfg.padded_vocab_size)?;
        let mut k_cache = Vec::with_capacity(cfg.n_layer);
        let mut v_cache = Vec::with_capacity(cfg.n_layer);
        // Grouped-query attention caches n_kv_head heads, not n_head.
        let kv = cfg.n_kv_head() * cfg.head_dim();
        for _ in 0..cfg.n_layer {
            k_cache.push(buf(f, batch * t_max * kv)?);
            v_cache.push(buf(f, batch * t_max * kv)?);
        }
        Ok(GenBuffers {
            batch,
            rows,
            t_max,
            tokens,
            x,
            residual2,
            ln,
            mean,
            rstd,
            qkv,
            atty,
            proj,
            fch,
            fch_gelu,
            logits,
            k_cache,
            v_cache,
            all,
        })
    }

    fn fits(&self, batch: usize, t_max: usize) -> bool {
        batch <= self.batch && t_max <= self.t_max
    }

    /// Block `l`'s buffers: the two LayerNorms and projections share one
    /// buffer each, input and output alternate between `x[0]` and `x[1]`.
    fn io(&self, l: usize) -> BlockIo {
        BlockIo {
            inp: self.x[l % 2],
            ln1: self.ln,
            ln1_mean: self.mean,
            ln1_rstd: self.rstd,
            qkv: self.qkv,
            atty: self.atty,
            attproj: self.proj,
            residual2: self.residual2,
            ln2: self.ln,
            ln2_mean: self.mean,
            ln2_rstd: self.rstd,
            fch: self.fch,
            fch_gelu: self.fch_gelu,
            fcproj: self.proj,
            out: self.x[(l + 1) % 2],
        }
    }

    pub(crate) fn release(self, be: &mut BackendBox) -> Result<(), ModelError> {
        for id in self.all {
            be.free(id).ok_or_err()?;
        }
        Ok(())
    }
}

impl Gpt {
    /// Continues `prompt` by up to `opts.max_new_tokens` tokens sampled with
    /// [`sample_token`], using a KV cache; returns only the new tokens. Stops
    /// early after `opts.stop_token` (returned) or when the context reaches
    /// `max_seq_len` positions.
    pub fn generate(
        &mut self,
        be: &mut BackendBox,
        prompt: &[u32],
        opts: &SampleOptions,
    ) -> Result<Vec<u32>, ModelError> {
        self.generate_with(be, prompt, opts, |_| true)
    }

    /// [`Gpt::generate`] that hands every new token to `on_token` as soon as
    /// it is sampled (streaming). When `on_token` returns `false` generation
    /// stops after that token, which is still part of the returned tokens.
    pub fn generate_with(
        &mut self,
        be: &mut BackendBox,
        prompt: &[u32],
        opts: &SampleOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, ModelError> {
        check_prompt(&self.config, prompt, None)?;
        let mut out = self.generate_lockstep(be, &[prompt], opts, |_, tok| on_token(tok))?;
        Ok(out.pop().expect("one sequence"))
    }

    /// Continues every prompt (they may differ in length) as
    /// [`Gpt::generate`] would with `opts.seed + i` (wrapping) as the seed of
    /// prompt `i`; returns the new tokens of each prompt, in order.
    /// Sequences run together, one forward per position for the batch, in
    /// groups of at most [`Gpt::lockstep_group`] sequences.
    pub fn generate_batch<P: AsRef<[u32]>>(
        &mut self,
        be: &mut BackendBox,
        prompts: &[P],
        opts: &SampleOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let prompts: Vec<&[u32]> = prompts.iter().map(AsRef::as_ref).collect();
        for (i, prompt) in prompts.iter().enumerate() {
            check_prompt(&self.config, prompt, Some(i))?;
        }
        let group = self.lockstep_group();
        let mut out = Vec::with_capacity(prompts.len());
        for (g, chunk) in prompts.chunks(group).enumerate() {
            let opts = SampleOptions {
                seed: opts.seed.wrapping_add((g * group) as u64),
                ..opts.clone()
            };
            out.extend(self.generate_lockstep(be, chunk, &opts, |_, _| true)?);
        }
        Ok(out)
    }

    /// The most sequences [`Gpt::generate_batch`] runs at once: as many
    /// full-context key/value caches as fit in `KV_CACHE_BUDGET`.
    pub fn lockstep_group(&self) -> usize {
        let c = &self.config;
        let kv = c.n_kv_head() * c.head_dim();
        let per_sequence = 2 * c.n_layer * c.max_seq_len * kv * self.act_dtype().size();
        (KV_CACHE_BUDGET / per_sequence.max(1)).max(1)
    }

    /// The generation loop (see the module docs). `on_token(i, token)` sees
    /// every token sampled for sequence `i`; `false` ends that sequence.
    /// Prompts are validated by the callers.
    fn generate_lockstep(
        &mut self,
        be: &mut BackendBox,
        prompts: &[&[u32]],
        opts: &SampleOptions,
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let n = prompts.len();
        let mut out = vec![Vec::new(); n];
        if n == 0 || opts.max_new_tokens == 0 {
            return Ok(out);
        }
        let cfg = self.config.clone();
        let (v, t_limit) = (cfg.vocab_size, cfg.max_seq_len);
        let len = |i: usize| prompts[i].len();
        let l_min = (0..n).map(len).min().expect("n > 0");
        let l_max = (0..n).map(len).max().expect("n > 0");
        // The last position a token can be fed at: the last new token of the
        // longest prompt is sampled there, never fed.
        let t_needed = (l_max + opts.max_new_tokens - 1).min(t_limit);
        self.ensure_gen_buffers(be, n, t_needed)?;

        let mut rngs: Vec<Rng> = (0..n)
            .map(|i| Rng::new(opts.seed.wrapping_add(i as u64)))
            .collect();
        let mut done = vec![false; n];
        let mut step_tokens = vec![0u32; n];

        // 1. prefill positions 0..l_min-1 (the caches only; no logits).
        let mut start = 0;
        while start + 1 < l_min {
            let end = (start + PREFILL_CHUNK).min(l_min - 1);
            let mut chunk = Vec::with_capacity(n * (end - start));
            for p in prompts {
                chunk.extend_from_slice(&p[start..end]);
            }
            self.gen_blocks(be, &chunk, n, end - start, start)?;
            start = end;
        }
        // 2. one position per step for all sequences.
        for p in l_min - 1..t_limit {
            for ((slot, prompt), sampled) in step_tokens.iter_mut().zip(prompts).zip(&out) {
                // past its prompt a sequence feeds its last token; a
                // finished one is fed anything valid
                *slot = match prompt.get(p) {
                    Some(&tok) => tok,
                    None => sampled.last().copied().unwrap_or(0),
                };
            }
            let logits = self.gen_step(be, &step_tokens, p)?;
            for i in 0..n {
                if done[i] || p + 1 < len(i) {
                    continue;
                }
                let row = &logits[i * cfg.padded_vocab_size..][..v];
                let next = sample_token(row, opts, &mut rngs[i]);
                out[i].push(next);
                let go_on = on_token(i, next);
                // p + 2 would be the context length after feeding `next`.
                done[i] = !go_on
                    || Some(next) == opts.stop_token
                    || out[i].len() == opts.max_new_tokens
                    || p + 1 == t_limit;
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(out)
    }

    fn ensure_gen_buffers(
        &mut self,
        be: &mut BackendBox,
        batch: usize,
        t_max: usize,
    ) -> Result<(), ModelError> {
        if self.gen.as_ref().is_some_and(|g| g.fits(batch, t_max)) {
            return Ok(());
        }
        let (old_batch, old_t) = self.gen.as_ref().map_or((0, 0), |g| (g.batch, g.t_max));
        if let Some(old) = self.gen.take() {
            old.release(be)?;
        }
        let act = self.act_dtype();
        let g = GenBuffers::new(
            be,
            &self.config,
            batch.max(old_batch),
            t_max.max(old_t),
            act,
        )?;
        self.gen = Some(g);
        Ok(())
    }

    /// Runs `tokens` (`[b, t]`, positions `pos0..pos0+t`) through the
    /// blocks; their keys and values join the caches. The output is in
    /// `x[n_layer % 2]`.
    fn gen_blocks(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        b: usize,
        t: usize,
        pos0: usize,
    ) -> Result<(), ModelError> {
        self.prepare_lora(be, b * t)?;
        let cfg = &self.config;
        let g = self.gen.as_ref().expect("allocated by ensure_gen_buffers");
        debug_assert!(b * t <= g.rows && pos0 + t <= g.t_max);
        crate::forward::stage_u32(&mut self.host_u32, tokens, g.rows, 0);
        be.upload_u32(g.tokens, &self.host_u32)?;
        let p = |i: usize| self.params[i].weight();
        be.embedding_forward(EmbeddingArgs {
            out: g.x[0],
            tokens: g.tokens,
            wte: p(WTE),
            wpe: match cfg.llama {
                None => ROption::RSome(p(WPE)),
                Some(_) => ROption::RNone,
            },
            positions: ROption::RNone,
            pos0,
            b,
            t,
            c: cfg.n_embd,
        })
        .ok_or_err()?;
        for l in 0..cfg.n_layer {
            let attention = Attention::Cached {
                k_cache: g.k_cache[l],
                v_cache: g.v_cache[l],
                t_past: pos0,
                t_max: g.t_max,
            };
            match &self.rope {
                None => block_forward(be, cfg, &self.params, l, &g.io(l), attention, b, t)?,
                Some(rope) => llama_block_forward(
                    be,
                    cfg,
                    &self.params,
                    self.lora.as_ref(),
                    rope,
                    l,
                    &g.io(l),
                    attention,
                    Positions::From(pos0),
                    b,
                    t,
                )?,
            }
        }
        Ok(())
    }

    /// Feeds one token per sequence at position `pos` and returns the
    /// padded logits `[b, Vp]` of the next token.
    fn gen_step(
        &mut self,
        be: &mut BackendBox,
        tokens: &[u32],
        pos: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let b = tokens.len();
        self.gen_blocks(be, tokens, b, 1, pos)?;
        let cfg = &self.config;
        let (c, vp) = (cfg.n_embd, cfg.padded_vocab_size);
        let g = self.gen.as_ref().expect("allocated by ensure_gen_buffers");
        let top = g.x[cfg.n_layer % 2];
        let p = |i: usize| self.params[i].weight();
        if cfg.llama.is_some() {
            let norm = p(final_norm_index(cfg));
            rmsnorm(be, g.ln, g.rstd, top, norm, b, c, cfg.layer_norm_eps)?;
        } else {
            let lnf = ln_f_index(cfg);
            let io = LayerNormIo {
                out: g.ln,
                mean: g.mean,
                rstd: g.rstd,
                inp: top,
                weight: p(lnf),
                bias: p(lnf + 1),
            };
            layernorm(be, &io, b, c, cfg.layer_norm_eps)?;
        }
        lm_head(be, g.logits, g.ln, p(lm_head_index(cfg)), b, c, vp)?;
        let mut logits = be.download_widened(g.logits)?;
        logits.truncate(b * vp);
        Ok(logits)
    }
}

/// A prompt generation can continue: non-empty, within the context and
/// the vocabulary. `index` names the prompt of a batch in the message.
fn check_prompt(cfg: &GptConfig, prompt: &[u32], index: Option<usize>) -> Result<(), ModelError> {
    let which = index.map_or("prompt".to_string(), |i| format!("prompt {i}"));
    if prompt.is_empty() {
        return Err(ModelError::Input(format!(
            "generate needs a non-empty prompt ({which} is empty)"
        )));
    }
    if prompt.len() > cfg.max_seq_len {
        return Err(ModelError::Input(format!(
            "{which} of {} tokens exceeds max_seq_len {}",
            prompt.len(),
            cfg.max_seq_len
        )));
    }
    if let Some((pos, &bad)) = prompt
        .iter()
        .enumerate()
        .find(|(_, &x)| x as usize >= cfg.vocab_size)
    {
        return Err(ModelError::Input(format!(
            "{which}: token {bad} at position {pos} is outside the vocabulary (size {})",
            cfg.vocab_size
        )));
    }
    Ok(())
}
