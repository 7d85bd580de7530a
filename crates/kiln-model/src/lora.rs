//! LoRA adapters on a Llama-family model's projections, as PEFT's
//! `LoraConfig` defines them (no dropout, no bias):
//!
//!     y = W x + (alpha / r) * B (A x),   A: [r, in], B: [out, r]
//!
//! A starts as PEFT's `kaiming_uniform_(a=sqrt(5))` (U(-1/sqrt(in),
//! 1/sqrt(in))), B at zero, so a fresh adapter changes nothing. The base
//! weights stay as they are; only the adapters are handed to an optimizer
//! ([`Gpt::trainable_params`]). GPT-2 is refused: its fused `c_attn` has
//! no per-projection matrix PEFT would name.
//!
//! The adapter's `A x` is recomputed in backward (r columns per row, cheap)
//! rather than kept per layer.

use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, MatmulArgs};
use serde::{Deserialize, Serialize};

use crate::ops::Cols;
use crate::params::{upload_params, Init, Param, ParamSpec};
use crate::{Gpt, GptConfig, ModelError, Rng};

/// A projection LoRA can adapt, with PEFT's module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The HF module name (`q_proj`, ..., `down_proj`).
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// `self_attn.q_proj`, `mlp.gate_proj`, ...
    pub fn path(self) -> String {
        let parent = match self {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
            _ => "mlp",
        };
        format!("{parent}.{}", self.module())
    }

    /// `q`, `k`, `v`, `o`, `gate`, `up`, `down`, or the module name.
    pub fn parse(s: &str) -> Result<LoraTarget, ModelError> {
        let s = s.trim();
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.module() == s || t.module().strip_suffix("_proj") == Some(s))
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "unknown LoRA target {s:?}; expected some of q,k,v,o,gate,up,down \
                     (or q_proj, ..., down_proj)"
                ))
            })
    }

    /// `[in, out]` features of this projection in `cfg`.
    fn features(self, cfg: &GptConfig) -> (usize, usize) {
        let c = cfg.n_embd;
        let kv = cfg.n_kv_head() * cfg.head_dim();
        let f = cfg.mlp_act_width();
        match self {
            LoraTarget::Q | LoraTarget::O => (c, c),
            LoraTarget::K | LoraTarget::V => (c, kv),
            LoraTarget::Gate | LoraTarget::Up => (c, f),
            LoraTarget::Down => (f, c),
        }
    }
}

