//! Token shards in llm.c's `.bin` format (also nanoGPT-compatible):
//! a header of 256 little-endian i32 (`[0]` magic 20240520, `[1]` version,
//! `[2]` token count, the rest zero), then the tokens: u16 for version 1,
//! u32 for version 2 (vocabularies over 65,535).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const SHARD_MAGIC: i32 = 20240520;
pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// A shard could not be read or written; says which file and why.
#[derive(Debug)]
pub struct ShardError {
    pub path: PathBuf,
    pub problem: String,
}

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token shard {}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for ShardError {}

fn err(path: &Path, problem: impl Into<String>) -> ShardError {
    ShardError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// What a shard header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// 1: u16 tokens, 2: u32 tokens.
    pub version: i32,
    pub tokens: usize,
}

impl ShardHeader {
    pub fn token_bytes(&self) -> usize {
        if self.version == 1 {
            2
        } else {
            4
        }
    }
}

/// Encodes a shard: version 1 when every token fits in u16, else version 2.
pub fn encode_shard(tokens: &[u32], out: &mut impl Write) -> io::Result<()> {
    let version = if tokens.iter().all(|&t| t <= u16::MAX as u32) {
        1
    } else {
        2
    };
    let count = i32::try_from(tokens.len())
        .map_err(|_| io::Error::other("more than 2^31-1 tokens in one shard; split it"))?;
    let mut header = [0i32; HEADER_INTS];
    header[0] = SHARD_MAGIC;
    header[1] = version;
    header[2] = count;
    for h in header {
        out.write_all(&h.to_le_bytes())?;
    }
    // Little-endian bytes a block at a time: one write_all per token cost
    // more than encoding them (`kiln tokenizer encode` of 30 MB).
    let mut block = Vec::with_capacity(4 << 14);
    for chunk in tokens.chunks(1 << 14) {
        block.clear();
        if version == 1 {
            block.extend(chunk.iter().flat_map(|&t| (t as u16).to_le_bytes()));
        } else {
            block.extend(chunk.iter().flat_map(|&t| t.to_le_bytes()));
        }
        out.write_all(&block)?;
    }
    Ok(())
}

/// Writes a shard atomically (complete or absent).
pub fn write_shard(path: &Path, tokens: &[u32]) -> Result<(), ShardError> {
    kiln_stdx::fs::write_atomic_with(path, |w| encode_shard(tokens, w))
        .map_err(|e| err(path, format!("cannot write: {e}")))
}

/// Parses and checks a header.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<ShardHeader, ShardError> {
    if bytes.len() < HEADER_BYTES {
        return Err(err(
            path,
            format!(
                "file is {} bytes, shorter than the {HEADER_BYTES}-byte header; \
                 is it a kiln/llm.c .bin shard?",
                bytes.len()
            ),
        ));
    }
    let int = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    if int(0) != SHARD_MAGIC {
        return Err(err(
            path,
            format!(
                "bad magic {} (expected {SHARD_MAGIC}); not an llm.c token shard \
                 (write one with `kiln tokenizer encode --output FILE.bin`)",
                int(0)
            ),
        ));
    }
    let version = int(1);
    if version != 1 && version != 2 {
        return Err(err(
            path,
            format!("unsupported version {version} (1: u16 tokens, 2: u32 tokens)"),
        ));
    }
    let tokens = usize::try_from(int(2)).map_err(|_| err(path, "negative token count"))?;
    Ok(ShardHeader { version, tokens })
}

/// Decodes a whole shard held in memory.
pub fn decode_shard(path: &Path, bytes: &[u8]) -> Result<Vec<u32>, ShardError> {
    let header = parse_header(path, bytes)?;
    let body = &bytes[HEADER_BYTES..];
    let want = header.tokens * header.token_bytes();
    if body.len() != want {
        return Err(err(
            path,
            format!(
                "header says {} tokens ({want} bytes) but the file holds {} bytes after \
                 the header; the file is truncated or corrupt",
                header.tokens,
                body.len()
            ),
        ));
    }
    Ok(if header.version == 1 {
        body.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect()
    } else {
        body.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// Reads a whole shard.
pub fn read_shard(path: &Path) -> Result<Vec<u32>, ShardError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    decode_shard(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(tokens in proptest::collection::vec(any::<u32>(), 0..300), small in any::<bool>()) {
            let tokens: Vec<u32> = if small { tokens.iter().map(|t| t % 65536).collect() } else { tokens };
            let mut bytes = Vec::new();
            encode_shard(&tokens, &mut bytes).unwrap();
            let header = parse_header(Path::new("x"), &bytes).unwrap();
            prop_assert_eq!(header.tokens, tokens.len());
            let fits = tokens.iter().all(|&t| t < 65536);
            prop_assert_eq!(header.version, if fits { 1 } else { 2 });
            prop_assert_eq!(decode_shard(Path::new("x"), &bytes).unwrap(), tokens);
        }
    }

    #[test]
    fn truncated_file_is_named() {
        let mut bytes = Vec::new();
        encode_shard(&[1, 2, 3], &mut bytes).unwrap();
        bytes.pop();
        let e = decode_shard(Path::new("data/train.bin"), &bytes).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("data/train.bin") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn bad_magic_is_explained() {
        let bytes = vec![0u8; HEADER_BYTES];
        let msg = decode_shard(Path::new("f.bin"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bad magic"), "{msg}");
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.bin");
        write_shard(&p, &[5, 70000, 9]).unwrap();
        assert_eq!(read_shard(&p).unwrap(), vec![5, 70000, 9]);
    }
}
