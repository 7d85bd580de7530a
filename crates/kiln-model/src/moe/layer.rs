//! [`MoeLayer::forward`] and [`MoeLayer::backward`]: the router matmul and
//! the experts on the backend, the routing bookkeeping on the host.

use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, MatmulArgs, ROption};

use super::balance::switch_aux_loss;
use super::balance::{aux_probs, router_z_backward, router_z_loss, switch_aux_backward};
use super::dispatch::Dispatch;
use super::experts::{mlp_backward, mlp_forward, MlpBufs, MlpGrads, MlpParams};
use super::router::{route, Routing};
use super::{slot, MoeLayer, ROUTER};
use crate::ops::linear;
use crate::ModelError;

/// What one forward did, for the trainer's logs.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeStats {
    /// `[E]`: token slots routed to each expert (before any capacity drop;
    /// sums to N k). Sum it over micro-batches and ranks for `update_bias`.
    pub load: Vec<f32>,
    /// Token slots dropped for being over capacity, in all.
    pub dropped: usize,
    /// `[E]`: the same per expert.
    pub dropped_per_expert: Vec<usize>,
    /// The per-expert capacity, `None` when dropless.
    pub capacity: Option<usize>,
    /// The Switch aux loss with its coefficient (0 when off).
    pub aux_loss: f32,
    /// The router z-loss with its coefficient (0 when off).
    pub z_loss: f32,
}

impl MoeStats {
    /// What this layer adds to the training loss: `aux_loss + z_loss`.
    pub fn loss(&self) -> f32 {
        self.aux_loss + self.z_loss
    }
}

/// A forward's stats and everything its backward needs. `x` must stay
/// unchanged until then. Pass it to [`MoeLayer::backward`], or
/// [`MoeForward::free`] it (evaluation).
pub struct MoeForward {
    pub stats: MoeStats,
    pub routing: Routing,
    pub dispatch: Dispatch,
    n: usize,
    x: BufId,
    logits: Vec<f32>,
    /// The routed experts' rows (`None` when no slot was kept).
    routed: Option<Routed>,
    /// One per shared expert; `inp` is `x` itself.
    shared: Vec<MlpBufs>,
    /// Every buffer this forward allocated.
    owned: Vec<BufId>,
}

/// The grouped rows of the routed experts: `M` kept slots.
#[derive(Clone, Copy)]
struct Routed {
    tokens: BufId,
    gates: BufId,
    bufs: MlpBufs,
}

impl MoeForward {
    /// Frees the forward's buffers without a backward.
    pub fn free(self, be: &mut BackendBox) -> Result<(), ModelError> {
        free_all(be, self.owned)
    }
}

fn free_all(be: &mut BackendBox, bufs: Vec<BufId>) -> Result<(), ModelError> {
    for b in bufs {
        be.free(b).ok_or_err()?;
    }
    Ok(())
}

/// Allocations that are freed together unless kept.
struct Scratch(Vec<BufId>);

impl Scratch {
    fn alloc(
        &mut self,
        be: &mut BackendBox,
        dtype: DType,
        len: usize,
    ) -> Result<BufId, ModelError> {
        // A zero-length buffer is never needed: skipped ops guard on rows.
        let b = be.alloc_buf(dtype, len.max(1))?;
        self.0.push(b);
        Ok(b)
    }
    fn upload_f32(&mut self, be: &mut BackendBox, v: &[f32]) -> Result<BufId, ModelError> {
        let b = self.alloc(be, DType::F32, v.len())?;
        if !v.is_empty() {
            be.upload_f32(b, v)?;
        }
        Ok(b)
    }
    fn upload_u32(&mut self, be: &mut BackendBox, v: &[u32]) -> Result<BufId, ModelError> {
        let b = self.alloc(be, DType::U32, v.len())?;
        if !v.is_empty() {
            be.upload_u32(b, v)?;
        }
        Ok(b)
    }
    fn view(&mut self, be: &mut BackendBox, buf: BufId, len: usize) -> Result<BufId, ModelError> {
        let v = be.view_of(buf, 0, len)?;
        self.0.push(v);
        Ok(v)
    }
}

