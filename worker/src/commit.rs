//! Group commit: a committer applies its changes, then waits until a flush that *started after*
//! its apply has completed. One flusher thread runs flushes back to back, so N concurrent
//! commits share one fsync instead of paying N.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use orochi_common::error::{DbError, DbResult, SqlState};
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::store::RowStore;

struct Shared {
    /// Sequence number of the latest applied commit.
    requested: AtomicU64,
    wake: Mutex<()>,
    cond: Condvar,
    stop: AtomicBool,
}

pub struct GroupCommit {
    shared: Arc<Shared>,
    /// The highest commit sequence known durable, or an error message if a flush failed.
    durable: watch::Receiver<Result<u64, String>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub fn start(store: Arc<RowStore>) -> GroupCommit {
        let shared = Arc::new(Shared {
            requested: AtomicU64::new(0),
            wake: Mutex::new(()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = watch::channel(Ok(0));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("orochi-group-commit".into())
            .spawn(move || {
                let mut flushed = 0u64;
                loop {
                    {
                        let mut guard = s.wake.lock();
                        while s.requested.load(Ordering::Acquire) == flushed
                            && !s.stop.load(Ordering::Acquire)
                        {
                            s.cond.wait(&mut guard);
                        }
                    }
                    let target = s.requested.load(Ordering::Acquire);
                    if target == flushed && s.stop.load(Ordering::Acquire) {
                        return;
                    }
                    match store.flush() {
                        Ok(()) => {
                            flushed = target;
                            let _ = tx.send_replace(Ok(target));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "row store flush failed");
                            let _ = tx.send_replace(Err(e.message));
                            return;
                        }
                    }
                }
            })
            .expect("spawning the group-commit thread");
        GroupCommit {
            shared,
            durable: rx,
            thread: Some(thread),
        }
    }

    /// Call after applying a commit's changes; returns once they are durable.
    pub async fn wait_durable(&self) -> DbResult<()> {
        let my_seq = self.shared.requested.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let _g = self.shared.wake.lock();
            self.shared.cond.notify_one();
        }
        let mut rx = self.durable.clone();
        let result = rx
            .wait_for(|v| match v {
                Ok(seq) => *seq >= my_seq,
                Err(_) => true,
            })
            .await;
        match result.as_deref() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(msg)) => Err(DbError::new(
                SqlState::IoError,
                format!("could not flush row store: {msg}"),
            )),
            Err(_) => Err(DbError::new(SqlState::IoError, "row store flusher stopped")),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _g = self.shared.wake.lock();
            self.shared.cond.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
