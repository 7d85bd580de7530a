//! Readers: directories of `.txt`, JSONL (`{"text", "id"?, ...metadata}`),
//! `.jsonl.gz`, `.jsonl.zst` and Parquet ([`crate::read_parquet`]). Records
//! stream one line (one Parquet row) at a time; a bad
//! record (malformed JSON, invalid UTF-8, missing `text`) is returned as a
//! [`BadRecord`] naming the file and line instead of stopping the read.

use crate::doc::{Document, Origin};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A record that could not become a document, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRecord {
    pub origin: Origin,
    pub reason: &'static str,
    pub detail: String,
    /// Bytes of the raw record (counted as removed input).
    pub raw_len: usize,
}

pub type Record = Result<Document, BadRecord>;

/// The input formats, chosen by file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
    JsonlGz,
    JsonlZst,
    Parquet,
}

pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
        Some(Format::JsonlZst)
    } else if name.ends_with(".jsonl.gz") || name.ends_with(".json.gz") {
        Some(Format::JsonlGz)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Some(Format::Jsonl)
    } else if name.ends_with(".txt") {
        Some(Format::Text)
    } else if name.ends_with(".parquet") {
        Some(Format::Parquet)
    } else {
        None
    }
}

/// Expands files and directories (recursively) into the sorted list of
/// readable inputs. A named file of unknown format is an error; files of
/// unknown format inside a directory are skipped.
pub fn list_inputs(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if format_of(p).is_some() {
            if !p.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no such file", p.display()),
                ));
            }
            out.push(p.clone());
        } else if !p.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file or directory", p.display()),
            ));
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: unknown input format (use .txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet)",
                    p.display()
                ),
            ));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if format_of(&p).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

/// Opens `path` as a stream of decompressed bytes.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    let f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let r: Box<dyn BufRead + Send> = match format_of(path) {
        Some(Format::JsonlGz) => Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f))),
        Some(Format::JsonlZst) => Box::new(BufReader::new(zstd::stream::read::Decoder::new(f)?)),
        _ => Box::new(BufReader::with_capacity(1 << 16, f)),
    };
    Ok(r)
}

/// Calls `f` on every record of `path`, in order. Returns early with the
/// first error `f` returns; I/O errors are returned as `Err`.
pub fn for_each_record<E: From<io::Error>>(
    path: &Path,
    mut f: impl FnMut(Record) -> Result<(), E>,
) -> Result<(), E> {
    let file = path.display().to_string();
    match format_of(path) {
        Some(Format::Text) => {
            let mut bytes = Vec::new();
            open(path)?.read_to_end(&mut bytes)?;
            let origin = Origin {
                file: file.clone(),
                line: 1,
            };
            let id = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            f(match String::from_utf8(bytes) {
                Ok(text) => Ok(Document {
                    id,
                    text,
                    meta: Map::new(),
                    origin,
                }),
                Err(e) => Err(BadRecord {
                    origin,
                    reason: "invalid_utf8",
                    detail: format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
                    raw_len: e.as_bytes().len(),
                }),
            })
        }
        Some(Format::Parquet) => crate::read_parquet::for_each_row(path, None, f),
        _ => for_each_jsonl_line(open(path)?, &file, 1, f),
    }
}

/// Calls `f` on every JSONL record of `r`, whose first line is line
/// `first_line` of `file` (a byte range of a split file starts mid-file).
pub fn for_each_jsonl_line<E: From<io::Error>>(
    mut r: impl BufRead,
    file: &str,
    first_line: u64,
    mut f: impl FnMut(Record) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = Vec::with_capacity(1 << 14);
    let mut line = first_line - 1;
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line += 1;
        if buf.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        f(parse_jsonl_line(
            &buf,
            Origin {
                file: file.to_string(),
                line,
            },
        ))?;
    }
}

