//! Benchmarks live in `benches/`; this library holds shared helpers.
