//! One conformance suite for every kiln backend.
//!
//! Give it a factory that makes a fresh backend (the built-in CPU backend, a
//! plugin loaded at run time, a wrapper) and it checks every method of
//! `kiln_abi::METHODS`, as burn's and candle's per-device test suites do:
//!
//! - each op against an f64 reference implemented here (small random
//!   shapes with odd sizes), and each backward op against central finite
//!   differences in f64 of that reference (whose forward the backend just
//!   matched), so a backward agrees with the backend's own forward;
//! - the contracts: each operand in turn a never-allocated id, a freed
//!   buffer, a wrong dtype, one element too small; the call must be an
//!   error naming the op, never success or a panic (panics are caught and
//!   reported as failures);
//! - views: every case again with each operand a view at an odd offset of a
//!   larger buffer, and a view of a view, checking that nothing outside a
//!   view changes; upload/download of views; use after the parent is freed;
//! - every float dtype `info()` claims for each op, at the tolerances in
//!   [`values`] (f32 1e-5, bf16 1e-2, f16 2e-3, relative to max-abs);
//! - the step statistics and rounding of `kiln_abi::stats` and
//!   `kiln_abi::rounding`, bit for bit;
//! - determinism: the same call twice gives the same bits.
//!
//! Ops a backend does not list in `info().ops` are skipped, not failed.
//! [`run`] returns a [`Report`]; [`assert_conforms`] is the `#[test]` entry
//! that panics listing every failure. [`Counting`] is a wrapper backend that
//! counts calls per method (host reads, synchronisations).

pub mod case;
pub mod checks;
mod counting;
pub mod env;
pub mod fd;
pub mod ops;
mod report;
pub mod rng;
pub mod values;

use std::panic::{catch_unwind, AssertUnwindSafe};

use kiln_abi::{BackendBox, BackendInfo, DType};

pub use counting::{CallCounts, Counting};
pub use report::{CheckResult, Outcome, Report};

use case::{check, check_contracts, check_determinism, panic_message, OpCase, Placement};
use env::Env;
use rng::Rng;

/// Runs the whole suite against backends made by `factory`.
pub fn run(factory: impl Fn() -> BackendBox) -> Report {
    Runner::new(&factory).run()
}

/// The `#[test]` entry: panics listing every failure (skips are fine).
pub fn assert_conforms(factory: impl Fn() -> BackendBox) {
    let report = run(factory);
    println!("{}", report.summary());
    if !report.all_passed() {
        panic!(
            "{} conformance checks failed (ops: {}):\n{report}",
            report.failures().len(),
            report.failing_ops().join(", ")
        );
    }
}

struct Runner<'a> {
    factory: &'a dyn Fn() -> BackendBox,
    report: Report,
}

