//! Workspace integration tests: one crate, one module per area.
