//! [`Guarded`]: a [`Backend`] wrapper that keeps panics on the plugin's side
//! of the FFI boundary.
//!
//! A panic that reaches an abi_stable vtable shim ends the host process
//! (abi_stable prints "Attempted to panic across the ffi boundary" and
//! exits), so every method runs its body in [`guard`], whatever the wrapped
//! backend does itself. The same wrapper injects faults for tests
//! (`panic_on=METHOD`, any entry of [`kiln_abi::METHODS`]).
//!
//! Every method is forwarded through `kiln_abi::for_each_backend_method!`:
//! an op added to kiln-abi is guarded here without touching this file.

use kiln_abi::guard::guard;
use kiln_abi::method_types::*;
use kiln_abi::{Backend, METHODS};

/// Wraps a backend so that none of its panics cross the boundary.
pub struct Guarded<B> {
    inner: B,
    panic_on: Option<String>,
}

impl<B: Backend> Guarded<B> {
    /// `panic_on`: a method name from [`METHODS`] that panics before running
    /// (fault injection for tests of the host); `None` in normal use.
    pub fn new(inner: B, panic_on: Option<String>) -> Guarded<B> {
        debug_assert!(panic_on.as_deref().is_none_or(|m| METHODS.contains(&m)));
        Guarded { inner, panic_on }
    }

    fn inject(&self, method: &str) {
        if self.panic_on.as_deref() == Some(method) {
            panic!("injected fault (panic_on={method})");
        }
    }
}

macro_rules! guarded_impl {
    ($( $(#[$attr:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl<B: Backend> Backend for Guarded<B> {
            $(
                fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                    guard(stringify!($name), || {
                        self.inject(stringify!($name));
                        self.inner.$name($($arg),*)
                    })
                }
            )*
        }
    };
}

kiln_abi::for_each_backend_method!(guarded_impl);