impl<'a> Runner<'a> {
    fn new(factory: &'a dyn Fn() -> BackendBox) -> Runner<'a> {
        Runner {
            factory,
            report: Report::default(),
        }
    }

    fn run(mut self) -> Report {
        let made = catch_unwind(AssertUnwindSafe(|| {
            let mut be = (self.factory)();
            let info = be.info().into_result();
            (be, info)
        }));
        let (mut be, info) = match made {
            Ok((be, Ok(info))) => (be, info),
            Ok((_, Err(e))) => {
                self.report
                    .push("info", "info", Outcome::Fail(format!("info() failed: {e}")));
                return self.report;
            }
            Err(p) => {
                self.report.push(
                    "info",
                    "info",
                    Outcome::Fail(format!(
                        "making the backend panicked: {}",
                        panic_message(&p)
                    )),
                );
                return self.report;
            }
        };
        self.report.backend = format!("{} ({})", info.name, info.device);
        for (op, what, f) in checks::buffers::CHECKS {
            self.guarded(&mut be, op, format!("{op}: {what}"), |be| f(be, &info));
        }
        for spec in ops::OPS {
            self.op(&mut be, &info, spec);
        }
        self.comm(&mut be, &info);
        self.report
    }

    /// Runs one check, catching a panic (then the backend is replaced).
    fn guarded(
        &mut self,
        be: &mut BackendBox,
        op: &'static str,
        name: String,
        f: impl FnOnce(&mut BackendBox) -> Result<(), String>,
    ) {
        let outcome = match catch_unwind(AssertUnwindSafe(|| f(be))) {
            Ok(Ok(())) => Outcome::Pass,
            Ok(Err(msg)) => Outcome::Fail(msg),
            Err(p) => {
                *be = (self.factory)();
                Outcome::Fail(format!("panicked: {}", panic_message(&p)))
            }
        };
        self.report.push(op, name, outcome);
    }

    fn cases(
        &mut self,
        be: &mut BackendBox,
        info: &BackendInfo,
        spec: &ops::OpSpec,
        dt: DType,
    ) -> Option<Vec<OpCase>> {
        let mut env = Env {
            be,
            info,
            rng: Rng::new(seed(spec.op, dt)),
        };
        let built = catch_unwind(AssertUnwindSafe(|| (spec.build)(&mut env, dt)));
        let failure = match built {
            Ok(Ok(cases)) => return Some(cases),
            Ok(Err(msg)) => msg,
            Err(p) => {
                *be = (self.factory)();
                format!("panicked: {}", panic_message(&p))
            }
        };
        self.report.push(
            spec.op,
            format!("{} [{dt}]: setting up the cases", spec.op),
            Outcome::Fail(failure),
        );
        None
    }

    fn op(&mut self, be: &mut BackendBox, info: &BackendInfo, spec: &ops::OpSpec) {
        if !info.ops.iter().any(|s| s.name.as_str() == spec.op) {
            let probe = self
                .cases(be, info, spec, DType::F32)
                .and_then(|c| c.into_iter().find(|c| !c.is_must_fail()));
            let outcome = match probe
                .map(|case| catch_unwind(AssertUnwindSafe(|| check(be, &case, Placement::Plain))))
            {
                Some(Err(p)) => {
                    *be = (self.factory)();
                    Outcome::Fail(format!(
                        "not listed in info().ops, and a call panicked: {}",
                        panic_message(&p)
                    ))
                }
                Some(Ok(Ok(()))) => {
                    Outcome::Skip("not listed in info().ops (though a call ran)".into())
                }
                _ => Outcome::Skip("not listed in info().ops".into()),
            };
            self.report.push(spec.op, spec.op.to_string(), outcome);
            return;
        }
        let dtypes: Vec<DType> = if spec.generic {
            [DType::F32, DType::BF16, DType::F16]
                .into_iter()
                .filter(|&d| info.supports(spec.op, d))
                .collect()
        } else {
            vec![DType::F32]
        };
        for dt in dtypes {
            let Some(cases) = self.cases(be, info, spec, dt) else {
                continue;
            };
            for case in &cases {
                let name = |variant: &str| format!("{} [{dt}] {}: {variant}", case.op, case.label);
                if case.is_must_fail() {
                    self.guarded(be, spec.op, name("refused"), |be| {
                        check(be, case, Placement::Plain)
                    });
                    continue;
                }
                self.guarded(be, spec.op, name("f64 reference"), |be| {
                    check(be, case, Placement::Plain)
                });
                self.guarded(be, spec.op, name("views"), |be| {
                    check(be, case, Placement::View)
                });
                self.guarded(be, spec.op, name("views of views"), |be| {
                    check(be, case, Placement::ViewOfView)
                });
                if dt == DType::F32 {
                    self.guarded(be, spec.op, name("determinism"), |be| {
                        check_determinism(be, case)
                    });
                    let factory = self.factory;
                    self.guarded(be, spec.op, name("contracts"), |be| {
                        check_contracts(be, factory, case)
                    });
                }
            }
        }
    }

    fn comm(&mut self, be: &mut BackendBox, info: &BackendInfo) {
        let listed: Vec<&'static str> = checks::comm::METHODS
            .iter()
            .copied()
            .filter(|m| info.ops.iter().any(|s| s.name.as_str() == *m))
            .collect();
        for &m in checks::comm::METHODS {
            if listed.contains(&m) {
                continue;
            }
            let outcome = match catch_unwind(AssertUnwindSafe(|| checks::comm::probe(be, m))) {
                Err(p) => {
                    *be = (self.factory)();
                    Outcome::Fail(format!(
                        "not listed in info().ops, and a call panicked: {}",
                        panic_message(&p)
                    ))
                }
                Ok(_) => Outcome::Skip("not listed in info().ops".into()),
            };
            self.report.push(m, m.to_string(), outcome);
        }
        if !listed.is_empty() {
            let op = listed[0];
            self.guarded(be, op, format!("{}: one rank", listed.join(", ")), |be| {
                checks::comm::world_of_one(be, info)
            });
        }
    }
}

/// A fixed seed per (op, dtype): every run sees the same data.
fn seed(op: &str, dt: DType) -> u64 {
    op.bytes()
        .chain(dt.name().bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_method_has_checks() {
        let covered: Vec<&str> = checks::buffers::CHECKS
            .iter()
            .map(|c| c.0)
            .chain(ops::OPS.iter().map(|s| s.op))
            .chain(checks::comm::METHODS.iter().copied())
            .collect();
        let missing: Vec<&&str> = kiln_abi::METHODS
            .iter()
            .filter(|m| !covered.contains(m))
            .collect();
        assert!(
            missing.is_empty(),
            "methods without conformance checks: {missing:?}"
        );
        for op in ops::OPS {
            assert!(
                kiln_abi::op_names().any(|o| o == op.op),
                "{} is not an op",
                op.op
            );
        }
    }
}
