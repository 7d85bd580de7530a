//! [`Counting`]: a backend wrapper that counts calls per method, so a test
//! can hold a training step to "at most one host read per optimizer step".
//! It forwards every method through `kiln_abi::for_each_backend_method!`, so
//! a new op is counted without touching this file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_abi::abi_stable::sabi_trait::TD_Opaque;
use kiln_abi::method_types::*;
use kiln_abi::{Backend, BackendBox, Backend_TO, METHODS};

/// Calls per method, shared between the wrapper and the test that reads them.
#[derive(Clone)]
pub struct CallCounts(Arc<Vec<AtomicU64>>);

impl CallCounts {
    fn new() -> CallCounts {
        CallCounts(Arc::new(
            METHODS.iter().map(|_| AtomicU64::new(0)).collect(),
        ))
    }

    fn bump(&self, method: &str) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls of `method` so far (0 for a name that is not a method).
    pub fn get(&self, method: &str) -> u64 {
        METHODS
            .iter()
            .position(|m| *m == method)
            .map_or(0, |i| self.0[i].load(Ordering::Relaxed))
    }

    /// Copies of device data to the host: `download` and `host_region`.
    pub fn host_reads(&self) -> u64 {
        self.get("download") + self.get("host_region")
    }

    pub fn downloads(&self) -> u64 {
        self.get("download")
    }

    pub fn synchronizations(&self) -> u64 {
        self.get("synchronize")
    }

    /// Every method called at least once, with its count, in `METHODS` order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        METHODS
            .iter()
            .zip(self.0.iter())
            .map(|(m, c)| (*m, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    /// Sets every count back to zero (e.g. after warm-up steps).
    pub fn reset(&self) {
        for c in self.0.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Wraps a backend and counts every call.
pub struct Counting<B> {
    inner: B,
    counts: CallCounts,
}

impl<B: Backend> Counting<B> {
    pub fn new(inner: B) -> Counting<B> {
        Counting {
            inner,
            counts: CallCounts::new(),
        }
    }

    /// The shared counters (read them while the wrapper is in use).
    pub fn counts(&self) -> CallCounts {
        self.counts.clone()
    }
}

impl Counting<BackendBox> {
    /// `backend` wrapped and boxed again, with its counters.
    pub fn boxed(backend: BackendBox) -> (BackendBox, CallCounts) {
        let wrapper = Counting::new(backend);
        let counts = wrapper.counts();
        (Backend_TO::from_value(wrapper, TD_Opaque), counts)
    }
}

macro_rules! counting_impl {
    ($( $(#[$attr:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl<B: Backend> Backend for Counting<B> {
            $(
                fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                    self.counts.bump(stringify!($name));
                    self.inner.$name($($arg),*)
                }
            )*
        }
    };
}

kiln_abi::for_each_backend_method!(counting_impl);
