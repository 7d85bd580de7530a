//! GPT-2's reversible byte <-> unicode-character map (`bytes_to_unicode`),
//! used by vocab.json, merges.txt and tokenizer.json to store arbitrary bytes
//! as printable strings.

use std::sync::OnceLock;

struct Maps {
    to_char: [char; 256],
    /// Indexed by code point; only 0..=0x143 are used.
    to_byte: Vec<Option<u8>>,
}

fn maps() -> &'static Maps {
    static MAPS: OnceLock<Maps> = OnceLock::new();
    MAPS.get_or_init(|| {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut to_char = ['\0'; 256];
        let mut next = 0u32;
        for b in 0..=255u8 {
            to_char[b as usize] = if printable(b) {
                b as char
            } else {
                let c = char::from_u32(0x100 + next).expect("valid code point");
                next += 1;
                c
            };
        }
        let mut to_byte = vec![None; 0x144];
        for (b, c) in to_char.iter().enumerate() {
            to_byte[*c as usize] = Some(b as u8);
        }
        Maps { to_char, to_byte }
    })
}

/// The printable character standing for byte `b`.
pub fn byte_to_char(b: u8) -> char {
    maps().to_char[b as usize]
}

/// Bytes -> GPT-2 unicode string.
pub fn bytes_to_string(bytes: &[u8]) -> String {
    let m = maps();
    bytes.iter().map(|&b| m.to_char[b as usize]).collect()
}

/// GPT-2 unicode string -> bytes; `None` if a character is outside the map.
pub fn string_to_bytes(s: &str) -> Option<Vec<u8>> {
    let m = maps();
    s.chars()
        .map(|c| m.to_byte.get(c as usize).copied().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_points_and_round_trip() {
        assert_eq!(byte_to_char(b' '), '\u{120}'); // Ġ
        assert_eq!(byte_to_char(b'\n'), '\u{10A}'); // Ċ
        assert_eq!(byte_to_char(b'a'), 'a');
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(string_to_bytes(&bytes_to_string(&all)).unwrap(), all);
        assert_eq!(string_to_bytes("a\u{4e2d}"), None);
    }
}
