//! Autoregressive generation with a per-layer KV cache (batch 1).
//!
//! The prompt runs through the blocks in one call (`attention_kv_forward`
//! with `t_past = 0` fills the caches); every later step runs one new
//! position against the cached keys and values.
//!
//! The Backend ABI addresses buffers from element 0 only (no offsets), so
//! the embedding of position `t_past` and the last row of the prompt are
//! picked with a one-hot selector matmul (`[1, n] @ [n, C]`); multiplying by
//! exact 0s and 1s copies the row bit for bit.

use kiln_abi::abi_stable::std_types::ROption;
use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, MatmulArgs};

use crate::ops::linear;
use crate::params::{layer_index, ln_f_index, slot, WPE, WTE};
use crate::sample::sample_token;
use crate::{Gpt, GptConfig, ModelError, Rng, SampleOptions};

/// Buffers for one sequence of up to `max_seq_len` positions.
pub(crate) struct GenBuffers {
    tokens: BufId,
    enc: BufId,
    x: BufId,
    ln: BufId,
    mean: BufId,
    rstd: BufId,
    qkv: BufId,
    atty: BufId,
    proj: BufId,
    fch: BufId,
    fch_gelu: BufId,
    selector: BufId,
    last: BufId,
    last_ln: BufId,
    logits: BufId,
    k_cache: Vec<BufId>,
    v_cache: Vec<BufId>,
    all: Vec<BufId>,
}

impl GenBuffers {
    fn new(be: &mut BackendBox, cfg: &GptConfig) -> Result<Self, ModelError> {
        let (tm, c) = (cfg.max_seq_len, cfg.n_embd);
        let mut all = Vec::new();
        let mut buf = |dtype: DType, len: usize| -> Result<BufId, ModelError> {
            let id = be.alloc(dtype, len).ok_or_err()?;
            all.push(id);
            Ok(id)
        };
        let f = DType::F32;
        let mut k_cache = Vec::with_capacity(cfg.n_layer);
        let mut v_cache = Vec::with_capacity(cfg.n_layer);
        let tokens = buf(DType::U32, tm)?;
        let enc = buf(f, tm * c)?;
        let x = buf(f, tm * c)?;
        let ln = buf(f, tm * c)?;
        let mean = buf(f, tm)?;
        let rstd = buf(f, tm)?;
        let qkv = buf(f, tm * 3 * c)?;
        let atty = buf(f, tm * c)?;
        let proj = buf(f, tm * c)?;
        let fch = buf(f, tm * 4 * c)?;
        let fch_gelu = buf(f, tm * 4 * c)?;
        let selector = buf(f, tm)?;
        let last = buf(f, c)?;
        let last_ln = buf(f, c)?;
        let logits = buf(f, cfg.padded_vocab_size)?;
        for _ in 0..cfg.n_layer {
            k_cache.push(buf(f, tm * c)?);
            v_cache.push(buf(f, tm * c)?);
        }
        Ok(GenBuffers {
            tokens,
            enc,
            x,
            ln,
            mean,
            rstd,
            qkv,
            atty,
            proj,
            fch,
            fch_gelu,
            selector,
            last,
            last_ln,
            logits,
            k_cache,
            v_cache,
            all,
        })
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
        let cfg = self.config.clone();
        check_prompt(&cfg, prompt, None)?;
        if self.gen.is_none() {
            self.gen = Some(GenBuffers::new(be, &cfg)?);
        }
        let mut rng = Rng::new(opts.seed);
        let mut context = prompt.to_vec();
        let mut out = Vec::new();
        let mut t_past = 0;
        while out.len() < opts.max_new_tokens && context.len() <= cfg.max_seq_len {
            let logits = self.decode_step(be, &context, t_past)?;
            t_past = context.len();
            let next = sample_token(&logits[..cfg.vocab_size], opts, &mut rng);
            out.push(next);
            let go_on = on_token(next);
            if !go_on || Some(next) == opts.stop_token || context.len() == cfg.max_seq_len {
                break;
            }
            context.push(next);
        }
        Ok(out)
    }

