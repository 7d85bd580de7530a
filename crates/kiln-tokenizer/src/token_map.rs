//! Token bytes -> id. Nearly every token is at most 15 bytes; those are
//! keyed by their bytes and length packed into one `u128`, so a lookup
//! hashes and compares two machine words instead of calling `memcmp` on a
//! heap slice (whole-piece lookups during encoding and the pair table's
//! construction at load time are dominated by it otherwise). Tokens of up
//! to 7 bytes, two thirds of a vocabulary, are keyed by one word in a map
//! of their own with entries half the size. Longer tokens keep byte-slice
//! keys.

use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Longest token kept in the packed maps.
const SHORT: usize = 15;
/// Longest token kept in the one-word map.
const TINY: usize = 7;

#[derive(Debug, Clone, Default)]
pub(crate) struct TokenMap {
    /// Up to 7 bytes, keyed by one word: 16-byte entries, half the size of
    /// `short`'s, for the two thirds of the tokens that most lookups hit
    /// (cache misses on the entries were most of the lookup time).
    tiny: HashMap<u64, u32, BuildHasherDefault<PackedHasher>>,
    short: HashMap<u128, u32, BuildHasherDefault<PackedHasher>>,
    long: FxHashMap<Box<[u8]>, u32>,
}

/// `pack` for up to 7 bytes: the length in the top byte, the bytes below.
#[inline(always)]
fn pack_tiny(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n <= TINY);
    let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
    let lo = match n {
        0 => 0,
        1..=3 => b[0] as u64 | (b[n / 2] as u64) << 8 | (b[n - 1] as u64) << 16,
        // Overlapping words agree on the bytes they share.
        _ => half(0) | half(n - 4) << ((n - 4) * 8),
    };
    lo | (n as u64) << 56
}

/// A key distinct for distinct slices of up to 15 bytes: the length in the
/// top byte, the bytes read as (possibly overlapping) little-endian words
/// below it. With the length known, the words cover every byte, so two
/// slices share a key only if they are equal. No copy, no `memcpy` call.
#[inline(always)]
fn pack(b: &[u8]) -> u128 {
    let n = b.len();
    debug_assert!(n <= SHORT);
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
    let (lo, hi) = match n {
        0 => (0, 0),
        1..=3 => (
            b[0] as u64 | (b[n / 2] as u64) << 8 | (b[n - 1] as u64) << 16,
            0,
        ),
        4..=7 => (half(0) | half(n - 4) << 32, 0),
        8 => (word(0), 0),
        // The last word without the bytes it shares with the first.
        _ => (word(0), word(n - 8) >> ((16 - n) * 8)),
    };
    (lo as u128) | (hi as u128) << 64 | (n as u128) << 120
}

/// Hashes a packed key: one multiply-xorshift over both words (FxHash of a
/// u128 left the length byte and the high bytes weakly mixed, and the map
/// probed long chains).
#[derive(Default)]
struct PackedHasher(u64);

impl Hasher for PackedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    #[inline(always)]
    fn write_u128(&mut self, x: u128) {
        let (lo, hi) = (x as u64, (x >> 64) as u64);
        let h = (lo ^ hi.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xd6e8_feb8_6659_fd93);
        self.0 = h ^ (h >> 32);
    }

    #[inline(always)]
    fn write_u64(&mut self, x: u64) {
        let h = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
        self.0 = h ^ (h >> 32);
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl TokenMap {
    pub fn with_capacity(n: usize) -> Self {
        // Two thirds of a BPE vocabulary is up to 7 bytes long.
        let mut tiny = HashMap::default();
        tiny.reserve(n * 2 / 3);
        let mut short = HashMap::default();
        short.reserve(n / 3);
        TokenMap {
            tiny,
            short,
            long: FxHashMap::default(),
        }
    }

    #[inline(always)]
    pub fn get(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() <= TINY {
            self.tiny.get(&pack_tiny(bytes)).copied()
        } else if bytes.len() <= SHORT {
            self.short.get(&pack(bytes)).copied()
        } else {
            self.long.get(bytes).copied()
        }
    }

    /// Inserts, returning the id `bytes` had before.
    pub fn insert(&mut self, bytes: &[u8], id: u32) -> Option<u32> {
        if bytes.len() <= TINY {
            self.tiny.insert(pack_tiny(bytes), id)
        } else if bytes.len() <= SHORT {
            self.short.insert(pack(bytes), id)
        } else {
            self.long.insert(bytes.into(), id)
        }
    }

    pub fn len(&self) -> usize {
        self.tiny.len() + self.short.len() + self.long.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths_and_zero_bytes_are_told_apart() {
        let mut m = TokenMap::default();
        assert_eq!(m.insert(b"", 0), None);
        assert_eq!(m.insert(b"\0", 1), None);
        assert_eq!(m.insert(b"\0\0", 2), None);
        assert_eq!(m.insert(&[7u8; 7], 6), None);
        assert_eq!(m.insert(&[7u8; 8], 7), None);
        assert_eq!(m.insert(&[7u8; 15], 3), None);
        assert_eq!(m.insert(&[7u8; 16], 4), None);
        assert_eq!(m.insert(&[7u8; 40], 5), None);
        assert_eq!(m.insert(b"\0", 9), Some(1));
        assert_eq!(m.get(b""), Some(0));
        assert_eq!(m.get(b"\0"), Some(9));
        assert_eq!(m.get(b"\0\0"), Some(2));
        assert_eq!(m.get(b"\0\0\0"), None);
        assert_eq!(m.get(&[7u8; 7]), Some(6));
        assert_eq!(m.get(&[7u8; 8]), Some(7));
        assert_eq!(m.get(&[7u8; 6]), None);
        assert_eq!(m.get(&[7u8; 15]), Some(3));
        assert_eq!(m.get(&[7u8; 16]), Some(4));
        assert_eq!(m.get(&[7u8; 40]), Some(5));
        assert_eq!(m.len(), 8);
    }

    proptest! {
        /// Agrees with a plain map of byte vectors on any keys.
        #[test]
        fn agrees_with_a_byte_keyed_map(
            keys in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..20), 0..60),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..20), 0..60),
        ) {
            let mut m = TokenMap::default();
            let mut reference = std::collections::HashMap::new();
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(m.insert(k, i as u32), reference.insert(k.clone(), i as u32));
            }
            prop_assert_eq!(m.len(), reference.len());
            for p in probes.iter().chain(&keys) {
                prop_assert_eq!(m.get(p), reference.get(p).copied());
            }
        }
    }
}
