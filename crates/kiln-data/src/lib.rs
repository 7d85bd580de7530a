//! Corpus curation: readers, normalisation, quality filters, dedup,
//! decontamination, and the token shard format.
//!
//! The whole run is [`curate::curate`]; each stage is also usable alone
//! (see docs/data.md for the filters and their defaults).

pub mod config;
pub mod curate;
pub mod decontam;
pub mod dedup;
pub mod doc;
pub mod fasttext;
pub mod filters;
mod fxhash;
pub mod inspect;
pub mod normalize;
pub mod pii;
pub mod process;
pub mod read;
pub mod read_parquet;
pub mod shard;
pub mod split;
pub mod stats;
pub mod words;

pub use config::CurateConfig;
pub use curate::{curate, CurateOptions, CurateReport, Progress};
pub use doc::{Document, Origin};
