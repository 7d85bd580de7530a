//! Content fingerprints of input files, for markers that let a rerun skip
//! finished work: the work is redone when the bytes change, whatever the
//! path, size or mtime say.
//!
//! A [`FileStamp`] records the size and the xxh3-128 of the bytes. The size
//! is the fast pre-check (a different one means changed, unread); an equal
//! one still gets the content hashed, at GB/s, cheap beside the work the
//! marker saves. The mtime is never trusted: a file replaced within the
//! filesystem's timestamp granularity keeps it.

use std::io::{self, Read};
use std::path::Path;

/// What a done marker remembers about one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    /// xxh3-128 of the whole file.
    pub hash: u128,
}

impl FileStamp {
    /// Stats and hashes `path`.
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        let (len, hash) = content_hash(path)?;
        Ok(FileStamp { len, hash })
    }

    /// Whether `path` still holds the bytes this stamp was taken of.
    pub fn matches(&self, path: &Path) -> io::Result<bool> {
        let meta = std::fs::metadata(path)?;
        if meta.len() != self.len {
            return Ok(false);
        }
        Ok(content_hash(path)?.1 == self.hash)
    }

    /// A compact text form for JSON markers: `LEN:HASH`.
    pub fn to_text(&self) -> String {
        format!("{}:{:032x}", self.len, self.hash)
    }

    /// Parses [`FileStamp::to_text`]'s form.
    pub fn from_text(s: &str) -> Option<FileStamp> {
        let mut it = s.split(':');
        let stamp = FileStamp {
            len: it.next()?.parse().ok()?,
            hash: u128::from_str_radix(it.next()?, 16).ok()?,
        };
        it.next().is_none().then_some(stamp)
    }
}

/// Length and xxh3-128 of a file's bytes, read in 1 MiB blocks.
pub fn content_hash(path: &Path) -> io::Result<(u64, u128)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.digest128()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_follows_content_not_mtime_and_round_trips_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, b"{\"text\": \"one\"}\n").unwrap();
        let stamp = FileStamp::of(&p).unwrap();
        assert!(stamp.matches(&p).unwrap());
        assert_eq!(FileStamp::from_text(&stamp.to_text()), Some(stamp.clone()));
        // Same length, different bytes: changed.
        std::fs::write(&p, b"{\"text\": \"two\"}\n").unwrap();
        assert!(!stamp.matches(&p).unwrap());
        // Different length: changed.
        std::fs::write(&p, b"{\"text\": \"three\"}\n").unwrap();
        assert!(!stamp.matches(&p).unwrap());
        // The same bytes again (new mtime): unchanged.
        std::fs::write(&p, b"{\"text\": \"one\"}\n").unwrap();
        assert!(stamp.matches(&p).unwrap());
        assert_eq!(FileStamp::from_text("1"), None);
        assert_eq!(FileStamp::from_text("1:zz"), None);
    }
}
