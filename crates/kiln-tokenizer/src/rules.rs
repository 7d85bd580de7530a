//! The two merge rules as the merge loop sees them ([`Pairs`]).

use crate::bpe::{BytePairs, PairTable, Pairs};
use crate::token_map::TokenMap;

/// tiktoken rank files: two parts merge when their joined bytes are a
/// token, and that token's rank is its id. Looking the bytes up in the
/// token map is the whole rule, so loading builds no pair table (for o200k
/// it took as long as encoding 3 MB), and encoding probes the map that the
/// whole-piece lookups keep warm.
pub(crate) struct RankRule<'a> {
    pub map: &'a TokenMap,
    pub max_token_len: usize,
    pub bytes: &'a BytePairs,
}

impl RankRule<'_> {
    /// `packed` for the token with these bytes, if there is one.
    #[inline(always)]
    pub fn lookup(map: &TokenMap, joined: &[u8]) -> u64 {
        map.get(joined)
            .map_or(u64::MAX, |id| (id as u64) << 32 | id as u64)
    }
}

impl Pairs for RankRule<'_> {
    #[inline(always)]
    fn packed(&self, _: u32, _: u32, joined: &[u8]) -> u64 {
        if joined.len() > self.max_token_len {
            return u64::MAX;
        }
        Self::lookup(self.map, joined)
    }

    #[inline(always)]
    fn byte_pair(&self, a: u8, b: u8) -> u64 {
        self.bytes.get(a, b)
    }
}

/// Merge lists: an explicit table of `(left id, right id)`.
pub(crate) struct TableRule<'a> {
    pub table: &'a PairTable,
    pub bytes: &'a BytePairs,
}

impl Pairs for TableRule<'_> {
    #[inline(always)]
    fn packed(&self, left: u32, right: u32, _: &[u8]) -> u64 {
        self.table.packed(left, right)
    }

    #[inline(always)]
    fn byte_pair(&self, a: u8, b: u8) -> u64 {
        self.bytes.get(a, b)
    }
}
