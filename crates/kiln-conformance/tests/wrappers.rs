//! The suite run through wrapper backends: `Counting` forwards every method
//! faithfully (the CPU backend still conforms through it, and every call is
//! counted), and a backend with one deliberately broken op fails, with that
//! op and only that op named.

use kiln_abi::abi_stable::sabi_trait::TD_Opaque;
use kiln_abi::method_types::*;
use kiln_abi::{Backend, BackendBox, Backend_TO, METHODS};
use kiln_conformance::{run, Counting, Outcome};

#[test]
fn counting_forwards_every_method_and_counts_each_call() {
    let (be, counts) = Counting::boxed(kiln_tensor::cpu_backend(Some(1)));
    let first = std::sync::Mutex::new(Some(be));
    // The first backend is the counted one; later ones (after a caught
    // panic) are plain.
    let report = run(|| {
        first
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| kiln_tensor::cpu_backend(Some(1)))
    });
    assert!(report.all_passed(), "{report}");
    for m in [
        "info",
        "alloc",
        "upload",
        "download",
        "matmul",
        "attention_backward",
        "adamw",
    ] {
        assert!(
            counts.get(m) > 0,
            "{m} not counted: {:?}",
            counts.snapshot()
        );
    }
    assert_eq!(
        counts.host_reads(),
        counts.downloads() + counts.get("host_region")
    );
    assert_eq!(counts.get("no_such_method"), 0);
    counts.reset();
    assert!(counts.snapshot().is_empty());
}

/// Forwards every method, but `matmul` computes 5% too much.
struct BrokenMatmul(BackendBox);

macro_rules! broken_impl {
    ($( $(#[$attr:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Backend for BrokenMatmul {
            $( fn $name(&mut self $(, $arg: $ty)*) -> $ret { perturb!($name, self $(, $arg)*) } )*
        }
    };
}

macro_rules! perturb {
    (matmul, $self:ident, $args:ident) => {{
        let mut args = $args;
        args.alpha *= 1.05;
        $self.0.matmul(args)
    }};
    ($name:ident, $self:ident $(, $arg:ident)*) => {
        $self.0.$name($($arg),*)
    };
}

kiln_abi::for_each_backend_method!(broken_impl);

#[test]
fn a_broken_op_fails_the_suite_and_is_named() {
    let report =
        run(|| Backend_TO::from_value(BrokenMatmul(kiln_tensor::cpu_backend(Some(1))), TD_Opaque));
    assert!(
        !report.all_passed(),
        "a 5% error in matmul passed:\n{report}"
    );
    assert_eq!(report.failing_ops(), vec!["matmul"], "{report}");
    let failure = report.failures()[0];
    assert!(failure.name.starts_with("matmul"), "{}", failure.name);
    match &failure.outcome {
        Outcome::Fail(msg) => assert!(msg.contains("worst at"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Everything else still passed or was skipped.
    assert!(report.passed() > 100, "{}", report.summary());
    assert!(METHODS.contains(&"matmul"));
}
