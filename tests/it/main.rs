//! Workspace integration tests: one crate, one module per area.

mod gpt2_reference;
mod plugins;
