//! Exclusive file locks with a deadline, shared by every process on one machine.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::PinningError;

/// An exclusive lock on a file; released when dropped (or when its process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Take the lock on `path` (created if missing), waiting at most `timeout`.
///
/// The holder writes its pid into the file, so a waiter that gives up can say who holds it.
pub fn lock(path: &Path, timeout: Duration, what: &str) -> Result<FileLock, PinningError> {
    let io = |source| PinningError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let start = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                if start.elapsed() >= timeout {
                    return Err(timed_out(path, &mut file, timeout, what));
                }
                if !announced && start.elapsed() > Duration::from_secs(1) {
                    log::info!(
                        "waiting for another process preparing {what} (lock `{}`)",
                        path.display()
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(FileLock { _file: file })
}

fn timed_out(path: &Path, file: &mut File, timeout: Duration, what: &str) -> PinningError {
    let mut holder = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut holder);
    PinningError::LockTimeout {
        what: what.to_string(),
        path: PathBuf::from(path),
        seconds: timeout.as_secs_f64(),
        holder: match holder.trim() {
            "" => "another process".to_string(),
            pid => format!("pid {pid}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_times_out_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let _held = lock(&path, Duration::from_secs(1), "x").unwrap();
        let err = lock(&path, Duration::from_millis(100), "the checkout `x`").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("timed out after 0.1 s"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(_held);
        lock(&path, Duration::from_millis(100), "x").unwrap();
    }
}
