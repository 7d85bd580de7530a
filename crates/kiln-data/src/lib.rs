//! Corpus curation: readers, normalisation, quality filters, dedup,
//! decontamination, and the token shard format.

pub mod shard;
