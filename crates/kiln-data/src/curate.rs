//! `kiln data curate`: the sharded, resumable curation run.
//!
//! Layout of the output directory:
//!   work/shard-NNNNN.jsonl.zst      documents that passed the per-document stages
//!   work/shard-NNNNN.done.json      done marker (input, its content stamp, config hash, stage-1 stats)
//!   rejected/shard-NNNNN.filters.jsonl.zst   stage-1 rejections (docs, lines, bad input)
//!   kept/shard-NNNNN.jsonl.zst      final documents (after dedup)
//!   rejected/shard-NNNNN.dedup.jsonl.zst     dedup rejections
//!   stats.json                      totals per stage; written last: the completion marker
//!
//! A run without `--shard` holds the directory's exclusive lock, removes
//! stats.json first and every file of kept/, rejected/ and work/ it will not
//! write (an earlier run's extra shards), and writes stats.json only once
//! kept/ is complete: a directory with kept/ but no stats.json is unfinished,
//! and downstream commands refuse it ([`check_finished`]). `--shard` runs
//! share the lock (they write disjoint files) and remove nothing.
//!
//! A shard is one input part: a whole file, or a line-aligned byte range /
//! run of row groups of a big one (see [`crate::split`]). Stage 1
//! (per-document filters) runs per shard,
//! in parallel, each shard's outputs written atomically and then marked done,
//! so a killed run redoes only unfinished shards; `--shard i/N` runs the
//! shards with index % N == i (Slurm arrays). Stage 2 (exact + MinHash dedup
//! across all shards) runs when every shard is done, in a run without
//! `--shard`; it keeps in memory 16 + 8 x bands bytes plus the id per document,
//! then (optionally) removes lines seen before with a fixed-size Bloom filter.

use crate::config::CurateConfig;
use crate::dedup::exact::{find_exact_duplicates, text_hash};
use crate::dedup::lines::{LineDedupOutcome, LineDeduper, RemovedUnit};
use crate::dedup::minhash::{cluster, MinHasher};
use crate::doc::{Document, Origin};
use crate::process::{Outcome, Processor, Reject};
use crate::read::list_inputs;
use crate::split::{plan, Part};
use crate::stats::{Stats, STAGES};
use kiln_stdx::fingerprint::FileStamp;
use kiln_stdx::fs::write_atomic_with;
use kiln_stdx::lock::DirLock;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const BATCH: usize = 1024;
const ORIGIN_KEY: &str = "_kiln_origin";

#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{origin}: {reason}: {detail} (run without --strict to skip and record bad records)")]
    Strict {
        origin: Origin,
        reason: String,
        detail: String,
    },
    #[error("--shard {0}/{1}: the index must be below the count")]
    BadShard(usize, usize),
    #[error("{0}: no input files of a known format (.txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet); name the files or the directory that holds them")]
    NoInputs(String),
}

#[derive(Clone, Debug)]
pub struct CurateOptions {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub config: CurateConfig,
    pub strict: bool,
    /// `(i, n)`: run only shards with index % n == i, and skip dedup.
    pub shard: Option<(usize, usize)>,
}

/// Live counters for a progress display (read from another thread).
#[derive(Debug, Default)]
pub struct Progress {
    pub docs: AtomicU64,
    pub bytes: AtomicU64,
    pub kept: AtomicU64,
}

#[derive(Debug, Default)]
pub struct CurateReport {
    pub shards_run: Vec<usize>,
    pub shards_skipped: Vec<usize>,
    /// Totals; `None` when dedup did not run (a `--shard` run, or shards missing).
    pub stats: Option<Stats>,
}

#[derive(Serialize, Deserialize)]
struct DoneMarker {
    input: String,
    /// The input file's size and content hash ([`FileStamp::to_text`]):
    /// a file replaced at the same path reruns its shards.
    #[serde(default)]
    input_stamp: String,
    config_hash: String,
    stats: Stats,
}

fn shard_name(k: usize) -> String {
    format!("shard-{k:05}")
}

/// Bumped when the same settings decide differently (2: datatrove's
/// segmentation, lid.176 language ID), so a resumed run redoes old shards.
const FILTERS_VERSION: u32 = 2;

fn config_hash(cfg: &CurateConfig) -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{FILTERS_VERSION} {cfg:?}").as_bytes())
    )
}

struct Paths {
    work: PathBuf,
    kept: PathBuf,
    rejected: PathBuf,
}

