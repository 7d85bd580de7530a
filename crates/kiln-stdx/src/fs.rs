//! Atomic file writes: a file is either complete or absent, never half written.
//!
//! The data goes to a temporary file in the same directory, is fsynced, then
//! renamed over the target, and the directory is fsynced so the rename itself
//! survives a crash.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically through a buffered writer handed to `fill`.
/// If `fill` fails, the target is left untouched and the temp file removed.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames a fully written directory into place atomically (used for
/// checkpoint directories: write `step_N.tmp/`, then rename to `step_N/`).
pub fn rename_dir_atomic(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(to)
}

fn temp_path(path: &Path) -> PathBuf {
    temp_sibling(path)
}

/// A temporary path beside `path`, unique to this process:
/// `.NAME.PID.tmp`. Write there, then rename over `path`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether `name` is a temporary file or directory kiln writes before a
/// rename: hidden, and ending in `.tmp` (this crate's [`temp_sibling`] and
/// older checkpoint temps) or in `.tmp-PID` / `.old-PID` / `.saving-PID`
/// (directory swaps).
pub fn is_temp_name(name: &str) -> bool {
    if !name.starts_with('.') || name == "." || name == ".." {
        return false;
    }
    if name.ends_with(".tmp") {
        return true;
    }
    ["tmp-", "old-", "saving-"].iter().any(|tag| {
        name.rsplit_once(&format!(".{tag}"))
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Removes the temporary files and directories ([`is_temp_name`]) in `dir`
/// and its non-hidden subdirectories: what killed runs left behind. Call it
/// only while holding `dir`'s [`crate::lock::DirLock`], before writing: then
/// no live process owns any of them. Returns what was removed.
pub fn remove_stale_temps(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    remove_temps_in(dir, 2, &mut removed)?;
    Ok(removed)
}

fn remove_temps_in(dir: &Path, depth: u32, removed: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        if is_temp_name(&name) {
            if is_dir {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed.push(path);
        } else if is_dir && depth > 1 && !name.starts_with('.') {
            remove_temps_in(&path, depth - 1, removed)?;
        }
    }
    Ok(())
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => match File::open(dir) {
            Ok(d) => d.sync_all().or(Ok(())),
            Err(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // no temp files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temps_of_every_kind_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ck = d.join("checkpoints");
        fs::create_dir_all(ck.join("step_00000002")).unwrap();
        fs::create_dir_all(ck.join("..step_00000004.tmp.tmp-4242")).unwrap();
        fs::create_dir_all(ck.join(".step_00000004.tmp")).unwrap();
        fs::create_dir_all(d.join(".model.saving-17")).unwrap();
        fs::create_dir_all(d.join(".model.old-17")).unwrap();
        fs::write(d.join(".metrics.jsonl.99.tmp"), b"x").unwrap();
        for keep in ["metrics.jsonl", ".kiln.lock", ".model.saving-", ".notes"] {
            fs::write(d.join(keep), b"x").unwrap();
        }
        let mut removed: Vec<String> = remove_stale_temps(d)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                ".metrics.jsonl.99.tmp",
                ".model.old-17",
                ".model.saving-17",
                "checkpoints/..step_00000004.tmp.tmp-4242",
                "checkpoints/.step_00000004.tmp",
            ]
        );
        assert!(ck.join("step_00000002").is_dir());
        for keep in ["metrics.jsonl", ".kiln.lock", ".model.saving-", ".notes"] {
            assert!(d.join(keep).exists(), "{keep}");
        }
    }

    #[test]
    fn failed_fill_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        let r = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