/// One JSONL line to a document: `text` must be a string; `id` (string or
/// number) defaults to `file-stem:line`; every other field is metadata.
pub fn parse_jsonl_line(bytes: &[u8], origin: Origin) -> Record {
    let bad = |reason, detail: String| {
        Err(BadRecord {
            origin: origin.clone(),
            reason,
            detail,
            raw_len: bytes.len(),
        })
    };
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            return bad(
                "invalid_utf8",
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        }
    };
    let mut obj: Map<String, Value> = match serde_json::from_str(s) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return bad("not_an_object", "the line is JSON but not an object".into()),
        Err(e) => return bad("malformed_json", e.to_string()),
    };
    let text = match obj.remove("text") {
        Some(Value::String(t)) => t,
        Some(_) => return bad("text_not_string", "field \"text\" is not a string".into()),
        None => {
            return bad(
                "missing_text",
                "no field \"text\" (each line needs {\"text\": ...})".into(),
            )
        }
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            let stem = Path::new(&origin.file)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{stem}:{}", origin.line)
        }
    };
    Ok(Document {
        id,
        text,
        meta: obj,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn o() -> Origin {
        Origin {
            file: "f.jsonl".into(),
            line: 7,
        }
    }

    #[test]
    fn parses_and_reports_bad_lines() {
        let d = parse_jsonl_line(br#"{"text":"hi","id":3,"url":"u"}"#, o()).unwrap();
        assert_eq!((d.id.as_str(), d.text.as_str()), ("3", "hi"));
        assert_eq!(d.meta["url"], "u");
        let d = parse_jsonl_line(br#"{"text":"hi"}"#, o()).unwrap();
        assert_eq!(d.id, "f.jsonl:7");
        let reason = |b: &[u8]| parse_jsonl_line(b, o()).unwrap_err().reason;
        assert_eq!(reason(b"{\"text\": \"a"), "malformed_json");
        assert_eq!(reason(b"{\"body\": \"a\"}"), "missing_text");
        assert_eq!(reason(b"{\"text\": 5}"), "text_not_string");
        assert_eq!(reason(b"[1]"), "not_an_object");
        assert_eq!(reason(b"{\"text\": \"\xff\"}"), "invalid_utf8");
    }

    fn write_all_formats(dir: &Path, lines: &[String]) -> Vec<PathBuf> {
        let body = lines.join("\n") + "\n";
        let plain = dir.join("a.jsonl");
        std::fs::write(&plain, &body).unwrap();
        let gz = dir.join("b.jsonl.gz");
        let mut e =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        e.write_all(body.as_bytes()).unwrap();
        e.finish().unwrap();
        let zst = dir.join("c.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
        vec![plain, gz, zst]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Documents written as JSONL (plain, gz, zst) read back identical.
        #[test]
        fn jsonl_round_trip(texts in proptest::collection::vec("\\PC{0,40}", 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let lines: Vec<String> = texts.iter().enumerate()
                .map(|(i, t)| serde_json::json!({"id": format!("d{i}"), "text": t, "k": i}).to_string())
                .collect();
            for path in write_all_formats(dir.path(), &lines) {
                let mut got = Vec::new();
                for_each_record::<io::Error>(&path, |r| { got.push(r.unwrap()); Ok(()) }).unwrap();
                prop_assert_eq!(got.len(), texts.len());
                for (i, d) in got.iter().enumerate() {
                    prop_assert_eq!(&d.text, &texts[i]);
                    prop_assert_eq!(&d.id, &format!("d{i}"));
                    prop_assert_eq!(d.origin.line, i as u64 + 1);
                    prop_assert_eq!(&d.meta["k"], &serde_json::json!(i));
                }
            }
        }
    }

    #[test]
    fn lists_directories_and_reads_text_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x.txt"), "hello").unwrap();
        std::fs::write(dir.path().join("y.jsonl"), "{\"text\":\"a\"}\n").unwrap();
        std::fs::write(dir.path().join("ignored.csv"), "x").unwrap();
        let files = list_inputs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(files.len(), 2);
        let mut docs = Vec::new();
        for_each_record::<io::Error>(&files[0], |r| {
            docs.push(r.unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!((docs[0].id.as_str(), docs[0].text.as_str()), ("x", "hello"));
        assert!(list_inputs(&[dir.path().join("ignored.csv")]).is_err());
        assert!(list_inputs(&[dir.path().join("missing.jsonl")]).is_err());
    }
}