impl Paths {
    fn new(out: &Path) -> io::Result<Self> {
        let p = Paths {
            work: out.join("work"),
            kept: out.join("kept"),
            rejected: out.join("rejected"),
        };
        for d in [&p.work, &p.kept, &p.rejected] {
            std::fs::create_dir_all(d)?;
        }
        Ok(p)
    }
    fn stage1(&self, k: usize) -> PathBuf {
        self.work.join(format!("{}.jsonl.zst", shard_name(k)))
    }
    fn done(&self, k: usize) -> PathBuf {
        self.work.join(format!("{}.done.json", shard_name(k)))
    }
    fn filter_rejects(&self, k: usize) -> PathBuf {
        self.rejected
            .join(format!("{}.filters.jsonl.zst", shard_name(k)))
    }
    fn dedup_rejects(&self, k: usize) -> PathBuf {
        self.rejected
            .join(format!("{}.dedup.jsonl.zst", shard_name(k)))
    }
    fn kept(&self, k: usize) -> PathBuf {
        self.kept.join(format!("{}.jsonl.zst", shard_name(k)))
    }

    /// Removes every entry of work/, kept/ and rejected/ that a run of
    /// `n` shards does not write: an earlier run's outputs would otherwise
    /// be read downstream as this run's.
    fn remove_foreign(&self, n: usize) -> io::Result<()> {
        let mut own: HashSet<PathBuf> = HashSet::new();
        for k in 0..n {
            own.extend([
                self.stage1(k),
                self.done(k),
                self.filter_rejects(k),
                self.dedup_rejects(k),
                self.kept(k),
            ]);
        }
        for dir in [&self.work, &self.kept, &self.rejected] {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if own.contains(&path) {
                    continue;
                }
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }
}

/// The completion marker of a curate output directory.
const STATS_FILE: &str = "stats.json";

/// Refuses `path` when it is (or lies in) the kept/ directory of a curate
/// run that did not finish: kept/ beside work/, no stats.json. Returns the
/// reason, naming the directory and the fix.
pub fn check_finished(path: &Path) -> Result<(), String> {
    let kept = if path.file_name().is_some_and(|n| n == "kept") {
        Some(path)
    } else {
        path.parent()
            .filter(|p| p.file_name().is_some_and(|n| n == "kept"))
    };
    let Some(root) = kept.and_then(Path::parent) else {
        return Ok(());
    };
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    if root.join("work").is_dir() && !root.join(STATS_FILE).is_file() {
        return Err(format!(
            "{}: the `kiln data curate` run into {} did not finish (no {STATS_FILE}); \
             its kept/ may be partial. Rerun the same curate command to finish it",
            path.display(),
            root.display()
        ));
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Size and content hash of every input file, each read once.
fn stamp_inputs(files: &[PathBuf]) -> io::Result<HashMap<PathBuf, String>> {
    files
        .par_iter()
        .map(|f| {
            FileStamp::of(f)
                .map(|s| (f.clone(), s.to_text()))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.display())))
        })
        .collect()
}

/// Writes a zstd-compressed JSONL file atomically.
fn write_zst_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    write_atomic_with(path, |w| {
        let mut enc = zstd::stream::write::Encoder::new(w, 3)?;
        fill(&mut enc)?;
        enc.finish()?;
        Ok(())
    })
}

