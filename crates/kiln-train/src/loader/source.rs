//! Random access to the fixed-length windows of a set of token shards,
//! reading from disk on demand (a window at a time) so memory stays at one
//! batch no matter how large the data is.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kiln_data::shard::{parse_header, ShardHeader, HEADER_BYTES};

use super::DataError;

/// One shard as the loader sees it.
#[derive(Debug, Clone)]
struct ShardInfo {
    path: PathBuf,
    header: ShardHeader,
    /// Global index of this shard's first window.
    first_window: u64,
}

/// The windows of every shard under a path, in a fixed order (shards sorted
/// by file name, windows in file order). Window `i` of a shard covers tokens
/// `i*T ..= i*T + T`: input `w[0..T]`, target `w[1..T+1]`.
pub struct TokenSource {
    shards: Vec<ShardInfo>,
    seq_len: usize,
    total_windows: u64,
    /// The shard file read last; windows mostly come in runs from one file.
    open: Option<(usize, File)>,
    scratch: Vec<u8>,
}

/// Which shards of a directory a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training shards: never a validation shard.
    Train,
    /// Validation shards only (held-out evaluation).
    Val,
}

impl TokenSource {
    /// Opens `path` for training: one `.bin` shard, or a directory's
    /// training shards ([`shards_of`]). Reads only the headers.
    pub fn open(path: &Path, seq_len: usize) -> Result<Self, DataError> {
        Self::open_split(path, seq_len, Split::Train)
    }

    /// Opens `path`: one `.bin` shard, or a directory's shards of `split`.
    pub fn open_split(path: &Path, seq_len: usize, split: Split) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::new(path, "sequence length must be at least 1"));
        }
        let mut shards = Vec::new();
        let mut first_window = 0u64;
        for shard_path in list_shards(path, split)? {
            let header = read_header(&shard_path)?;
            if header.tokens < seq_len + 1 {
                return Err(DataError::new(
                    &shard_path,
                    format!(
                        "holds {} tokens, fewer than one training window of seq_len + 1 = {} \
                         tokens; use a smaller --seq-len (at most {}) or merge this shard \
                         with others into a larger one",
                        header.tokens,
                        seq_len + 1,
                        header.tokens.saturating_sub(1)
                    ),
                ));
            }
            let windows = ((header.tokens - 1) / seq_len) as u64;
            shards.push(ShardInfo {
                path: shard_path,
                header,
                first_window,
            });
            first_window += windows;
        }
        Ok(Self {
            shards,
            seq_len,
            total_windows: first_window,
            open: None,
            scratch: Vec::new(),
        })
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Windows over all shards.
    pub fn num_windows(&self) -> u64 {
        self.total_windows
    }

    /// Tokens over all shards (headers' counts).
    pub fn num_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.header.tokens as u64).sum()
    }

    /// Names, sizes and xxh3-128 content hashes of the shards, in order:
    /// what a checkpoint's position is checked against on resume. Reads
    /// every shard once (at disk speed).
    pub fn fingerprint(&self) -> Result<String, DataError> {
        let mut parts = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let stamp = kiln_stdx::fingerprint::FileStamp::of(&shard.path)
                .map_err(|e| DataError::new(&shard.path, format!("cannot read: {e}")))?;
            let name = shard.path.file_name().unwrap_or_default().to_string_lossy();
            parts.push(format!("{name}:{}", stamp.to_text()));
        }
        Ok(parts.join(";"))
    }

    /// The shard files in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// Reads window `index` (`seq_len + 1` tokens) into `out`.
    pub fn read_window(&mut self, index: u64, out: &mut [u32]) -> Result<(), DataError> {
        assert_eq!(out.len(), self.seq_len + 1, "window buffer length");
        if index >= self.total_windows {
            return Err(DataError::new(
                &self.shards[0].path,
                format!(
                    "window {index} asked for, the data has {}",
                    self.total_windows
                ),
            ));
        }
        // Shards are few; the last shard whose first window <= index holds it.
        let s = self
            .shards
            .partition_point(|sh| sh.first_window <= index)
            .saturating_sub(1);
        let local = index - self.shards[s].first_window;
        let width = self.shards[s].header.token_bytes();
        let offset = HEADER_BYTES as u64 + local * self.seq_len as u64 * width as u64;
        self.scratch.resize(out.len() * width, 0);
        let path = &self.shards[s].path;
        let file = open_cached(&mut self.open, s, path)?;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut self.scratch))
            .map_err(|e| DataError::new(path, format!("cannot read window {local}: {e}")))?;
        decode_into(&self.scratch, width, out);
        Ok(())
    }

    /// The largest token id in the data (streams every shard once).
    pub fn max_token(&self) -> Result<Option<u32>, DataError> {
        let mut best: Option<u32> = None;
        for shard in &self.shards {
            let width = shard.header.token_bytes();
            let mut file = File::open(&shard.path)
                .map_err(|e| DataError::new(&shard.path, format!("cannot open: {e}")))?;
            file.seek(SeekFrom::Start(HEADER_BYTES as u64))
                .map_err(|e| DataError::new(&shard.path, format!("cannot read: {e}")))?;
            let mut left = shard.header.tokens * width;
            let mut buf = vec![0u8; (1 << 20) * width];
            let mut decoded = Vec::new();
            while left > 0 {
                let n = left.min(buf.len());
                file.read_exact(&mut buf[..n])
                    .map_err(|e| DataError::new(&shard.path, format!("cannot read: {e}")))?;
                decoded.resize(n / width, 0);
                decode_into(&buf[..n], width, &mut decoded);
                let m = decoded.iter().copied().max();
                best = best.max(m);
                left -= n;
            }
        }
        Ok(best)
    }
}

