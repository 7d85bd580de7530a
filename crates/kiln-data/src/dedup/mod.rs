//! Deduplication: exact (hash of the normalised text) and near-duplicate
//! (MinHash-LSH with union-find clusters). Both keep the earliest document
//! (in input order) of each group, so results do not depend on thread count.
//! Line dedup (Bloom filter) removes repeated lines from later documents.

pub mod bloom;
pub mod exact;
pub mod lines;
pub mod minhash;
mod minhash_params;
pub mod union_find;
