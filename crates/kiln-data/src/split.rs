//! Input parts: the unit of sharding. A small file is one part; an
//! uncompressed JSONL file bigger than `[input] split_bytes` is cut into
//! byte ranges aligned to line starts, and a Parquet file into runs of whole
//! row groups, so `--shard i/N` and the parallel workers balance even on one
//! big file. Compressed files (`.gz`, `.zst`) cannot be split (a decoder
//! cannot start mid-stream) and `.txt` files are one document: both stay
//! whole.
//!
//! A range `[start, end)` owns every line that *starts* inside it, so the
//! parts of a file hold each line exactly once. Line numbers stay those of
//! the whole file: planning counts the newlines of each range (in parallel,
//! one read of the file) to know the first line number of every part.

use crate::read::{for_each_jsonl_line, for_each_record, format_of, Format, Record};
use rayon::prelude::*;
use serde::Deserialize;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `[input]` in the curate config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Split uncompressed JSONL and Parquet files bigger than this (bytes)
    /// into parts of about this size. 0 = never split.
    pub split_bytes: u64,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            split_bytes: 128 << 20,
        }
    }
}

/// Which piece of a file a part reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span {
    Whole,
    /// Bytes `[start, end)` of an uncompressed JSONL file; `first_line` is
    /// the 1-based line number at `start`.
    Bytes {
        start: u64,
        end: u64,
        first_line: u64,
    },
    /// Row groups `[start, end)` of a Parquet file.
    RowGroups {
        start: usize,
        end: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub path: PathBuf,
    pub span: Span,
}

impl Part {
    /// A stable description (stored in done markers: a part is done only
    /// for the same file and range).
    pub fn describe(&self) -> String {
        let p = self.path.display();
        match &self.span {
            Span::Whole => p.to_string(),
            Span::Bytes { start, end, .. } => format!("{p} [bytes {start}..{end}]"),
            Span::RowGroups { start, end } => format!("{p} [row groups {start}..{end}]"),
        }
    }

    /// Calls `f` on every record of this part, in order.
    pub fn for_each_record<E: From<io::Error>>(
        &self,
        f: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        match &self.span {
            Span::Whole => for_each_record(&self.path, f),
            Span::Bytes {
                start,
                end,
                first_line,
            } => {
                let mut file = open(&self.path)?;
                file.seek(SeekFrom::Start(*start))?;
                let r = BufReader::with_capacity(1 << 16, file.take(end - start));
                let name = self.path.display().to_string();
                for_each_jsonl_line(r, &name, *first_line, f)
            }
            Span::RowGroups { start, end } => {
                crate::read_parquet::for_each_row(&self.path, Some(*start..*end), f)
            }
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The parts of `files` (in order: file by file, range by range).
pub fn plan(files: &[PathBuf], split_bytes: u64) -> io::Result<Vec<Part>> {
    let per_file: Vec<Vec<Part>> = files
        .par_iter()
        .map(|f| plan_file(f, split_bytes))
        .collect::<io::Result<_>>()?;
    Ok(per_file.into_iter().flatten().collect())
}

fn plan_file(path: &Path, split_bytes: u64) -> io::Result<Vec<Part>> {
    let whole = || {
        vec![Part {
            path: path.to_path_buf(),
            span: Span::Whole,
        }]
    };
    if split_bytes == 0 {
        return Ok(whole());
    }
    let size = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
        .len();
    if size <= split_bytes {
        return Ok(whole());
    }
    let spans = match format_of(path) {
        Some(Format::Jsonl) => byte_spans(path, size, split_bytes)?,
        Some(Format::Parquet) => {
            row_group_spans(&crate::read_parquet::row_group_sizes(path)?, split_bytes)
        }
        _ => return Ok(whole()),
    };
    Ok(spans
        .into_iter()
        .map(|span| Part {
            path: path.to_path_buf(),
            span,
        })
        .collect())
}

/// Consecutive row groups, cut once a run reaches `split_bytes` (compressed).
fn row_group_spans(sizes: &[u64], split_bytes: u64) -> Vec<Span> {
    let mut spans = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (g, s) in sizes.iter().enumerate() {
        acc += s;
        if acc >= split_bytes {
            spans.push(Span::RowGroups { start, end: g + 1 });
            (start, acc) = (g + 1, 0);
        }
    }
    if start < sizes.len() || spans.is_empty() {
        spans.push(Span::RowGroups {
            start,
            end: sizes.len(),
        });
    }
    spans
}

/// What planning needs to know about one nominal chunk `[lo, hi)`.
struct ChunkScan {
    newlines: u64,
    /// Offset of the first `\n` in the chunk.
    first_newline: Option<u64>,
    /// Whether the byte just before `lo` is `\n` (or `lo` is 0).
    starts_line: bool,
}

fn scan_chunk(path: &Path, lo: u64, hi: u64) -> io::Result<ChunkScan> {
    let mut f = open(path)?;
    let starts_line = if lo == 0 {
        true
    } else {
        f.seek(SeekFrom::Start(lo - 1))?;
        let mut b = [0u8];
        f.read_exact(&mut b)?;
        b[0] == b'\n'
    };
    f.seek(SeekFrom::Start(lo))?;
    let mut r = f.take(hi - lo);
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut newlines, mut first_newline) = (lo, 0u64, None);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if first_newline.is_none() {
            first_newline = chunk
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| pos + i as u64);
        }
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        pos += n as u64;
    }
    Ok(ChunkScan {
        newlines,
        first_newline,
        starts_line,
    })
}