/// Rank, alpha and targets of a LoRA adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// `alpha / rank`, the factor on `B A x`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Parses `q,k,v,o` style target lists (duplicates dropped, order kept
    /// as [`LoraTarget::ALL`]).
    pub fn parse_targets(list: &str) -> Result<Vec<LoraTarget>, ModelError> {
        let mut wanted = Vec::new();
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            wanted.push(LoraTarget::parse(part)?);
        }
        if wanted.is_empty() {
            return Err(ModelError::Config(
                "--lora-targets is empty; name some of q,k,v,o,gate,up,down".into(),
            ));
        }
        Ok(LoraTarget::ALL
            .into_iter()
            .filter(|t| wanted.contains(t))
            .collect())
    }

    fn validate(&self, cfg: &GptConfig) -> Result<(), ModelError> {
        if cfg.llama.is_none() {
            return Err(ModelError::Config(
                "LoRA needs a Llama-family model (Llama, Mistral, Qwen2); GPT-2's fused \
                 c_attn/c_fc have no per-projection weights PEFT could name, so it is refused \
                 (fine-tune a GPT-2 model in full: drop --lora-rank)"
                    .into(),
            ));
        }
        if self.rank == 0 {
            return Err(ModelError::Config("--lora-rank must be at least 1".into()));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(ModelError::Config(format!(
                "--lora-alpha must be a positive number, got {}",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(ModelError::Config("LoRA needs at least one target".into()));
        }
        Ok(())
    }
}

/// One adapted projection of one layer.
#[derive(Debug)]
pub(crate) struct Adapter {
    pub layer: usize,
    pub target: LoraTarget,
    pub in_f: usize,
    pub out_f: usize,
}

/// The adapters of a model and the scratch their ops work in.
#[derive(Debug)]
pub struct Lora {
    pub config: LoraConfig,
    pub(crate) adapters: Vec<Adapter>,
    /// `[A, B]` per adapter, in `adapters` order (PEFT names).
    pub(crate) params: Vec<Param>,
    /// Off: the model computes as its base alone (DPO's reference).
    pub(crate) enabled: bool,
    /// `[rows, r]` buffers for `A x` and `d(A x)`, sized for `scratch_rows`.
    scratch: Option<(BufId, BufId)>,
    scratch_rows: usize,
}

/// PEFT's name for one of an adapter's tensors (`A` or `B`).
pub fn peft_tensor_name(layer: usize, target: LoraTarget, ab: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{ab}.weight",
        target.path()
    )
}

impl Lora {
    fn specs(cfg: &GptConfig, config: &LoraConfig) -> (Vec<Adapter>, Vec<ParamSpec>) {
        let mut adapters = Vec::new();
        let mut specs = Vec::new();
        let spec = |name: String, shape: Vec<usize>| ParamSpec {
            name,
            shape,
            decay: true,
            init: Init::Zeros,
            hf_transposed: false,
            vocab_rows: false,
        };
        for layer in 0..cfg.n_layer {
            for &target in &config.targets {
                let (in_f, out_f) = target.features(cfg);
                specs.push(spec(
                    peft_tensor_name(layer, target, 'A'),
                    vec![config.rank, in_f],
                ));
                specs.push(spec(
                    peft_tensor_name(layer, target, 'B'),
                    vec![out_f, config.rank],
                ));
                adapters.push(Adapter {
                    layer,
                    target,
                    in_f,
                    out_f,
                });
            }
        }
        (adapters, specs)
    }

    /// The adapter of `target` in `layer`, with its `[A, B]` parameters.
    fn find(&self, layer: usize, target: LoraTarget) -> Option<(&Adapter, &Param, &Param)> {
        if !self.enabled {
            return None;
        }
        let i = self
            .adapters
            .iter()
            .position(|a| a.layer == layer && a.target == target)?;
        Some((
            &self.adapters[i],
            &self.params[2 * i],
            &self.params[2 * i + 1],
        ))
    }

    fn scratch(&self) -> (BufId, BufId) {
        self.scratch.expect("ensure_scratch ran before the forward")
    }

    /// Makes the scratch hold at least `rows` rows.
    pub(crate) fn ensure_scratch(
        &mut self,
        be: &mut BackendBox,
        rows: usize,
    ) -> Result<(), ModelError> {
        if self.scratch.is_some() && self.scratch_rows >= rows {
            return Ok(());
        }
        self.free_scratch(be)?;
        let n = rows * self.config.rank;
        let a = be.alloc_buf(DType::F32, n)?;
        let d = be.alloc_buf(DType::F32, n)?;
        self.scratch = Some((a, d));
        self.scratch_rows = rows;
        Ok(())
    }

    fn free_scratch(&mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        if let Some((a, d)) = self.scratch.take() {
            be.free(a).ok_or_err()?;
            be.free(d).ok_or_err()?;
        }
        Ok(())
    }

    pub(crate) fn release(mut self, be: &mut BackendBox) -> Result<(), ModelError> {
        self.free_scratch(be)?;
        for p in self.params.drain(..) {
            be.free(p.value).ok_or_err()?;
            if let Some(g) = p.grad {
                be.free(g).ok_or_err()?;
            }
        }
        Ok(())
    }

    /// `out[:, cols] += scale * (x @ A^T) @ B^T` for `target` of `layer`
    /// (nothing when that projection has no adapter or adapters are off).
    pub(crate) fn forward(
        &self,
        be: &mut BackendBox,
        layer: usize,
        target: LoraTarget,
        x: BufId,
        out: Cols,
        rows: usize,
    ) -> Result<(), ModelError> {
        let Some((ad, a, b)) = self.find(layer, target) else {
            return Ok(());
        };
        let r = self.config.rank;
        let (ax, _) = self.scratch();
        be.matmul(MatmulArgs {
            trans_b: true,
            ..MatmulArgs::new(ax, x, a.value, rows, r, ad.in_f)
        })
        .ok_or_err()?;
        let view = out.view(be, rows)?;
        let res = be.matmul(MatmulArgs {
            trans_b: true,
            ldc: out.stride,
            alpha: self.config.scale(),
            beta: 1.0,
            ..MatmulArgs::new(view, ax, b.value, rows, ad.out_f, r)
        });
        be.free(view).ok_or_err()?;
        res.ok_or_err()?;
        Ok(())
    }

    /// Backward of [`Lora::forward`]: `dA += d(Ax)^T x`, `dB += scale *
    /// dout^T (Ax)`, `dx += d(Ax) A` with `d(Ax) = scale * dout B`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        be: &mut BackendBox,
        layer: usize,
        target: LoraTarget,
        x: BufId,
        dout: Cols,
        dx: BufId,
        rows: usize,
    ) -> Result<(), ModelError> {
        let Some((ad, a, b)) = self.find(layer, target) else {
            return Ok(());
        };
        let r = self.config.rank;
        let scale = self.config.scale();
        let (ax, dax) = self.scratch();
        let (da, db) = (adapter_grad(a), adapter_grad(b));
        be.matmul(MatmulArgs {
            trans_b: true,
            ..MatmulArgs::new(ax, x, a.value, rows, r, ad.in_f)
        })
        .ok_or_err()?;
        let view = dout.view(be, rows)?;
        let res = be
            .matmul(MatmulArgs {
                trans_a: true,
                lda: dout.stride,
                alpha: scale,
                beta: 1.0,
                ..MatmulArgs::new(db, view, ax, ad.out_f, r, rows)
            })
            .and_then(|()| {
                be.matmul(MatmulArgs {
                    lda: dout.stride,
                    alpha: scale,
                    ..MatmulArgs::new(dax, view, b.value, rows, r, ad.out_f)
                })
            });
        be.free(view).ok_or_err()?;
        res.ok_or_err()?;
        be.matmul(MatmulArgs {
            trans_a: true,
            beta: 1.0,
            ..MatmulArgs::new(da, dax, x, r, ad.in_f, rows)
        })
        .ok_or_err()?;
        be.matmul(MatmulArgs {
            beta: 1.0,
            ..MatmulArgs::new(dx, dax, a.value, rows, ad.in_f, r)
        })
        .ok_or_err()?;
        Ok(())
    }
}

