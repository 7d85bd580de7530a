//! Parquet reader (FineWeb's format): a string column `text`, an optional
//! `id` (string or integer), every other column kept as metadata (converted
//! to JSON). Uses the parquet crate's row API (no arrow, which would double
//! the build time) and reads one row group at a time, page by page, so
//! memory is bounded by a row group's pages, not the file.
//!
//! A document's `line` is its 1-based row number in the file. A null `text`
//! is a [`BadRecord`]; a file without a `text` column is an error naming the
//! columns it has.

use crate::doc::{Document, Origin};
use crate::read::{BadRecord, Record};
use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

fn err(path: &Path, msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

/// Opens `path` and checks it has a string `text` column.
pub fn open(path: &Path) -> io::Result<SerializedFileReader<File>> {
    let f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let reader = SerializedFileReader::new(f)
        .map_err(|e| err(path, format!("not a readable Parquet file: {e}")))?;
    check_text_column(path, &reader)?;
    Ok(reader)
}

fn check_text_column(path: &Path, reader: &SerializedFileReader<File>) -> io::Result<()> {
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let Some(text) = fields.iter().find(|f| f.name() == "text") else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(err(
            path,
            format!(
                "no column 'text'; columns are {} (the document text must be a string column named 'text')",
                names.join(", ")
            ),
        ));
    };
    let is_string = text.is_primitive()
        && text.get_physical_type() == PhysicalType::BYTE_ARRAY
        && matches!(
            text.get_basic_info().converted_type(),
            ConvertedType::UTF8 | ConvertedType::NONE
        );
    if !is_string {
        return Err(err(
            path,
            format!(
                "column 'text' is {}, expected a string (BYTE_ARRAY, UTF8)",
                if text.is_primitive() {
                    format!("{:?}", text.get_physical_type())
                } else {
                    "a group".to_string()
                }
            ),
        ));
    }
    Ok(())
}

/// Number of row groups and their compressed sizes (for splitting a file).
pub fn row_group_sizes(path: &Path) -> io::Result<Vec<u64>> {
    let r = open(path)?;
    Ok(r.metadata()
        .row_groups()
        .iter()
        .map(|g| g.compressed_size().max(0) as u64)
        .collect())
}

/// Calls `f` on every row of the row groups in `groups` (all when `None`),
/// in order.
pub fn for_each_row<E: From<io::Error>>(
    path: &Path,
    groups: Option<Range<usize>>,
    mut f: impl FnMut(Record) -> Result<(), E>,
) -> Result<(), E> {
    let reader = open(path)?;
    let meta = reader.metadata();
    let n = meta.num_row_groups();
    let groups = groups.unwrap_or(0..n);
    if groups.end > n {
        return Err(err(path, format!("row groups {groups:?}: the file has {n}")).into());
    }
    let file = path.display().to_string();
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut row: u64 = (0..groups.start)
        .map(|g| meta.row_group(g).num_rows().max(0) as u64)
        .sum();
    for g in groups {
        let rg = reader
            .get_row_group(g)
            .map_err(|e| err(path, format!("row group {g}: {e}")))?;
        let rows = rg
            .get_row_iter(None)
            .map_err(|e| err(path, format!("row group {g}: {e}")))?;
        for r in rows {
            row += 1;
            let r = r.map_err(|e| err(path, format!("row group {g}, row {row}: {e}")))?;
            let origin = Origin {
                file: file.clone(),
                line: row,
            };
            f(row_to_record(r.into_columns(), origin, &stem))?;
        }
    }
    Ok(())
}

