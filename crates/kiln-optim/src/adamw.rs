//! AdamW (decoupled weight decay), `torch.optim.AdamW` semantics, with the
//! update itself done by the backend's fused `adamw` op.

use kiln_abi::{AdamWArgs, BackendBox, BackendExt, BufId, DType, IntoBResult, ROption, Rounding};
use serde::{Deserialize, Serialize};

use crate::{OptimError, ParamRef};

/// Hyper-parameters other than the learning rate (which changes per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Applied only to parameters with `ParamRef::decay`.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// GPT-2 / llm.c pretraining defaults: betas (0.9, 0.95), eps 1e-8, decay 0.1.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Moments and step count, for training-state files (resume is exact).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWState {
    /// Number of updates done so far.
    pub step: u64,
    /// First moment per parameter, in the order of the `ParamRef`s.
    pub m: Vec<Vec<f32>>,
    /// Second moment per parameter.
    pub v: Vec<Vec<f32>>,
}

/// AdamW with one f32 `m` and `v` buffer per parameter on the backend.
pub struct AdamW {
    config: AdamWConfig,
    m: Vec<BufId>,
    v: Vec<BufId>,
    lens: Vec<usize>,
    step: u64,
    rounding: Rounding,
    rounding_seed: u64,
}

impl AdamW {
    /// Allocates zeroed moments for `params`.
    pub fn new(
        be: &mut BackendBox,
        params: &[ParamRef],
        config: AdamWConfig,
    ) -> Result<Self, OptimError> {
        let ok = |x: f32| x.is_finite();
        if !(0.0..1.0).contains(&config.beta1)
            || !(0.0..1.0).contains(&config.beta2)
            || !ok(config.eps)
            || config.eps < 0.0
            || !ok(config.weight_decay)
        {
            return Err(OptimError::Config(format!(
                "{config:?}: betas must lie in [0, 1), eps and weight_decay must be finite"
            )));
        }
        let mut m = Vec::with_capacity(params.len());
        let mut v = Vec::with_capacity(params.len());
        for p in params {
            m.push(be.alloc_buf(DType::F32, p.len)?);
            v.push(be.alloc_buf(DType::F32, p.len)?);
        }
        Ok(AdamW {
            config,
            m,
            v,
            lens: params.iter().map(|p| p.len).collect(),
            step: 0,
            rounding: Rounding::NearestEven,
            rounding_seed: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// One update with learning rate `lr`; gradients are multiplied by
    /// `grad_scale` first (clipping factor, 1/loss-scale). Weight decay only
    /// where `ParamRef::decay`. Increments the step count.
    pub fn step(
        &mut self,
        be: &mut BackendBox,
        params: &[ParamRef],
        lr: f32,
        grad_scale: f32,
    ) -> Result<(), OptimError> {
        self.check_params(params)?;
        if !lr.is_finite() || !grad_scale.is_finite() {
            return Err(OptimError::Config(format!(
                "lr {lr} and grad_scale {grad_scale} must be finite"
            )));
        }
        self.issue(be, params, lr, grad_scale, None)?;
        self.step += 1;
        Ok(())
    }

    /// One update whose gradient factor and skip decision come from the
    /// step-stats block `control` on the backend (`kiln_abi::stats`, filled
    /// by [`crate::grad_norm_on_backend`]): no host round trip. The backend
    /// skips the update when the block says so; call
    /// [`AdamW::finish_step`] once the host has read the block.
    pub fn step_controlled(
        &mut self,
        be: &mut BackendBox,
        params: &[ParamRef],
        lr: f32,
        control: BufId,
    ) -> Result<(), OptimError> {
        self.check_params(params)?;
        if !lr.is_finite() {
            return Err(OptimError::Config(format!("lr {lr} must be finite")));
        }
        self.issue(be, params, lr, 1.0, Some(control))
    }

    /// Counts a [`AdamW::step_controlled`] update once the host knows
    /// whether the backend applied it (bias correction counts applied
    /// updates only).
    pub fn finish_step(&mut self, applied: bool) {
        if applied {
            self.step += 1;
        }
    }

    fn issue(
        &mut self,
        be: &mut BackendBox,
        params: &[ParamRef],
        lr: f32,
        grad_scale: f32,
        control: Option<BufId>,
    ) -> Result<(), OptimError> {
        let step = self.step + 1;
        for (i, p) in params.iter().enumerate() {
            be.adamw(AdamWArgs {
                params: p.value,
                grads: p.grad,
                m: self.m[i],
                v: self.v[i],
                params_16: p.value_16.map_or(ROption::RNone, ROption::RSome),
                rounding: self.rounding,
                seed: self.copy_seed(step, i),
                n: p.len,
                lr,
                beta1: self.config.beta1,
                beta2: self.config.beta2,
                eps: self.config.eps,
                weight_decay: if p.decay {
                    self.config.weight_decay
                } else {
                    0.0
                },
                grad_scale,
                control: control.map_or(ROption::RNone, ROption::RSome),
                step,
            })
            .ok_or_err()?;
        }
        Ok(())
    }

    /// The rounding seed of parameter `i`'s 16-bit copy after update `step`.
    fn copy_seed(&self, step: u64, i: usize) -> u64 {
        self.rounding_seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((i as u64) << 40)
    }

    /// Rewrites every 16-bit working copy from its master exactly as the
    /// last applied update did (same rounding, same seed): after a resume the
    /// copies are bit for bit those of the uninterrupted run.
    pub fn refresh_copies(
        &self,
        be: &mut BackendBox,
        params: &[ParamRef],
    ) -> Result<(), OptimError> {
        self.check_params(params)?;
        for (i, p) in params.iter().enumerate() {
            if let Some(w16) = p.value_16 {
                be.cast(
                    w16,
                    p.value,
                    p.len,
                    self.rounding,
                    self.copy_seed(self.step, i),
                )
                .ok_or_err()?;
            }
        }
        Ok(())
    }

    /// How the 16-bit working copies (`ParamRef::value_16`) are rounded
    /// from the f32 masters after each update: nearest even by default,
    /// or stochastic (deterministic in `seed`, the step and the tensor).
    pub fn set_rounding(&mut self, rounding: Rounding, seed: u64) {
        self.rounding = rounding;
        self.rounding_seed = seed;
    }

    /// Updates done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Step and moments, copied to the host.
    pub fn export_state(&self, be: &mut BackendBox) -> Result<AdamWState, OptimError> {
        let mut m = Vec::with_capacity(self.m.len());
        let mut v = Vec::with_capacity(self.v.len());
        for (&mb, &vb) in self.m.iter().zip(&self.v) {
            m.push(be.download_f32(mb)?);
            v.push(be.download_f32(vb)?);
        }
        Ok(AdamWState {
            step: self.step,
            m,
            v,
        })
    }

    /// Elements of parameter `i`'s moments (None past the last parameter).
    pub fn moment_len(&self, i: usize) -> Option<usize> {
        self.lens.get(i).copied()
    }

    /// One moment of parameter `i` copied to the host (`second`: v, else
    /// m): a checkpoint streams them one at a time instead of holding
    /// [`AdamW::export_state`]'s copy of all of them.
    pub fn export_moment(
        &self,
        be: &mut BackendBox,
        i: usize,
        second: bool,
    ) -> Result<Vec<f32>, OptimError> {
        let bufs = if second { &self.v } else { &self.m };
        let buf = *bufs.get(i).ok_or_else(|| {
            OptimError::Mismatch(format!("moment {i} asked for, there are {}", bufs.len()))
        })?;
        Ok(be.download_f32(buf)?)
    }

    /// Restores a state written by [`AdamW::export_state`] for the same parameters.
    pub fn import_state(
        &mut self,
        be: &mut BackendBox,
        state: &AdamWState,
    ) -> Result<(), OptimError> {
        if state.m.len() != self.lens.len() || state.v.len() != self.lens.len() {
            return Err(OptimError::Mismatch(format!(
                "saved state has {} / {} moment tensors, the model has {} parameters",
                state.m.len(),
                state.v.len(),
                self.lens.len()
            )));
        }
        for (i, &len) in self.lens.iter().enumerate() {
            if state.m[i].len() != len || state.v[i].len() != len {
                return Err(OptimError::Mismatch(format!(
                    "parameter {i}: saved moments have {} / {} elements, the parameter has {len}",
                    state.m[i].len(),
                    state.v[i].len()
                )));
            }
        }
        for i in 0..self.lens.len() {
            be.upload_f32(self.m[i], &state.m[i])?;
            be.upload_f32(self.v[i], &state.v[i])?;
        }
        self.step = state.step;
        Ok(())
    }

    /// Bytes of the moment buffers on the backend (memory reports and tests).
    pub fn state_bytes(&self, be: &mut BackendBox) -> Result<usize, OptimError> {
        let mut total = 0;
        for &b in self.m.iter().chain(&self.v) {
            let info = be.buffer_info(b).ok_or_err()?;
            total += info.len * info.dtype.size();
        }
        Ok(total)
    }

    /// Frees the moment buffers.
    pub fn release(self, be: &mut BackendBox) -> Result<(), OptimError> {
        for b in self.m.into_iter().chain(self.v) {
            be.free(b).ok_or_err()?;
        }
        Ok(())
    }

    fn check_params(&self, params: &[ParamRef]) -> Result<(), OptimError> {
        if params.len() != self.lens.len() {
            return Err(OptimError::Mismatch(format!(
                "step got {} parameters, the optimizer was built for {}",
                params.len(),
                self.lens.len()
            )));
        }
        for (i, (p, &len)) in params.iter().zip(&self.lens).enumerate() {
            if p.len != len {
                return Err(OptimError::Mismatch(format!(
                    "parameter {i} has {} elements, the optimizer was built for {len}",
                    p.len
                )));
            }
        }
        Ok(())
    }
}
