//! Data directories: one process at a time (a lock file, like `postmaster.pid`).

use std::fs::{File, TryLockError};
use std::path::Path;

use anyhow::Context;

/// Creates `dir` if needed and locks it for this process; the lock lasts as long as the
/// returned file. A second process on the same directory is refused with a clear message.
pub fn lock(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let lock_path = dir.join("orochi.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "data directory {} is in use by another OrochiDB process (lock file {} is held)",
            dir.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
    }
}