fn write_json_line(w: &mut dyn Write, v: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

fn record_reject(stats: &mut Stats, r: &Reject) {
    let f = stats.filter(&r.filter);
    if r.kind == "line" {
        f.lines_removed += 1;
        f.line_bytes_removed += r.bytes();
    } else {
        f.docs_removed += 1;
        f.bytes_removed += r.bytes();
    }
    *f.rules.entry(r.rule.clone()).or_default() += 1;
}

pub fn curate(opts: &CurateOptions, progress: &Progress) -> Result<CurateReport, CurateError> {
    let start = Instant::now();
    if let Some((i, n)) = opts.shard {
        if n == 0 || i >= n {
            return Err(CurateError::BadShard(i, n));
        }
    }
    let files = list_inputs(&opts.inputs)?;
    if files.is_empty() {
        let named: Vec<String> = opts
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(CurateError::NoInputs(named.join(", ")));
    }
    let inputs = plan(&files, opts.config.input.split_bytes)?;
    let proc = Processor::new(opts.config.clone())?;
    let hash = config_hash(&opts.config);
    let _lock = match opts.shard {
        None => DirLock::claim(&opts.output),
        Some(_) => DirLock::acquire_shared(&opts.output),
    }
    .map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => e,
        kind => io::Error::new(kind, format!("{}: {e}", opts.output.display())),
    })?;
    let paths = Paths::new(&opts.output)?;
    if opts.shard.is_none() {
        // Incomplete until this run writes it again, last.
        remove_if_present(&opts.output.join(STATS_FILE))?;
        paths.remove_foreign(inputs.len())?;
    }
    let stamps = stamp_inputs(&files)?;
    let stamp_of = |k: usize| stamps.get(&inputs[k].path).cloned().unwrap_or_default();

    let mine: Vec<usize> = (0..inputs.len())
        .filter(|k| opts.shard.is_none_or(|(i, n)| k % n == i))
        .collect();
    let is_done = |k: usize| -> bool {
        let Ok(bytes) = std::fs::read(paths.done(k)) else {
            return false;
        };
        let Ok(m) = serde_json::from_slice::<DoneMarker>(&bytes) else {
            return false;
        };
        m.input == inputs[k].describe()
            && m.input_stamp == stamp_of(k)
            && m.config_hash == hash
            && paths.stage1(k).exists()
            && paths.filter_rejects(k).exists()
    };
    let (skipped, pending): (Vec<usize>, Vec<usize>) = mine.iter().partition(|&&k| is_done(k));
    pending
        .par_iter()
        .map(|&k| {
            let stamp = stamp_of(k);
            run_shard(
                &proc,
                &inputs[k],
                &stamp,
                k,
                &paths,
                &hash,
                opts.strict,
                progress,
            )
            .map_err(|e| name_the_file(e, &inputs[k].describe(), &paths.stage1(k)))
        })
        .collect::<Result<Vec<()>, CurateError>>()?;

    let mut report = CurateReport {
        shards_run: pending,
        shards_skipped: skipped,
        stats: None,
    };
    if opts.shard.is_some() || !(0..inputs.len()).all(is_done) {
        return Ok(report);
    }
    let mut stats = Stats::default();
    for k in 0..inputs.len() {
        let m: DoneMarker =
            serde_json::from_slice(&std::fs::read(paths.done(k))?).map_err(io::Error::other)?;
        stats.merge(&m.stats);
    }
    dedup(&opts.config, &paths, inputs.len(), &mut stats).map_err(|e| {
        let e = CurateError::Io(e);
        name_the_file(e, &paths.work.display().to_string(), &paths.kept)
    })?;
    stats.wall_s = start.elapsed().as_secs_f64();
    let stats_path = opts.output.join(STATS_FILE);
    kiln_stdx::fs::write_atomic(
        &stats_path,
        serde_json::to_string_pretty(&stats)
            .map_err(io::Error::other)?
            .as_bytes(),
    )
    .map_err(|e| {
        name_the_file(
            CurateError::Io(e),
            &stats_path.display().to_string(),
            &stats_path,
        )
    })?;
    report.stats = Some(stats);
    Ok(report)
}

/// Puts the file into an io error's message: the output when the disk is
/// full, else the input being read (a truncated .gz/.zst says only
/// "unexpected end of file" on its own).
fn name_the_file(e: CurateError, input: &str, output: &Path) -> CurateError {
    let CurateError::Io(e) = e else {
        return e;
    };
    let message = if e.kind() == io::ErrorKind::StorageFull {
        format!(
            "{}: no space left on the device while writing; free some space or choose another --output",
            output.display()
        )
    } else {
        format!("{input}: {e} (is the file truncated or corrupt?)")
    };
    CurateError::Io(io::Error::new(e.kind(), message))
}

/// Stage 1 for one shard: read, process in parallel batches, write.
#[allow(clippy::too_many_arguments)]
fn run_shard(
    proc: &Processor,
    input: &Part,
    input_stamp: &str,
    k: usize,
    paths: &Paths,
    hash: &str,
    strict: bool,
    progress: &Progress,
) -> Result<(), CurateError> {
    let mut stats = Stats::default();
    let mut err: Option<CurateError> = None;
    let res = write_zst_atomic(&paths.stage1(k), |kept_w| {
        write_zst_atomic(&paths.filter_rejects(k), |rej_w| {
            let mut batch: Vec<Document> = Vec::with_capacity(BATCH);
            let r = input.for_each_record::<io::Error>(|rec| {
                match rec {
                    Ok(d) => {
                        batch.push(d);
                        if batch.len() >= BATCH {
                            flush(proc, &mut batch, &mut stats, kept_w, rej_w, progress)?;
                        }
                    }
                    Err(bad) => {
                        if strict {
                            err = Some(CurateError::Strict {
                                origin: bad.origin.clone(),
                                reason: bad.reason.into(),
                                detail: bad.detail.clone(),
                            });
                            return Err(io::Error::other("strict"));
                        }
                        let rej = Reject::bad_input(&bad);
                        stats.input_docs += 1;
                        stats.input_bytes += bad.raw_len as u64;
                        record_reject(&mut stats, &rej);
                        progress.docs.fetch_add(1, Ordering::Relaxed);
                        write_json_line(rej_w, &rej)?;
                    }
                }
                Ok(())
            });
            r?;
            flush(proc, &mut batch, &mut stats, kept_w, rej_w, progress)
        })
    });
    if let Some(e) = err {
        return Err(e);
    }
    res?;
    let marker = DoneMarker {
        input: input.describe(),
        input_stamp: input_stamp.into(),
        config_hash: hash.into(),
        stats,
    };
    kiln_stdx::fs::write_atomic(
        &paths.done(k),
        serde_json::to_vec(&marker)
            .map_err(io::Error::other)?
            .as_slice(),
    )?;
    Ok(())
}