/// Byte ranges of about `split_bytes`, each moved forward to the next line
/// start; ranges left empty by a line longer than `split_bytes` are dropped.
fn byte_spans(path: &Path, size: u64, split_bytes: u64) -> io::Result<Vec<Span>> {
    let bounds: Vec<u64> = (0..size.div_ceil(split_bytes))
        .map(|i| i * split_bytes)
        .collect();
    let scans: Vec<ChunkScan> = bounds
        .par_iter()
        .map(|&lo| scan_chunk(path, lo, (lo + split_bytes).min(size)))
        .collect::<io::Result<_>>()?;
    // Aligned start of each chunk and the line number there.
    let mut starts: Vec<(u64, u64)> = Vec::with_capacity(bounds.len());
    let mut newlines_before = 0u64; // newlines in [0, bounds[i])
    for (i, s) in scans.iter().enumerate() {
        let start = if s.starts_line {
            (bounds[i], newlines_before + 1)
        } else {
            // The first newline at or after bounds[i], possibly chunks later.
            match scans[i..].iter().find_map(|c| c.first_newline) {
                Some(nl) => (nl + 1, newlines_before + 2),
                None => (size, 0),
            }
        };
        starts.push(start);
        newlines_before += s.newlines;
    }
    let mut spans = Vec::new();
    for (i, &(start, first_line)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(size, |s| s.0);
        if start < end {
            spans.push(Span::Bytes {
                start,
                end,
                first_line,
            });
        }
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines_of(parts: &[Part]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for p in parts {
            p.for_each_record::<io::Error>(|r| {
                let d = r.unwrap();
                out.push((d.origin.line, d.text));
                Ok(())
            })
            .unwrap();
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any split of a JSONL file reads every line once, in order, with
        /// the line numbers of the whole file (blank lines included).
        #[test]
        fn parts_cover_every_line_once(
            texts in proptest::collection::vec("[a-z ]{0,30}", 1..30),
            blanks in proptest::collection::vec(any::<bool>(), 30),
            split in 1u64..200,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.jsonl");
            let mut body = String::new();
            for (i, t) in texts.iter().enumerate() {
                if blanks[i] {
                    body.push('\n');
                }
                body += &serde_json::json!({"text": t}).to_string();
                body.push('\n');
            }
            std::fs::write(&path, &body).unwrap();
            let whole = lines_of(&plan(std::slice::from_ref(&path), 0).unwrap());
            prop_assert_eq!(whole.len(), texts.len());
            let parts = plan(std::slice::from_ref(&path), split).unwrap();
            prop_assert!(parts.len() as u64 <= (body.len() as u64).div_ceil(split));
            if body.len() as u64 > split {
                let all_ranges = parts.iter().all(|p| matches!(p.span, Span::Bytes { .. }));
                prop_assert!(all_ranges);
            }
            prop_assert_eq!(lines_of(&parts), whole);
        }
    }

    #[test]
    fn compressed_and_text_files_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let zst = dir.path().join("a.jsonl.zst");
        let body = "{\"text\":\"aaaa\"}\n".repeat(100);
        std::fs::write(&zst, zstd::encode_all(body.as_bytes(), 1).unwrap()).unwrap();
        let txt = dir.path().join("b.txt");
        std::fs::write(&txt, "x".repeat(1000)).unwrap();
        let parts = plan(&[zst, txt], 10).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.span == Span::Whole));
    }

    #[test]
    fn row_groups_are_grouped_to_the_split_size() {
        let rg = |start, end| Span::RowGroups { start, end };
        assert_eq!(
            row_group_spans(&[5, 5, 5, 5, 5], 10),
            vec![rg(0, 2), rg(2, 4), rg(4, 5)]
        );
        assert_eq!(row_group_spans(&[30, 1], 10), vec![rg(0, 1), rg(1, 2)]);
        assert_eq!(row_group_spans(&[], 10), vec![rg(0, 0)]);
    }
}
