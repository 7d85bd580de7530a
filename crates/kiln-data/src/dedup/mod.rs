//! Deduplication: exact (hash of the normalised text) and near-duplicate
//! (MinHash-LSH with union-find clusters). Both keep the earliest document
//! (in input order) of each group, so results do not depend on thread count.

pub mod exact;
pub mod minhash;
mod minhash_params;
pub mod union_find;
