//! Small extensions of `std` shared by every kiln crate (like rust-analyzer's
//! `stdx`). Depends on nothing.

pub mod fs;
