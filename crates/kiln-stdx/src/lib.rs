//! Small extensions of `std` shared by every kiln crate (like rust-analyzer's
//! `stdx`). Depends on no kiln crate: only `libc` (flock) and `xxhash-rust`.

pub mod fingerprint;
pub mod fs;
pub mod lock;
