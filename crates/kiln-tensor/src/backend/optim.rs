//! AdamW with the device-side step control and the 16-bit working copy.

use kiln_abi::stats::{STAT_GRAD_FACTOR, STAT_SKIP, STAT_SLOTS};
use kiln_abi::{AdamWArgs, Rounding};

use super::CpuBackend;
use crate::ops::{self, cast::Round};
use crate::validate::{ensure, RawFloatMut};

impl CpuBackend {
    pub(super) fn adamw_impl(&mut self, a: AdamWArgs) -> Result<(), String> {
        let op = "adamw";
        ensure(a.step >= 1, op, || "step counts from 1, got 0".into())?;
        let outs = [
            ("params", Some(a.params)),
            ("m", Some(a.m)),
            ("v", Some(a.v)),
            ("params_16", a.params_16.into_option()),
        ];
        let ins = [
            ("grads", Some(a.grads)),
            ("control", a.control.into_option()),
        ];
        let round = match a.rounding {
            Rounding::NearestEven => Round::NearestEven,
            Rounding::Stochastic => Round::Stochastic { seed: a.seed },
        };
        self.exec(op, &outs, &ins, |o| {
            let control = o.f32_opt("control", STAT_SLOTS)?;
            let g = o.widened("grads", a.n)?;
            let (p, m, v) = (
                o.f32_mut("params", a.n)?,
                o.f32_mut("m", a.n)?,
                o.f32_mut("v", a.n)?,
            );
            let p16 = if o.has("params_16") {
                Some(o.raw_float_mut("params_16", a.n)?)
            } else {
                None
            };
            // A skipped step (non-finite loss or gradients) writes nothing.
            if control.is_some_and(|c| c[STAT_SKIP] != 0.0) {
                return Ok(());
            }
            let hp = ops::adamw::Hyper {
                lr: a.lr,
                beta1: a.beta1,
                beta2: a.beta2,
                eps: a.eps,
                weight_decay: a.weight_decay,
                grad_scale: a.grad_scale,
                grad_factor: control.map(|c| c[STAT_GRAD_FACTOR]),
                step: a.step,
            };
            ops::adamw::step(p, &g, m, v, hp);
            match p16 {
                None => {}
                Some(RawFloatMut::F32(d)) => d.copy_from_slice(p),
                Some(RawFloatMut::BF16(d)) => ops::cast::to_bf16(d, p, round),
                Some(RawFloatMut::F16(d)) => ops::cast::to_f16(d, p, round),
            }
            Ok(())
        })
    }
}