/// An adapter tensor's gradient: adapters are what LoRA trains, so they
/// always have one (only the base is frozen).
fn adapter_grad(p: &Param) -> BufId {
    p.grad
        .expect("LoRA adapter tensors always have gradient buffers")
}

/// A whole buffer `[rows, width]` as a column block.
pub(crate) fn whole(buf: BufId, width: usize) -> Cols {
    Cols {
        buf,
        stride: width,
        col: 0,
        width,
    }
}

impl Gpt {
    /// Adds fresh LoRA adapters (PEFT's init, from `seed`). Refused on a
    /// GPT-2 model, or twice. Under a mixed-precision policy the adapters
    /// stay f32 (values, gradients, no 16-bit copy: they are small) and
    /// their products read and write the 16-bit activations directly.
    pub fn add_lora(
        &mut self,
        be: &mut BackendBox,
        config: LoraConfig,
        seed: u64,
    ) -> Result<(), ModelError> {
        let (_, specs) = Lora::specs(&self.config, &config);
        let mut rng = Rng::new(seed);
        let values: Vec<Vec<f32>> = specs
            .iter()
            .map(|s| {
                let n: usize = s.shape.iter().product();
                if s.name.contains(".lora_A.") {
                    let bound = 1.0 / (s.shape[1] as f32).sqrt();
                    (0..n)
                        .map(|_| (2.0 * rng.next_f32() - 1.0) * bound)
                        .collect()
                } else {
                    vec![0.0; n]
                }
            })
            .collect();
        self.add_lora_values(be, config, &values)
    }

    /// Adds LoRA adapters holding `values` (`[A, B]` per layer and target,
    /// [`Gpt::lora_params`] order).
    pub fn add_lora_values(
        &mut self,
        be: &mut BackendBox,
        config: LoraConfig,
        values: &[Vec<f32>],
    ) -> Result<(), ModelError> {
        config.validate(&self.config)?;
        if self.lora.is_some() {
            return Err(ModelError::Config(
                "the model already has LoRA adapters".into(),
            ));
        }
        let (adapters, specs) = Lora::specs(&self.config, &config);
        if values.len() != specs.len() {
            return Err(ModelError::Input(format!(
                "{} LoRA tensors given, the config needs {}",
                values.len(),
                specs.len()
            )));
        }
        for (s, v) in specs.iter().zip(values) {
            let n: usize = s.shape.iter().product();
            if v.len() != n {
                return Err(ModelError::Input(format!(
                    "{}: {} values, shape {:?} needs {n}",
                    s.name,
                    v.len(),
                    s.shape
                )));
            }
        }
        let params = upload_params(be, &specs, values, true)?;
        // The base is frozen from here on: its gradient buffers would only
        // cost memory and weight-gradient products no optimizer reads.
        self.freeze_base(be)?;
        self.lora = Some(Lora {
            config,
            adapters,
            params,
            enabled: true,
            scratch: None,
            scratch_rows: 0,
        });
        Ok(())
    }

    /// The adapters, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The adapter tensors (`[A, B]` per layer and target), empty without LoRA.
    pub fn lora_params(&self) -> &[Param] {
        self.lora.as_ref().map_or(&[], |l| &l.params)
    }

    /// What an optimizer updates: the adapters under LoRA (the base is
    /// frozen), else every parameter.
    pub fn trainable_params(&self) -> &[Param] {
        match &self.lora {
            Some(l) => &l.params,
            None => &self.params,
        }
    }

    /// Turns the adapters on or off (off: the frozen base alone, e.g. as
    /// DPO's reference). A no-op without LoRA.
    pub fn set_lora_enabled(&mut self, on: bool) {
        if let Some(l) = self.lora.as_mut() {
            l.enabled = on;
        }
    }

    /// Makes the adapter scratch cover `rows` rows (before a forward).
    pub(crate) fn prepare_lora(
        &mut self,
        be: &mut BackendBox,
        rows: usize,
    ) -> Result<(), ModelError> {
        match self.lora.as_mut() {
            Some(l) => l.ensure_scratch(be, rows),
            None => Ok(()),
        }
    }
}