fn row_to_record(cols: Vec<(String, Field)>, origin: Origin, stem: &str) -> Record {
    let mut text = None;
    let mut id = None;
    let mut meta = Map::new();
    for (name, field) in cols {
        match name.as_str() {
            "text" => text = Some(field),
            "id" => id = Some(field),
            _ => {
                meta.insert(name, field.to_json_value());
            }
        }
    }
    let bad = |reason, detail: &str| {
        Err(BadRecord {
            origin: origin.clone(),
            reason,
            detail: detail.to_string(),
            raw_len: 0,
        })
    };
    let text = match text {
        Some(Field::Str(s)) => s,
        Some(Field::Bytes(b)) => match String::from_utf8(b.data().to_vec()) {
            Ok(s) => s,
            Err(e) => {
                return Err(BadRecord {
                    origin,
                    reason: "invalid_utf8",
                    detail: format!(
                        "column 'text': invalid UTF-8 at byte {}",
                        e.utf8_error().valid_up_to()
                    ),
                    raw_len: b.len(),
                })
            }
        },
        Some(Field::Null) | None => return bad("missing_text", "column 'text' is null"),
        Some(_) => return bad("text_not_string", "column 'text' is not a string"),
    };
    let id = match id {
        Some(Field::Str(s)) => s,
        Some(Field::Null) | None => format!("{stem}:{}", origin.line),
        Some(other) => match other.to_json_value() {
            Value::String(s) => s,
            v => v.to_string(),
        },
    };
    Ok(Document {
        id,
        text,
        meta,
        origin,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    /// Writes `(text or null, id)` rows as `text` (optional string), `id`
    /// (int64) and `n` (int64 metadata), `per_group` rows per row group.
    pub(crate) fn write_parquet(path: &Path, rows: &[(Option<&str>, i64)], per_group: usize) {
        let schema = Arc::new(
            parse_message_type(
                "message doc { OPTIONAL BYTE_ARRAY text (UTF8); REQUIRED INT64 id; REQUIRED INT64 n; }",
            )
            .unwrap(),
        );
        let props = Arc::new(WriterProperties::builder().build());
        let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
        for chunk in rows.chunks(per_group) {
            let mut rg = w.next_row_group().unwrap();
            let texts: Vec<ByteArray> = chunk
                .iter()
                .filter_map(|(t, _)| t.map(ByteArray::from))
                .collect();
            let def: Vec<i16> = chunk.iter().map(|(t, _)| t.is_some() as i16).collect();
            let ids: Vec<i64> = chunk.iter().map(|r| r.1).collect();
            let ns: Vec<i64> = chunk.iter().map(|r| r.1 * 10).collect();
            let mut c = rg.next_column().unwrap().unwrap();
            c.typed::<ByteArrayType>()
                .write_batch(&texts, Some(&def), None)
                .unwrap();
            c.close().unwrap();
            for vals in [&ids, &ns] {
                let mut c = rg.next_column().unwrap().unwrap();
                c.typed::<Int64Type>()
                    .write_batch(vals, None, None)
                    .unwrap();
                c.close().unwrap();
            }
            rg.close().unwrap();
        }
        w.close().unwrap();
    }

    fn read(path: &Path, groups: Option<Range<usize>>) -> Vec<Record> {
        let mut out = Vec::new();
        for_each_row::<io::Error>(path, groups, |r| {
            out.push(r);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn reads_rows_ids_metadata_and_nulls_by_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        let rows = [
            (Some("one"), 1),
            (Some("two"), 2),
            (None, 3),
            (Some("four"), 4),
            (Some(""), 5),
        ];
        write_parquet(&p, &rows, 2);
        assert_eq!(row_group_sizes(&p).unwrap().len(), 3);
        let all = read(&p, None);
        assert_eq!(all.len(), 5);
        let d = all[3].as_ref().unwrap();
        assert_eq!((d.id.as_str(), d.text.as_str()), ("4", "four"));
        assert_eq!(d.meta["n"], serde_json::json!(40));
        assert_eq!(d.origin.line, 4);
        let bad = all[2].as_ref().unwrap_err();
        assert_eq!((bad.reason, bad.origin.line), ("missing_text", 3));
        assert_eq!(all[4].as_ref().unwrap().text, "");
        // Row groups 1..3 start at row 3, numbered as in the whole file.
        let tail = read(&p, Some(1..3));
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[1].as_ref().unwrap().origin.line, 4);
    }

    #[test]
    fn a_file_without_text_names_its_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.parquet");
        let schema = Arc::new(
            parse_message_type(
                "message doc { REQUIRED BYTE_ARRAY body (UTF8); REQUIRED INT64 id; }",
            )
            .unwrap(),
        );
        let w = SerializedFileWriter::new(
            File::create(&p).unwrap(),
            schema,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        w.close().unwrap();
        let e = for_each_row::<io::Error>(&p, None, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.parquet") && e.contains("no column 'text'"),
            "{e}"
        );
        assert!(e.contains("columns are body, id"), "{e}");

        let q = dir.path().join("int.parquet");
        let schema = Arc::new(parse_message_type("message doc { REQUIRED INT64 text; }").unwrap());
        let w = SerializedFileWriter::new(
            File::create(&q).unwrap(),
            schema,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        w.close().unwrap();
        let e = open(&q).err().unwrap().to_string();
        assert!(e.contains("column 'text' is INT64"), "{e}");

        std::fs::write(dir.path().join("junk.parquet"), b"not parquet").unwrap();
        let e = open(&dir.path().join("junk.parquet"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("junk.parquet: not a readable Parquet file"),
            "{e}"
        );
    }

    /// A file written by pyarrow (scripts/make_parquet_fixture.py, snappy,
    /// FineWeb's columns) reads with its ids and metadata.
    #[test]
    fn reads_a_pyarrow_fineweb_file() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fineweb_sample.parquet");
        let all = read(&p, None);
        assert_eq!(all.len(), 6);
        let d = all[0].as_ref().unwrap();
        assert_eq!(d.id, "<urn:uuid:a1>");
        assert!(d.text.starts_with(char::is_uppercase) && d.text.len() > 300);
        assert_eq!(d.meta["url"], "https://example.com/0");
        assert_eq!(d.meta["dump"], "CC-MAIN-2024-10");
        assert_eq!(d.meta["token_count"], 100);
        assert_eq!(d.meta["language_score"], 0.9);
        assert_eq!(all[2].as_ref().unwrap_err().reason, "missing_text");
        assert_eq!(row_group_sizes(&p).unwrap().len(), 3);
    }
}