    /// Continues every prompt (they may differ in length) as
    /// [`Gpt::generate`] would with `opts.seed + i` (wrapping) as the seed of
    /// prompt `i`; returns the new tokens of each prompt, in order.
    pub fn generate_batch<P: AsRef<[u32]>>(
        &mut self,
        be: &mut BackendBox,
        prompts: &[P],
        opts: &SampleOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        for (i, prompt) in prompts.iter().enumerate() {
            check_prompt(&self.config, prompt.as_ref(), Some(i))?;
        }
        prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let opts = SampleOptions {
                    seed: opts.seed.wrapping_add(i as u64),
                    ..opts.clone()
                };
                self.generate(be, prompt.as_ref(), &opts)
            })
            .collect()
    }

    /// Runs positions `t_past..context.len()` through the model (their keys
    /// and values join the cache) and returns the padded logits of the last one.
    fn decode_step(
        &mut self,
        be: &mut BackendBox,
        context: &[u32],
        t_past: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let cfg = &self.config;
        let (c, nh, tm, eps) = (cfg.n_embd, cfg.n_head, cfg.max_seq_len, cfg.layer_norm_eps);
        let g = self.gen.as_ref().expect("allocated by generate");
        let p = |i: usize| self.params[i].value;
        let t_all = context.len();
        let t_new = t_all - t_past;
        let mut sel = Selector {
            buf: g.selector,
            host: &mut self.host_f32,
            len: tm,
        };

        crate::forward::stage_u32(&mut self.host_u32, context, tm, 0);
        be.upload_u32(g.tokens, &self.host_u32)?;
        if t_past == 0 {
            be.encoder_forward(g.x, g.tokens, p(WTE), p(WPE), 1, t_all, c)
                .ok_or_err()?;
        } else {
            // Embed the whole context, then keep the new rows (t_new == 1 here).
            be.encoder_forward(g.enc, g.tokens, p(WTE), p(WPE), 1, t_all, c)
                .ok_or_err()?;
            sel.select_row(be, g.x, g.enc, t_all - 1, t_all, c)?;
        }
        for l in 0..cfg.n_layer {
            let w = |s: usize| p(layer_index(l, s));
            be.layernorm_forward(
                g.ln,
                g.mean,
                g.rstd,
                g.x,
                w(slot::LN1_W),
                w(slot::LN1_B),
                t_new,
                c,
                eps,
            )
            .ok_or_err()?;
            linear(
                be,
                g.qkv,
                g.ln,
                w(slot::QKV_W),
                Some(w(slot::QKV_B)),
                t_new,
                c,
                3 * c,
            )?;
            be.attention_kv_forward(
                g.atty,
                g.qkv,
                g.k_cache[l],
                g.v_cache[l],
                1,
                t_new,
                t_past,
                tm,
                c,
                nh,
            )
            .ok_or_err()?;
            linear(
                be,
                g.proj,
                g.atty,
                w(slot::ATTN_PROJ_W),
                Some(w(slot::ATTN_PROJ_B)),
                t_new,
                c,
                c,
            )?;
            be.accumulate(g.x, g.proj, t_new * c).ok_or_err()?;
            be.layernorm_forward(
                g.ln,
                g.mean,
                g.rstd,
                g.x,
                w(slot::LN2_W),
                w(slot::LN2_B),
                t_new,
                c,
                eps,
            )
            .ok_or_err()?;
            linear(
                be,
                g.fch,
                g.ln,
                w(slot::FC_W),
                Some(w(slot::FC_B)),
                t_new,
                c,
                4 * c,
            )?;
            be.gelu_forward(g.fch_gelu, g.fch, t_new * 4 * c)
                .ok_or_err()?;
            linear(
                be,
                g.proj,
                g.fch_gelu,
                w(slot::FC_PROJ_W),
                Some(w(slot::FC_PROJ_B)),
                t_new,
                4 * c,
                c,
            )?;
            be.accumulate(g.x, g.proj, t_new * c).ok_or_err()?;
        }
        // Only the last position's logits are needed.
        sel.select_row(be, g.last, g.x, t_new - 1, t_new, c)?;
        let lnf = ln_f_index(cfg);
        be.layernorm_forward(
            g.last_ln,
            g.mean,
            g.rstd,
            g.last,
            p(lnf),
            p(lnf + 1),
            1,
            c,
            eps,
        )
        .ok_or_err()?;
        be.matmul(MatmulArgs {
            out: g.logits,
            a: g.last_ln,
            b: p(WTE),
            bias: ROption::RNone,
            m: 1,
            n: cfg.padded_vocab_size,
            k: c,
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
        })
        .ok_or_err()?;
        Ok(be.download_f32(g.logits)?)
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

/// Picks one row of a `[rows, c]` buffer with a one-hot `[1, rows]` matmul.
struct Selector<'a> {
    buf: BufId,
    host: &'a mut Vec<f32>,
    len: usize,
}

impl Selector<'_> {
    /// `out[0, :] = src[row, :]`.
    fn select_row(
        &mut self,
        be: &mut BackendBox,
        out: BufId,
        src: BufId,
        row: usize,
        rows: usize,
        c: usize,
    ) -> Result<(), ModelError> {
        self.host.clear();
        self.host.resize(self.len, 0.0);
        self.host[row] = 1.0;
        be.upload_f32(self.buf, self.host)?;
        be.matmul(MatmulArgs {
            out,
            a: self.buf,
            b: src,
            bias: ROption::RNone,
            m: 1,
            n: c,
            k: rows,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        })
        .ok_or_err()?;
        Ok(())
    }
}
