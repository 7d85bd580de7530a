//! The [`Gpt`] handle: parameters on a backend plus reusable buffers.

use kiln_abi::{BackendBox, BackendExt, DType, IntoBResult, Rounding};

use crate::activations::Activations;
use crate::generate::GenBuffers;
use crate::lora::Lora;
use crate::params::{self, Param};
use crate::rope::RopeTables;
use crate::{GptConfig, ModelError, Precision, Rng};

/// What backward needs to know about the last forward.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LastForward {
    pub b: usize,
    pub t: usize,
    /// Targets that count towards the mean loss (None: forward had no targets).
    pub counted: Option<usize>,
    /// The forward ran a packed batch (positions and segments uploaded into
    /// the activations), so backward uses the per-token positions.
    pub packed: bool,
}

/// A GPT-2 or Llama-family model (see [`GptConfig::llama`]) whose
/// parameters live in backend buffers. The backend is
/// passed to every call; buffers are freed by [`Gpt::release`].
pub struct Gpt {
    pub config: GptConfig,
    pub(crate) params: Vec<Param>,
    pub(crate) acts: Option<Activations>,
    pub(crate) gen: Option<GenBuffers>,
    pub(crate) last: Option<LastForward>,
    /// Host staging for uploads that must cover a whole buffer.
    pub(crate) host_u32: Vec<u32>,
    pub(crate) host_f32: Vec<f32>,
    /// Targets of the last forward, padded to the activation capacity.
    pub(crate) host_targets: Vec<u32>,
    /// The logits buffer holds the last forward's logits (backward reuses it).
    pub(crate) logits_valid: bool,
    pub(crate) precision: Precision,
    /// RoPE's cos/sin tables (Llama family only).
    pub(crate) rope: Option<RopeTables>,
    /// LoRA adapters ([`Gpt::add_lora`]); `None` for a plain model.
    pub(crate) lora: Option<Lora>,
}

impl Gpt {
    /// GPT-2 init, deterministic from `seed`: N(0, 0.02) weights, residual
    /// projections (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2*n_layer)),
    /// biases 0, LayerNorm weight 1 and bias 0, padding rows of wte 0.
    /// A Llama-family config: N(0, 0.02) weights, biases 0, norms 1.
    pub fn new(be: &mut BackendBox, config: GptConfig, seed: u64) -> Result<Gpt, ModelError> {
        config.validate()?;
        let specs = params::specs(&config);
        let mut rng = Rng::new(seed);
        let values: Vec<Vec<f32>> = specs
            .iter()
            .map(|s| params::init_values(s, &mut rng))
            .collect();
        Gpt::from_values(be, config, values, true)
    }

    /// A model holding `values` (kiln layout, [`Gpt::params`] order; each
    /// host copy is dropped once uploaded), with gradient buffers when
    /// `grads`, else frozen.
    pub(crate) fn from_values(
        be: &mut BackendBox,
        config: GptConfig,
        values: Vec<Vec<f32>>,
        grads: bool,
    ) -> Result<Gpt, ModelError> {
        config.validate()?;
        let specs = params::specs(&config);
        check_value_shapes(&specs, &values)?;
        let params = params::upload_params(be, &specs, values, grads)?;
        let rope = match config.llama {
            Some(_) => Some(RopeTables::upload(be, &config)?),
            None => None,
        };
        Ok(Gpt {
            config,
            params,
            acts: None,
            gen: None,
            last: None,
            host_u32: Vec::new(),
            host_f32: Vec::new(),
            host_targets: Vec::new(),
            logits_valid: false,
            precision: Precision::F32,
            rope,
            lora: None,
        })
    }

    /// All parameters, in HF `named_parameters` order: wte, wpe, per block
    /// (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj; weight then
    /// bias), ln_f.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Parameter count with the real vocabulary (see [`GptConfig::num_params`]).
    pub fn num_params(&self) -> usize {
        self.config.num_params()
    }

    /// Sets every gradient to zero (frozen parameters have none).
    pub fn zero_grad(&mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        for g in self.params.iter().filter_map(|p| p.grad) {
            be.zero(g).ok_or_err()?;
        }
        Ok(())
    }

    /// Freezes every base parameter: frees its gradient buffer, so backward
    /// computes input gradients only (LoRA's base; [`Gpt::add_lora`] calls it).
    pub fn freeze_base(&mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        params::free_grads(be, &mut self.params)
    }

    /// Gives every frozen base parameter a zeroed gradient buffer again, so
    /// the whole model trains (e.g. after [`Gpt::merge_lora`]).
    pub fn unfreeze_base(&mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        params::alloc_grads(be, &mut self.params)
    }

