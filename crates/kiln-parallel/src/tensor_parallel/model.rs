//! [`TpGpt`]: one rank's shard of a GPT-2 model. Forward returns the mean
//! loss (the same on every rank); backward fills this rank's local
//! gradients, which [`super::gather_params`] turns into the full model's.

use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, MatmulArgs};
use kiln_model::{GptConfig, Param};

use super::block::{block_backward, block_forward, Dims, LayerActs, Scratch};
use super::collectives::{f, Pass};
use super::shard::{check_lens, layer_start, param_layouts};
use super::vocab::{
    embedding_backward, embedding_forward, vocab_parallel_ce_backward, vocab_parallel_ce_forward,
    Lookup, VocabShard,
};
use super::{check_layout, TpError};
use crate::comm::Communicator;
use kiln_model::ops::{layernorm, layernorm_backward, linear, LayerNormIo};

const WTE: usize = 0;
const WPE: usize = 1;

/// One tensor-parallel rank of a GPT-2 model: its shard of every parameter
/// (in [`kiln_model::Gpt::params`] order, local shapes; see
/// [`super::Split`]) with gradient buffers, on its own backend.
pub struct TpGpt {
    pub config: GptConfig,
    tp: usize,
    rank: usize,
    vocab: VocabShard,
    params: Vec<Param>,
    acts: Option<Activations>,
    last: Option<LastForward>,
}

/// The training activations of one batch shape (reallocated when it changes).
struct Activations {
    dims: Dims,
    encoded: BufId,
    layers: Vec<LayerActs>,
    lnf: BufId,
    lnf_mean: BufId,
    lnf_rstd: BufId,
    /// `[rows, vocab.len]`: this rank's logits, then their gradient.
    logits: BufId,
    scratch: Scratch,
}

/// What backward needs from the last forward.
struct LastForward {
    lookup: Lookup,
    targets: Vec<u32>,
    /// This rank's logits on the host (the loss was computed there).
    logits: Vec<f32>,
    lse: Vec<f32>,
    counted: usize,
}

impl TpGpt {
    /// Rank `rank` of `tp`, holding `local` (its shards, e.g.
    /// [`super::shard_params`]`(..)[rank]`).
    pub fn new(
        be: &mut BackendBox,
        config: GptConfig,
        tp: usize,
        rank: usize,
        local: &[Vec<f32>],
    ) -> Result<TpGpt, TpError> {
        check_layout(&config, tp)?;
        if rank >= tp {
            return Err(TpError::Input(format!("rank {rank} of a group of {tp}")));
        }
        let layouts = param_layouts(&config);
        let want = |l: &super::ParamLayout| l.local_shape(tp).iter().product();
        check_lens(&layouts, local, want, &format!("rank {rank}'s shard"))?;
        let mut params = Vec::with_capacity(layouts.len());
        for (l, v) in layouts.iter().zip(local) {
            let shape = l.local_shape(tp);
            params.push(Param {
                name: l.name.clone(),
                decay: shape.len() == 2,
                shape,
                value: be.from_f32(v)?,
                grad: Some(be.alloc_buf(DType::F32, v.len())?),
                value_16: None,
            });
        }
        let vocab = VocabShard::new(config.vocab_size, config.padded_vocab_size, tp, rank);
        Ok(TpGpt {
            config,
            tp,
            rank,
            vocab,
            params,
            acts: None,
            last: None,
        })
    }

    /// Rank `rank` of `tp`, cut from the full parameters (kiln layout,
    /// [`kiln_model::Gpt::read_params`] order).
    pub fn from_full(
        be: &mut BackendBox,
        config: GptConfig,
        tp: usize,
        rank: usize,
        full: &[Vec<f32>],
    ) -> Result<TpGpt, TpError> {
        check_layout(&config, tp)?;
        let layouts = param_layouts(&config);
        check_lens(&layouts, full, |l| l.full_len(), "full model")?;
        let local: Vec<Vec<f32>> = layouts
            .iter()
            .zip(full)
            .map(|(l, v)| l.shard(v, tp, rank.min(tp - 1)))
            .collect();
        TpGpt::new(be, config, tp, rank, &local)
    }

