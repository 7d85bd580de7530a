//! Panics must not cross the FFI boundary: abi_stable aborts the whole host
//! process when one does. Every exported function and every `Backend` method
//! of a plugin runs its body inside [`guard`], which turns a panic into an
//! `RErr` naming the operation.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RString};

/// Runs `f`, converting a panic into `RErr("panic in {what}: {message}")`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> RResult<T, RString>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            RResult::RErr(RString::from(format!("panic in {what}: {msg}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_error() {
        let r: RResult<(), RString> = guard("matmul", || panic!("boom"));
        assert_eq!(r.unwrap_err().as_str(), "panic in matmul: boom");
        let ok: RResult<u32, RString> = guard("x", || RResult::ROk(3));
        assert_eq!(ok.unwrap(), 3);
    }
}