    /// Parameter values copied to the host, in [`Gpt::params`] order (kiln layout).
    pub fn read_params(&self, be: &mut BackendBox) -> Result<Vec<Vec<f32>>, ModelError> {
        self.params
            .iter()
            .map(|p| Ok(be.download_f32(p.value)?))
            .collect()
    }

    /// Gradients copied to the host, in [`Gpt::params`] order (kiln layout);
    /// a frozen parameter's is empty.
    pub fn read_grads(&self, be: &mut BackendBox) -> Result<Vec<Vec<f32>>, ModelError> {
        self.params
            .iter()
            .map(|p| match p.grad {
                Some(g) => Ok(be.download_widened(g)?),
                None => Ok(Vec::new()),
            })
            .collect()
    }

    /// Overwrites parameter values (kiln layout, [`Gpt::params`] order).
    pub fn write_params(
        &mut self,
        be: &mut BackendBox,
        values: &[Vec<f32>],
    ) -> Result<(), ModelError> {
        let specs = params::specs(&self.config);
        check_value_shapes(&specs, values)?;
        for (p, v) in self.params.iter().zip(values) {
            be.upload_f32(p.value, v)?;
        }
        self.refresh_compute_weights(be)
    }

    /// Bytes of the training activations allocated so far (None before
    /// the first training forward); see [`crate::precision::activation_bytes`].
    pub fn activation_bytes(&self) -> Option<usize> {
        self.acts.as_ref().map(|a| a.bytes())
    }

    /// The precision policy the model computes in (f32 unless set).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Switches the precision policy. Mixed precision keeps `value` (f32)
    /// as the master copy and adds a 16-bit working copy of every weight
    /// (`Param::value_16`, rounded to nearest even); the activations
    /// (reallocated on the next forward) take the 16-bit dtype; parameter
    /// gradients stay f32 (they accumulate over micro-batches). Gradients
    /// restart at zero.
    pub fn set_precision(
        &mut self,
        be: &mut BackendBox,
        precision: Precision,
    ) -> Result<(), ModelError> {
        if let Some(a) = self.acts.take() {
            a.release(be)?;
        }
        if let Some(g) = self.gen.take() {
            g.release(be)?;
        }
        self.last = None;
        self.logits_valid = false;
        let dtype = precision.compute_dtype();
        for p in &mut self.params {
            let n = p.len();
            if let Some(old) = p.value_16.take() {
                be.free(old).ok_or_err()?;
            }
            if precision.is_mixed() {
                p.value_16 = Some(be.alloc_buf(dtype, n)?);
            }
            if let Some(g) = p.grad {
                be.zero(g).ok_or_err()?;
            }
        }
        self.precision = precision;
        self.refresh_compute_weights(be)
    }

    /// Rewrites every 16-bit working copy from its f32 master (nearest even).
    pub(crate) fn refresh_compute_weights(&self, be: &mut BackendBox) -> Result<(), ModelError> {
        for p in &self.params {
            if let Some(w16) = p.value_16 {
                be.cast(w16, p.value, p.len(), Rounding::NearestEven, 0)
                    .ok_or_err()?;
            }
        }
        Ok(())
    }

    /// The dtype activations and gradients are stored in.
    pub(crate) fn act_dtype(&self) -> DType {
        self.precision.compute_dtype()
    }

    /// Frees every backend buffer the model holds.
    pub fn release(mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        if let Some(a) = self.acts.take() {
            a.release(be)?;
        }
        if let Some(g) = self.gen.take() {
            g.release(be)?;
        }
        if let Some(r) = self.rope.take() {
            r.release(be)?;
        }
        if let Some(l) = self.lora.take() {
            l.release(be)?;
        }
        for p in self.params.drain(..) {
            be.free(p.value).ok_or_err()?;
            if let Some(g) = p.grad {
                be.free(g).ok_or_err()?;
            }
            if let Some(w16) = p.value_16 {
                be.free(w16).ok_or_err()?;
            }
        }
        Ok(())
    }
}

fn check_value_shapes(specs: &[params::ParamSpec], values: &[Vec<f32>]) -> Result<(), ModelError> {
    if specs.len() != values.len() {
        return Err(ModelError::Input(format!(
            "expected {} parameter tensors, got {}",
            specs.len(),
            values.len()
        )));
    }
    for (s, v) in specs.iter().zip(values) {
        let n: usize = s.shape.iter().product();
        if v.len() != n {
            return Err(ModelError::Input(format!(
                "parameter {} needs {n} values (shape {:?}), got {}",
                s.name,
                s.shape,
                v.len()
            )));
        }
    }
    Ok(())
}