/// Runs `body` with a scratch list; on error every buffer in it is freed.
fn with_scratch<T>(
    be: &mut BackendBox,
    body: impl FnOnce(&mut BackendBox, &mut Scratch) -> Result<T, ModelError>,
) -> Result<(T, Vec<BufId>), ModelError> {
    let mut scratch = Scratch(Vec::new());
    match body(be, &mut scratch) {
        Ok(t) => Ok((t, scratch.0)),
        Err(e) => {
            // Report the first error; freeing is best effort.
            let _ = free_all(be, scratch.0);
            Err(e)
        }
    }
}

impl MoeLayer {
    fn expert(&self, e: usize) -> MlpParams<'_> {
        let p = |s| &self.params[self.expert_index(e, s)];
        MlpParams {
            fc_w: p(slot::FC_W),
            fc_b: p(slot::FC_B),
            proj_w: p(slot::PROJ_W),
            proj_b: p(slot::PROJ_B),
        }
    }

    fn shared_expert(&self, s: usize) -> MlpParams<'_> {
        let p = |k| &self.params[self.shared_index(s, k)];
        MlpParams {
            fc_w: p(slot::FC_W),
            fc_b: p(slot::FC_B),
            proj_w: p(slot::PROJ_W),
            proj_b: p(slot::PROJ_B),
        }
    }

    fn check_rows(
        &self,
        be: &mut BackendBox,
        what: &str,
        buf: BufId,
        n: usize,
    ) -> Result<(), ModelError> {
        let info = be.buffer_info(buf).ok_or_err()?;
        let need = n * self.config.n_embd;
        if info.dtype != DType::F32 {
            return Err(ModelError::Input(format!(
                "moe: `{what}` is {}; this layer runs f32 activations only",
                info.dtype
            )));
        }
        if info.len < need {
            return Err(ModelError::Input(format!(
                "moe: `{what}` holds {} elements, {n} rows x {} need {need}",
                info.len, self.config.n_embd
            )));
        }
        Ok(())
    }

    /// `y[..n, :]` (overwritten) = the layer applied to the rows `x [n, C]`;
    /// returns the stats and the state for [`MoeLayer::backward`].
    pub fn forward(
        &self,
        be: &mut BackendBox,
        x: BufId,
        y: BufId,
        n: usize,
    ) -> Result<MoeForward, ModelError> {
        if n == 0 {
            return Err(ModelError::Input("moe forward: n = 0 rows".into()));
        }
        self.check_rows(be, "x", x, n)?;
        self.check_rows(be, "y", y, n)?;
        let cfg = &self.config;
        let (c, h, e, k) = (cfg.n_embd, cfg.hidden, cfg.n_experts, cfg.top_k);
        let ((logits, routing, dispatch, routed, shared), owned) = with_scratch(be, |be, s| {
            // Router (f32): logits [n, E] to the host.
            let logits_buf = s.alloc(be, DType::F32, n * e)?;
            if n > 0 {
                let wr = self.params[ROUTER].value;
                linear(be, logits_buf, x, wr, None, n, c, e)?;
            }
            let mut logits = be.download_f32(logits_buf)?;
            logits.truncate(n * e);
            let bias = cfg.expert_bias.then_some(&self.selection_bias[..]);
            let routing = route(&logits, e, k, cfg.gate, cfg.normalize_topk, bias);
            let dispatch = Dispatch::plan(&routing, cfg.capacity(n));

            let y_n = s.view(be, y, n * c)?;
            be.zero(y_n).ok_or_err()?;
            let m = dispatch.rows();
            let routed = if m > 0 {
                let tokens = s.upload_u32(be, &dispatch.tokens)?;
                let gates = s.upload_f32(be, &dispatch.gates)?;
                let bufs = MlpBufs {
                    inp: s.alloc(be, DType::F32, m * c)?,
                    h: s.alloc(be, DType::F32, m * h)?,
                    a: s.alloc(be, DType::F32, m * h)?,
                    out: s.alloc(be, DType::F32, m * c)?,
                };
                // Dispatch: one gather; each expert on its rows; combine.
                be.gather_rows(bufs.inp, x, tokens, m, c).ok_or_err()?;
                for ex in 0..e {
                    let r = dispatch.range(ex);
                    mlp_forward(be, self.expert(ex), bufs, r.start, r.len(), (c, h))?;
                }
                be.scatter_add_rows(y_n, bufs.out, tokens, ROption::RSome(gates), m, c)
                    .ok_or_err()?;
                Some(Routed {
                    tokens,
                    gates,
                    bufs,
                })
            } else {
                None
            };
            let mut shared = Vec::with_capacity(cfg.n_shared);
            for sh in 0..cfg.n_shared {
                let bufs = MlpBufs {
                    inp: x,
                    h: s.alloc(be, DType::F32, n * h)?,
                    a: s.alloc(be, DType::F32, n * h)?,
                    out: s.alloc(be, DType::F32, n * c)?,
                };
                if n > 0 {
                    mlp_forward(be, self.shared_expert(sh), bufs, 0, n, (c, h))?;
                    be.axpy(y_n, bufs.out, n * c, 1.0).ok_or_err()?;
                }
                shared.push(bufs);
            }
            Ok((logits, routing, dispatch, routed, shared))
        })?;

        let stats = MoeStats {
            load: routing.load(),
            dropped: dispatch.total_dropped(),
            dropped_per_expert: dispatch.dropped.clone(),
            capacity: cfg.capacity(n),
            aux_loss: if cfg.aux_loss_coef > 0.0 {
                switch_aux_loss(&aux_probs(&routing), &routing.load(), k, cfg.aux_loss_coef)
            } else {
                0.0
            },
            z_loss: if cfg.z_loss_coef > 0.0 {
                router_z_loss(&logits, e, cfg.z_loss_coef)
            } else {
                0.0
            },
        };
        Ok(MoeForward {
            stats,
            routing,
            dispatch,
            n,
            x,
            logits,
            routed,
            shared,
            owned,
        })
    }

    /// Backward of the forward `fwd` (consumed, its buffers freed):
    /// `dx[..n, :]` is overwritten with d loss / d x, parameter gradients
    /// accumulate. `dy [n, C]` is d loss / d y; `loss_scale` is the weight
    /// of this layer's aux + z losses in that same loss (1, or 1/k for k
    /// accumulated micro-batches, times any loss scale).
    pub fn backward(
        &self,
        be: &mut BackendBox,
        fwd: MoeForward,
        dy: BufId,
        dx: BufId,
        loss_scale: f32,
    ) -> Result<(), ModelError> {
        let n = fwd.n;
        let result = self
            .check_rows(be, "dy", dy, n)
            .and_then(|()| self.check_rows(be, "dx", dx, n))
            .and_then(|()| {
                with_scratch(be, |be, s| {
                    self.backward_inner(be, &fwd, dy, dx, loss_scale, s)
                })
            });
        let freed = free_all(be, fwd.owned);
        let ((), scratch) = result?;
        freed?;
        free_all(be, scratch)
    }

    fn backward_inner(
        &self,
        be: &mut BackendBox,
        fwd: &MoeForward,
        dy: BufId,
        dx: BufId,
        loss_scale: f32,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (c, h, e, k) = (cfg.n_embd, cfg.hidden, cfg.n_experts, cfg.top_k);
        let n = fwd.n;
        let dx_n = s.view(be, dx, n * c)?;
        be.zero(dx_n).ok_or_err()?;
        let mut dgates = vec![0.0f32; n * k]; // dropped slots stay 0
        if let Some(r) = fwd.routed {
            let m = fwd.dispatch.rows();
            // d gate of each kept slot = <dy[token], expert output>.
            let dg = s.alloc(be, DType::F32, m)?;
            be.rows_dot(dg, dy, ROption::RSome(r.tokens), r.bufs.out, m, c)
                .ok_or_err()?;
            let dg_host = be.download_f32(dg)?;
            for (&slot, &g) in fwd.dispatch.slots.iter().zip(&dg_host) {
                dgates[slot] = g;
            }
            // d expert output = gate * dy[token]: a gather, then a weighted
            // scatter onto the same rows (identity indices).
            let dy_rows = s.alloc(be, DType::F32, m * c)?;
            be.gather_rows(dy_rows, dy, r.tokens, m, c).ok_or_err()?;
            let identity: Vec<u32> = (0..m as u32).collect();
            let identity = s.upload_u32(be, &identity)?;
            let grads = MlpGrads {
                dout: s.alloc(be, DType::F32, m * c)?,
                dinp: s.alloc(be, DType::F32, m * c)?,
                da: s.alloc(be, DType::F32, m * h)?,
                dh: s.alloc(be, DType::F32, m * h)?,
            };
            be.scatter_add_rows(grads.dout, dy_rows, identity, ROption::RSome(r.gates), m, c)
                .ok_or_err()?;
            for ex in 0..e {
                let rg = fwd.dispatch.range(ex);
                mlp_backward(
                    be,
                    self.expert(ex),
                    r.bufs,
                    grads,
                    rg.start,
                    rg.len(),
                    (c, h),
                )?;
            }
            // The gather's backward: add each slot's input gradient to its token.
            be.scatter_add_rows(dx_n, grads.dinp, r.tokens, ROption::RNone, m, c)
                .ok_or_err()?;
        }
        if n > 0 && !fwd.shared.is_empty() {
            let grads = MlpGrads {
                dout: dy,
                dinp: s.alloc(be, DType::F32, n * c)?,
                da: s.alloc(be, DType::F32, n * h)?,
                dh: s.alloc(be, DType::F32, n * h)?,
            };
            for (sh, bufs) in fwd.shared.iter().enumerate() {
                mlp_backward(be, self.shared_expert(sh), *bufs, grads, 0, n, (c, h))?;
                be.axpy(dx_n, grads.dinp, n * c, 1.0).ok_or_err()?;
            }
        }
        if n > 0 {
            let dlogits = self.router_logits_grad(fwd, &dgates, loss_scale);
            self.router_backward(be, fwd, &dlogits, dx_n, s)?;
        }
        Ok(())
    }

    /// d loss / d logits `[n, E]`: through the gates, the aux loss and the
    /// z-loss (the last two weighted by `loss_scale`).
    fn router_logits_grad(&self, fwd: &MoeForward, dgates: &[f32], loss_scale: f32) -> Vec<f32> {
        let cfg = &self.config;
        let e = cfg.n_experts;
        let routing = &fwd.routing;
        let mut dscores = vec![0.0f32; fwd.n * e];
        routing.gates_backward(dgates, &mut dscores);
        switch_aux_backward(routing, cfg.aux_loss_coef, loss_scale, &mut dscores);
        let mut dlogits = vec![0.0f32; fwd.n * e];
        routing.scores_backward(&dscores, &mut dlogits);
        router_z_backward(&fwd.logits, e, cfg.z_loss_coef, loss_scale, &mut dlogits);
        dlogits
    }

    /// `d W_r += dlogits^T @ x`, `dx += dlogits @ W_r`.
    fn router_backward(
        &self,
        be: &mut BackendBox,
        fwd: &MoeForward,
        dlogits: &[f32],
        dx_n: BufId,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let (c, e, n) = (self.config.n_embd, self.config.n_experts, fwd.n);
        let router = &self.params[ROUTER];
        let dl = s.upload_f32(be, dlogits)?;
        if let Some(dw) = router.grad {
            be.matmul(MatmulArgs {
                trans_a: true,
                beta: 1.0,
                ..MatmulArgs::new(dw, dl, fwd.x, e, c, n)
            })
            .ok_or_err()?;
        }
        be.matmul(MatmulArgs {
            beta: 1.0,
            ..MatmulArgs::new(dx_n, dl, router.value, n, c, e)
        })
        .ok_or_err()?;
        Ok(())
    }
}
