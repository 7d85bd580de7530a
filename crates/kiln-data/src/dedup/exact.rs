//! Exact dedup: a 128-bit hash of the normalised text; a document whose hash
//! was seen before is a duplicate. 16 bytes of index per distinct document.

use serde::Deserialize;
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_128;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExactDedup {
    pub enabled: bool,
}

impl Default for ExactDedup {
    fn default() -> Self {
        ExactDedup { enabled: true }
    }
}

pub fn text_hash(text: &str) -> u128 {
    xxh3_128(text.as_bytes())
}

/// For each hash (in input order), `Some(i)` when it duplicates document
/// `i` (the first with that hash), `None` for first occurrences.
pub fn find_exact_duplicates(hashes: &[u128]) -> Vec<Option<u32>> {
    let mut first: HashMap<u128, u32> = HashMap::with_capacity(hashes.len());
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| match first.get(h) {
            Some(&j) => Some(j),
            None => {
                first.insert(*h, i as u32);
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_later_copies_only() {
        let h: Vec<u128> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .map(|t| text_hash(t))
            .collect();
        assert_eq!(
            find_exact_duplicates(&h),
            vec![None, None, Some(0), None, Some(1), Some(0)]
        );
        assert_ne!(text_hash("a"), text_hash("a "));
    }
}