fn flush(
    proc: &Processor,
    batch: &mut Vec<Document>,
    stats: &mut Stats,
    kept_w: &mut dyn Write,
    rej_w: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    let outs: Vec<Outcome> = std::mem::take(batch)
        .into_par_iter()
        .map(|d| proc.process(d))
        .collect();
    for o in outs {
        write_outcome(o, stats, kept_w, rej_w, progress)?;
    }
    Ok(())
}

fn write_outcome(
    o: Outcome,
    stats: &mut Stats,
    kept_w: &mut dyn Write,
    rej_w: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    stats.input_docs += 1;
    stats.input_bytes += o.input_bytes;
    progress.docs.fetch_add(1, Ordering::Relaxed);
    progress.bytes.fetch_add(o.input_bytes, Ordering::Relaxed);
    for (i, ns) in o.time_ns.iter().enumerate() {
        if *ns > 0 {
            stats.filter(STAGES[i]).time_s += *ns as f64 * 1e-9;
        }
    }
    stats.pii.add(&o.pii);
    for r in &o.rejects {
        record_reject(stats, r);
        write_json_line(rej_w, r)?;
    }
    if let Some(d) = o.kept {
        progress.kept.fetch_add(1, Ordering::Relaxed);
        let mut v = d.to_json();
        if let Value::Object(m) = &mut v {
            m.insert(ORIGIN_KEY.into(), Value::String(d.origin.to_string()));
        }
        write_json_line(kept_w, &v)?;
    }
    Ok(())
}

/// Reads a stage-1 file: (document JSON without the origin key, origin).
fn read_stage1(
    path: &Path,
    mut f: impl FnMut(Map<String, Value>, Origin) -> io::Result<()>,
) -> io::Result<()> {
    let r = crate::read::open(path)?;
    for line in r.lines() {
        let line = line?;
        let mut m: Map<String, Value> = serde_json::from_str(&line).map_err(io::Error::other)?;
        let origin = match m.remove(ORIGIN_KEY) {
            Some(Value::String(s)) => {
                let (file, l) = s.rsplit_once(':').unwrap_or((&s, "0"));
                Origin {
                    file: file.into(),
                    line: l.parse().unwrap_or(0),
                }
            }
            _ => Origin {
                file: String::new(),
                line: 0,
            },
        };
        f(m, origin)?;
    }
    Ok(())
}

fn text_of(m: &Map<String, Value>) -> &str {
    m.get("text").and_then(Value::as_str).unwrap_or("")
}

