//! An exclusive lock on an output directory, so two kiln runs never write
//! into one directory at once.
//!
//! The lock is `flock(2)` on `DIR/.kiln.lock`, taken without waiting: the
//! kernel drops it when the holder exits, however it exits (kill -9
//! included), so a lock is never stale. The file holds the holder's PID for
//! the refusal message; it stays behind after the run (removing it would
//! race with a run that just opened it).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = ".kiln.lock";

/// Held while the value lives; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or fails at once when another
    /// process holds it: the error (kind `WouldBlock`) names the directory
    /// and the holder's PID.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        DirLock::lock(dir, true)
    }

    /// A shared lock: any number of shared holders (e.g. `curate --shard`
    /// parts writing disjoint files) may run together, never beside an
    /// exclusive one.
    pub fn acquire_shared(dir: &Path) -> io::Result<DirLock> {
        DirLock::lock(dir, false)
    }

    fn lock(dir: &Path, exclusive: bool) -> io::Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if let Err(e) = flock_now(&file, exclusive) {
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another kiln run ({holder} holds {}); wait for it to \
                     finish or choose another output directory",
                    dir.display(),
                    path.display()
                ),
            ));
        }
        if exclusive {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
        }
        Ok(DirLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// [`DirLock::acquire`], then removes the temporary files killed runs
    /// left in `dir` ([`crate::fs::remove_stale_temps`]): what every command
    /// does before writing into its output directory.
    pub fn claim(dir: &Path) -> io::Result<DirLock> {
        let lock = DirLock::acquire(dir)?;
        crate::fs::remove_stale_temps(dir)?;
        Ok(lock)
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(unix)]
fn flock_now(file: &File, exclusive: bool) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mode = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let r = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(unix))]
fn flock_now(_file: &File, _exclusive: bool) -> io::Result<()> {
    // No advisory locks here: runs are not protected from each other.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = DirLock::acquire(&out).unwrap();
        // flock conflicts between open file descriptions, even in one process.
        let e = DirLock::acquire(&out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("process {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&out.display().to_string()), "{msg}");
        drop(first);
        let again = DirLock::acquire(&out).unwrap();
        assert_eq!(again.dir(), out);
        assert!(DirLock::acquire_shared(&out).is_err());
        drop(again);
        let a = DirLock::acquire_shared(&out).unwrap();
        let b = DirLock::acquire_shared(&out).unwrap();
        assert!(DirLock::acquire(&out).is_err());
        drop((a, b));
        DirLock::acquire(&out).unwrap();
    }
}