/// The file of shard `index`, reusing the one opened last when it matches.
fn open_cached<'a>(
    open: &'a mut Option<(usize, File)>,
    index: usize,
    path: &Path,
) -> Result<&'a mut File, DataError> {
    if open.as_ref().map(|(i, _)| *i) != Some(index) {
        let f = File::open(path).map_err(|e| DataError::new(path, format!("cannot open: {e}")))?;
        *open = Some((index, f));
    }
    Ok(&mut open.as_mut().expect("just opened").1)
}

fn decode_into(bytes: &[u8], width: usize, out: &mut [u32]) {
    if width == 2 {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]) as u32;
        }
    } else {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
}

/// `path` itself if it is a file, else its shards of `split`.
fn list_shards(path: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        DataError::new(
            path,
            format!("cannot open: {e} (pass a .bin token shard or a directory of them)"),
        )
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let (train, val) = shards_of(path)?;
    let out = match split {
        Split::Train => train,
        Split::Val => val,
    };
    if out.is_empty() {
        let (what, fix) = match split {
            Split::Train => (
                "training",
                "its shards are all validation shards (names with `val`); pass one file to train on it",
            ),
            Split::Val => ("validation", "pass a shard file instead"),
        };
        return Err(DataError::new(
            path,
            format!("directory holds no {what} shards; {fix}"),
        ));
    }
    Ok(out)
}

/// Whether a shard's file name marks it as validation data: a `val`,
/// `valid` or `validation` word in its stem (`val_000000.bin`,
/// `fineweb_val_000000.bin`, `val.bin`; not `interval.bin`).
pub fn is_val_name(path: &Path) -> bool {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| matches!(w, "val" | "valid" | "validation"))
}

/// A directory's (training, validation) shards, each sorted by name.
///
/// `kiln data tokenize` output (a `meta.json` beside the shards) is read
/// through its `meta.json`: the `train_*` and `val_*` shards it wrote; a
/// directory with `train_NNNNNN.bin` shards but no `meta.json` is an
/// unfinished tokenize run and refused. Any other directory: its `*.bin`
/// files, those with a validation name ([`is_val_name`]) held out.
pub fn shards_of(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let bins = list_bins(dir)?;
    let meta_path = dir.join("meta.json");
    let named = |prefix: &str| -> Vec<PathBuf> {
        bins.iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(prefix))
                    .and_then(|n| n.strip_suffix(".bin"))
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
            .cloned()
            .collect()
    };
    if meta_path.is_file() {
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| DataError::new(&meta_path, format!("cannot read: {e}")))?;
        let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            DataError::new(
                &meta_path,
                format!("not valid JSON ({e}); rerun `kiln data tokenize`"),
            )
        })?;
        let (train, val) = (named("train_"), named("val_"));
        for (key, found) in [("train", &train), ("val", &val)] {
            let want = meta[key]["shards"].as_u64();
            if want.is_some_and(|n| n != found.len() as u64) {
                return Err(DataError::new(
                    dir,
                    format!(
                        "meta.json lists {} {key} shards, the directory holds {}; the files                          were changed after `kiln data tokenize` wrote them (rerun it)",
                        want.unwrap_or(0),
                        found.len()
                    ),
                ));
            }
        }
        return Ok((train, val));
    }
    if !named("train_").is_empty() {
        return Err(DataError::new(
            dir,
            "holds train_*.bin shards but no meta.json: the `kiln data tokenize` run that \
             wrote them did not finish; rerun it",
        ));
    }
    Ok(bins.into_iter().partition(|p| !is_val_name(p)))
}

/// The `*.bin` files of a directory, sorted by name.
fn list_bins(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(path)
        .map_err(|e| DataError::new(path, format!("cannot list directory: {e}")))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::new(path, format!("cannot list: {e}")))?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "bin") && p.is_file() {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(DataError::new(
            path,
            "directory holds no *.bin token shards (write some with `kiln data tokenize`)",
        ));
    }
    out.sort();
    Ok(out)
}

/// Reads and checks a shard's header, and that the file is as long as it says.
fn read_header(path: &Path) -> Result<ShardHeader, DataError> {
    let mut file =
        File::open(path).map_err(|e| DataError::new(path, format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| DataError::new(path, format!("cannot stat: {e}")))?
        .len();
    let mut head = vec![0u8; HEADER_BYTES.min(len as usize)];
    file.read_exact(&mut head)
        .map_err(|e| DataError::new(path, format!("cannot read header: {e}")))?;
    let header = parse_header(path, &head).map_err(|e| DataError::new(path, e.problem))?;
    let want = HEADER_BYTES as u64 + (header.tokens * header.token_bytes()) as u64;
    if len != want {
        return Err(DataError::new(
            path,
            format!(
                "header says {} tokens ({want} bytes with the header) but the file has {len} \
                 bytes; the file is truncated or corrupt (re-create it)",
                header.tokens
            ),
        ));
    }
    Ok(header)
}