/// Stage 2: exact and MinHash dedup across all shards, in input order.
fn dedup(cfg: &CurateConfig, paths: &Paths, n_shards: usize, stats: &mut Stats) -> io::Result<()> {
    let minhasher = MinHasher::new(cfg.minhash.clone());
    let mut hashes: Vec<u128> = Vec::new();
    let mut keys: Vec<Option<Vec<u64>>> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let (mut t_exact, mut t_minhash) = (0f64, 0f64);
    for k in 0..n_shards {
        let mut texts: Vec<String> = Vec::with_capacity(BATCH);
        let mut flush = |texts: &mut Vec<String>| {
            let t = Instant::now();
            if cfg.exact_dedup.enabled {
                hashes.par_extend(texts.par_iter().map(|s| text_hash(s)));
            }
            t_exact += t.elapsed().as_secs_f64();
            let t = Instant::now();
            if cfg.minhash.enabled {
                keys.par_extend(texts.par_iter().map(|s| minhasher.doc_keys(s)));
            }
            t_minhash += t.elapsed().as_secs_f64();
            texts.clear();
        };
        read_stage1(&paths.stage1(k), |m, _| {
            ids.push(
                m.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
            texts.push(text_of(&m).to_string());
            if texts.len() >= BATCH {
                flush(&mut texts);
            }
            Ok(())
        })?;
        flush(&mut texts);
    }
    let t = Instant::now();
    let exact = if cfg.exact_dedup.enabled {
        find_exact_duplicates(&hashes)
    } else {
        vec![None; ids.len()]
    };
    t_exact += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let near = if cfg.minhash.enabled {
        for (kk, e) in keys.iter_mut().zip(&exact) {
            if e.is_some() {
                *kk = None; // exact copies are already gone; keep them out of clusters
            }
        }
        cluster(&keys)
    } else {
        vec![None; ids.len()]
    };
    t_minhash += t.elapsed().as_secs_f64();
    drop(keys);
    drop(hashes);

    // Line dedup runs on the documents the doc-level dedup kept, in input
    // order (so sharded and unsharded runs agree), one filter for the corpus.
    let mut lines = cfg
        .line_dedup
        .enabled
        .then(|| LineDeduper::new(cfg.line_dedup.clone()));
    let mut t_lines = 0f64;
    let mut g = 0usize;
    for k in 0..n_shards {
        write_zst_atomic(&paths.kept(k), |kept_w| {
            write_zst_atomic(&paths.dedup_rejects(k), |rej_w| {
                read_stage1(&paths.stage1(k), |m, origin| {
                    let i = g;
                    g += 1;
                    let dup = exact[i]
                        .map(|j| ("exact_dedup", "duplicate", j))
                        .or(near[i].map(|j| ("minhash", "near_duplicate", j)));
                    match dup {
                        Some((filter, rule, j)) => {
                            let r = Reject {
                                kind: "document".into(),
                                id: ids[i].clone(),
                                file: origin.file,
                                line: origin.line,
                                filter: filter.into(),
                                rule: rule.into(),
                                value: None,
                                threshold: None,
                                detail: Some(format!("duplicate of {}", ids[j as usize])),
                                doc_line: None,
                                text: text_of(&m).to_string(),
                            };
                            record_reject(stats, &r);
                            write_json_line(rej_w, &r)
                        }
                        None => {
                            let mut m = m;
                            if let Some(ld) = &mut lines {
                                let t = Instant::now();
                                let kept = line_dedup(ld, &mut m, &ids[i], &origin, stats, rej_w);
                                t_lines += t.elapsed().as_secs_f64();
                                if !kept? {
                                    return Ok(());
                                }
                            }
                            stats.kept_docs += 1;
                            stats.kept_bytes += text_of(&m).len() as u64;
                            write_json_line(kept_w, &Value::Object(m))
                        }
                    }
                })
            })
        })?;
    }
    if cfg.exact_dedup.enabled {
        stats.filter("exact_dedup").time_s += t_exact;
    }
    if cfg.minhash.enabled {
        stats.filter("minhash").time_s += t_minhash;
    }
    if lines.is_some() {
        stats.filter("line_dedup").time_s += t_lines;
    }
    Ok(())
}

/// Removes lines seen in earlier documents from `m["text"]`, reporting each;
/// returns whether the document is kept (else it is reported as too short).
fn line_dedup(
    ld: &mut LineDeduper,
    m: &mut Map<String, Value>,
    id: &str,
    origin: &Origin,
    stats: &mut Stats,
    rej_w: &mut dyn Write,
) -> io::Result<bool> {
    let (text, removed, drop_words) = match ld.apply(text_of(m)) {
        LineDedupOutcome::Unchanged => return Ok(true),
        LineDedupOutcome::Rewritten { text, removed } => (text, removed, None),
        LineDedupOutcome::Drop {
            text,
            removed,
            words,
        } => (text, removed, Some(words)),
    };
    let fp = ld.current_fp_rate();
    let reject = |kind: &str, rule: &str, text: String| Reject {
        kind: kind.into(),
        id: id.into(),
        file: origin.file.clone(),
        line: origin.line,
        filter: "line_dedup".into(),
        rule: rule.into(),
        value: None,
        threshold: None,
        detail: None,
        doc_line: None,
        text,
    };
    for RemovedUnit { line, text } in removed {
        let mut r = reject("line", "duplicate_line", text);
        r.doc_line = Some(line);
        // The chance this removal is a Bloom false positive, and the target.
        r.value = Some(fp);
        r.threshold = Some(ld.config().fp_rate);
        record_reject(stats, &r);
        write_json_line(rej_w, &r)?;
    }
    if let Some(words) = drop_words {
        let mut r = reject("document", "short_after_line_dedup", text);
        r.value = Some(words as f64);
        r.threshold = Some(ld.config().min_doc_words as f64);
        record_reject(stats, &r);
        write_json_line(rej_w, &r)?;
        return Ok(false);
    }
    m.insert("text".into(), Value::String(text));
    Ok(true)
}