    pub fn tp(&self) -> usize {
        self.tp
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The vocabulary rows this rank holds.
    pub fn vocab_shard(&self) -> VocabShard {
        self.vocab
    }

    /// This rank's parameters (local shapes), for an optimizer.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Runs the model on `tokens` (`[b*t]`) and returns the mean
    /// cross-entropy over the targets `< vocab_size` (others, e.g.
    /// `u32::MAX`, are ignored; 0 when none counts), the same on every rank.
    /// Every rank of the group calls it with the same batch.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        be: &mut BackendBox,
        comm: &mut dyn Communicator,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<f32, TpError> {
        if let Some(last) = self.last.take() {
            last.lookup.release(be)?;
        }
        self.check_call(comm)?;
        self.check_batch(tokens, targets, b, t)?;
        self.ensure_activations(be, b, t)?;
        let cfg = &self.config;
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        let rows = b * t;
        let acts = self.acts.as_ref().expect("allocated above");
        let p = |i: usize| self.params[i].value;

        // Vocab-parallel token embedding (all-reduced), then the replicated
        // position rows, one sequence at a time.
        let lookup = Lookup::new(be, self.vocab, tokens)?;
        embedding_forward(be, comm, &lookup, p(WTE), acts.encoded, c)?;
        for bi in 0..b {
            let row = be.view_of(acts.encoded, bi * t * c, t * c)?;
            let r = be.axpy(row, p(WPE), t * c, 1.0);
            be.free_buf(row)?;
            r.ok_or_err()?;
        }

        for (l, la) in acts.layers.iter().enumerate() {
            let inp = if l == 0 {
                acts.encoded
            } else {
                acts.layers[l - 1].out
            };
            let w = &self.params[layer_start(l)..layer_start(l + 1)];
            block_forward(be, comm, &acts.dims, w, la, &acts.scratch, inp)?;
        }
        let lnf = layer_start(cfg.n_layer);
        let top = acts.layers[cfg.n_layer - 1].out;
        layernorm(
            be,
            &lnf_io(acts, top, p(lnf), p(lnf + 1)),
            rows,
            c,
            cfg.layer_norm_eps,
        )?;

        // The tied lm_head on this rank's wte rows: its slice of the logits.
        f(be, comm, acts.lnf, Pass::Forward)?;
        linear(
            be,
            acts.logits,
            acts.lnf,
            p(WTE),
            None,
            rows,
            c,
            self.vocab.len,
        )?;
        let logits = be.download_f32(acts.logits)?;
        let ce = vocab_parallel_ce_forward(comm, self.vocab, &logits, targets, v)?;

        let (sum, counted) = ce
            .losses
            .iter()
            .zip(targets)
            .filter(|(_, &y)| (y as usize) < v)
            .fold((0f64, 0usize), |(s, n), (&l, _)| (s + l as f64, n + 1));
        self.last = Some(LastForward {
            lookup,
            targets: targets.to_vec(),
            logits,
            lse: ce.lse,
            counted,
        });
        Ok(if counted == 0 {
            0.0
        } else {
            (sum / counted as f64) as f32
        })
    }

    /// `grads += d(loss_scale * mean loss)/d(local params)` for the last
    /// forward. Every rank of the group calls it. Gradients accumulate until
    /// [`TpGpt::zero_grad`].
    pub fn backward(
        &mut self,
        be: &mut BackendBox,
        comm: &mut dyn Communicator,
        loss_scale: f32,
    ) -> Result<(), TpError> {
        self.check_call(comm)?;
        let Some(last) = self.last.take() else {
            return Err(TpError::Input(
                "backward() needs a forward() first (one backward per forward)".into(),
            ));
        };
        let r = self.backward_from(be, comm, &last, loss_scale);
        last.lookup.release(be)?;
        r
    }

    fn backward_from(
        &mut self,
        be: &mut BackendBox,
        comm: &mut dyn Communicator,
        last: &LastForward,
        loss_scale: f32,
    ) -> Result<(), TpError> {
        let cfg = &self.config;
        let (c, v, vl) = (cfg.n_embd, cfg.vocab_size, self.vocab.len);
        let acts = self.acts.as_ref().expect("forward allocated them");
        let (d, s) = (&acts.dims, &acts.scratch);
        let rows = d.rows();
        let p = |i: usize| self.params[i].value;
        let dp = |i: usize| {
            self.params[i]
                .grad
                .expect("TpGpt parameters have gradients")
        };

        // Cross-entropy: local softmax - onehot, weighted for the mean.
        let weight = if last.counted == 0 {
            0.0
        } else {
            loss_scale / last.counted as f32
        };
        let weights = vec![weight; rows];
        let dlogits = vocab_parallel_ce_backward(
            self.vocab,
            &last.logits,
            &last.lse,
            &last.targets,
            &weights,
            v,
        );
        be.upload_f32(acts.logits, &dlogits)?;
        // lm_head: d(wte slice) += dlogits^T @ lnf; d(lnf) is partial (this
        // rank's vocabulary only) until f's backward sums it.
        be.matmul(MatmulArgs {
            trans_a: true,
            beta: 1.0,
            ..MatmulArgs::new(dp(WTE), acts.logits, acts.lnf, vl, c, rows)
        })
        .ok_or_err()?;
        be.matmul(MatmulArgs::new(s.dln, acts.logits, p(WTE), rows, c, vl))
            .ok_or_err()?;
        f(be, comm, s.dln, Pass::Backward)?;

        let lnf = layer_start(cfg.n_layer);
        let top = acts.layers[cfg.n_layer - 1].out;
        be.zero(s.dres).ok_or_err()?;
        let io = lnf_io(acts, top, p(lnf), p(lnf + 1));
        layernorm_backward(
            be,
            s.dres,
            Some(dp(lnf)),
            Some(dp(lnf + 1)),
            s.dln,
            &io,
            rows,
            c,
        )?;

        for l in (0..cfg.n_layer).rev() {
            let inp = if l == 0 {
                acts.encoded
            } else {
                acts.layers[l - 1].out
            };
            let w = &self.params[layer_start(l)..layer_start(l + 1)];
            block_backward(be, comm, d, w, &acts.layers[l], s, inp)?;
        }

        // Embeddings: dres is the same on every rank (g's backward is the
        // identity), so wpe's gradient is replicated and each rank scatters
        // its own tokens' rows into its wte slice.
        let t = d.t;
        for bi in 0..d.b {
            let row = be.view_of(s.dres, bi * t * c, t * c)?;
            let r = be.axpy(dp(WPE), row, t * c, 1.0);
            be.free_buf(row)?;
            r.ok_or_err()?;
        }
        embedding_backward(be, &last.lookup, dp(WTE), s.dres, c)
    }

    /// Sets every local gradient to zero.
    pub fn zero_grad(&mut self, be: &mut BackendBox) -> Result<(), TpError> {
        for g in self.params.iter().filter_map(|p| p.grad) {
            be.zero(g).ok_or_err()?;
        }
        Ok(())
    }

    /// This rank's parameter values (local shapes, [`TpGpt::params`] order).
    pub fn read_params(&self, be: &mut BackendBox) -> Result<Vec<Vec<f32>>, TpError> {
        self.params
            .iter()
            .map(|p| Ok(be.download_f32(p.value)?))
            .collect()
    }

    /// This rank's gradients (local shapes, [`TpGpt::params`] order).
    pub fn read_grads(&self, be: &mut BackendBox) -> Result<Vec<Vec<f32>>, TpError> {
        self.params
            .iter()
            .map(|p| match p.grad {
                Some(g) => Ok(be.download_f32(g)?),
                None => Ok(Vec::new()),
            })
            .collect()
    }

    /// Frees every backend buffer this rank holds.
    pub fn release(mut self, be: &mut BackendBox) -> Result<(), TpError> {
        if let Some(last) = self.last.take() {
            last.lookup.release(be)?;
        }
        if let Some(acts) = self.acts.take() {
            acts.release(be)?;
        }
        for p in self.params.drain(..) {
            be.free_buf(p.value)?;
            if let Some(g) = p.grad {
                be.free_buf(g)?;
            }
        }
        Ok(())
    }

    fn check_call(&self, comm: &dyn Communicator) -> Result<(), TpError> {
        if comm.world() != self.tp || comm.rank() != self.rank {
            return Err(TpError::Input(format!(
                "this model is rank {} of a tensor-parallel group of {}, but the \
                 communicator is rank {} of {}",
                self.rank,
                self.tp,
                comm.rank(),
                comm.world()
            )));
        }
        Ok(())
    }

    fn check_batch(
        &self,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(), TpError> {
        let cfg = &self.config;
        let fail = |m: String| Err(TpError::Input(m));
        if b == 0 || t == 0 {
            return fail(format!("batch {b} x {t}: both must be positive"));
        }
        if t > cfg.max_seq_len {
            return fail(format!(
                "sequence length {t} exceeds the model's max_seq_len {}",
                cfg.max_seq_len
            ));
        }
        if b.checked_mul(t) != Some(tokens.len()) || targets.len() != tokens.len() {
            return fail(format!(
                "got {} tokens and {} targets for a batch of {b} x {t}",
                tokens.len(),
                targets.len()
            ));
        }
        if let Some(i) = tokens.iter().position(|&x| x as usize >= cfg.vocab_size) {
            return fail(format!(
                "token {} at position {i} is outside the vocabulary (size {})",
                tokens[i], cfg.vocab_size
            ));
        }
        Ok(())
    }

    fn ensure_activations(
        &mut self,
        be: &mut BackendBox,
        b: usize,
        t: usize,
    ) -> Result<(), TpError> {
        if self
            .acts
            .as_ref()
            .is_some_and(|a| a.dims.b == b && a.dims.t == t)
        {
            return Ok(());
        }
        if let Some(old) = self.acts.take() {
            old.release(be)?;
        }
        let cfg = &self.config;
        let dims = Dims {
            b,
            t,
            c: cfg.n_embd,
            heads: cfg.n_head / self.tp,
            hd: cfg.n_embd / cfg.n_head,
            fc: 4 * cfg.n_embd / self.tp,
            eps: cfg.layer_norm_eps,
        };
        self.acts = Some(Activations::new(be, dims, cfg.n_layer, self.vocab.len)?);
        Ok(())
    }
}

fn lnf_io(acts: &Activations, inp: BufId, weight: BufId, bias: BufId) -> LayerNormIo {
    LayerNormIo {
        out: acts.lnf,
        mean: acts.lnf_mean,
        rstd: acts.lnf_rstd,
        inp,
        weight,
        bias,
    }
}

impl Activations {
    fn new(
        be: &mut BackendBox,
        dims: Dims,
        n_layer: usize,
        vocab_len: usize,
    ) -> Result<Activations, TpError> {
        let (rows, c) = (dims.rows(), dims.c);
        let workspace = be.attention_workspace_len(dims.shape()).ok_or_err()?;
        let mut alloc = |n: usize| be.alloc_buf(DType::F32, n);
        let (encoded, lnf, lnf_mean, lnf_rstd, logits) = (
            alloc(rows * c)?,
            alloc(rows * c)?,
            alloc(rows)?,
            alloc(rows)?,
            alloc(rows * vocab_len)?,
        );
        let layers = (0..n_layer)
            .map(|_| LayerActs::new(be, &dims, workspace))
            .collect::<Result<_, _>>()?;
        Ok(Activations {
            dims,
            encoded,
            layers,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            scratch: Scratch::new(be, &dims)?,
        })
    }

    fn release(self, be: &mut BackendBox) -> Result<(), TpError> {
        let own = [
            self.encoded,
            self.lnf,
            self.lnf_mean,
            self.lnf_rstd,
            self.logits,
        ];
        let layers = self.layers.iter().flat_map(|l| l.buffers());
        for buf in own.into_iter().chain(layers).chain(self.scratch.buffers()) {
            be.free_buf(buf)?;
        }
        Ok(())
    }
}
