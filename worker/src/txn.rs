//! Transactions on a worker: buffered write sets and the row lock table.
//!
//! A transaction's writes stay in its [`TxnState`] until commit, so other transactions never see
//! them (no dirty reads) while the transaction itself does. Every written key is locked for the
//! writer until commit/abort; a second writer waits. A waiter that would close a cycle in the
//! wait-for graph fails with 40P01 instead of waiting.

use std::collections::HashMap;
use std::sync::Arc;

use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::{ShardIndex, TableId};
use orochi_common::service::TxnId;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::load::{Loads, Run};

pub type LockKey = (TableId, Vec<u8>);

/// One buffered write: the new encoded row, or `None` for a delete.
#[derive(Debug, Clone)]
pub struct PendingWrite {
    pub shard: ShardIndex,
    pub value: Option<Vec<u8>>,
    /// The key was absent when written (an insert, or an update's new key): at commit it is
    /// checked against segments registered since the transaction began.
    pub insert: bool,
}

#[derive(Debug, Default)]
pub struct TxnState {
    pub writes: HashMap<LockKey, PendingWrite>,
    /// Previous write-set entry of each write since the first savepoint, in order, for rolling
    /// back to a savepoint (nothing is recorded before one exists: a bulk load pays nothing).
    undo: Vec<(LockKey, Option<PendingWrite>)>,
    /// Per savepoint: the length of `undo` and of the load runs when it was taken.
    marks: Vec<(usize, usize)>,
    pub locks: Vec<LockKey>,
    /// Bytes charged against the worker's write-set budget (released at commit/abort).
    pub charged: u64,
    /// Bulk loads (COPY) not yet registered as segments.
    pub loads: Loads,
    /// The newest registered segment when the transaction began.
    pub segments_seen: u64,
}

impl TxnState {
    pub fn new(segments_seen: u64) -> TxnState {
        TxnState {
            segments_seen,
            ..TxnState::default()
        }
    }

    pub fn put(&mut self, key: LockKey, write: PendingWrite) {
        if !self.marks.is_empty() {
            let prev = self.writes.insert(key.clone(), write);
            self.undo.push((key, prev));
        } else {
            self.writes.insert(key, write);
        }
    }

    /// Marks the current end of the write set and of the load runs (the caller has written
    /// the load buffers out first, so everything buffered later is after the mark).
    pub fn savepoint(&mut self) -> u64 {
        self.marks.push((self.undo.len(), self.loads.runs.len()));
        (self.marks.len() - 1) as u64
    }

    /// Undoes the writes and loads after savepoint `savepoint`; returns the runs to delete
    /// and the charge of the dropped load buffers.
    pub fn rollback_to(&mut self, savepoint: u64) -> (Vec<Run>, u64) {
        let Some(&(undo_len, runs_len)) = self.marks.get(savepoint as usize) else {
            return (Vec::new(), 0);
        };
        self.marks.truncate(savepoint as usize + 1);
        let runs = self
            .loads
            .runs
            .split_off(runs_len.min(self.loads.runs.len()));
        let charge = self.loads.drop_buffers();
        while self.undo.len() > undo_len {
            let (key, prev) = self.undo.pop().expect("len checked");
            match prev {
                Some(p) => {
                    self.writes.insert(key, p);
                }
                None => {
                    self.writes.remove(&key);
                }
            }
        }
        (runs, charge)
    }

    /// The transaction's own view of a key: `Some(Some(row))` written, `Some(None)` deleted,
    /// `None` untouched.
    pub fn lookup(&self, key: &LockKey) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|w| w.value.as_deref())
    }
}

struct LockEntry {
    owner: TxnId,
    released: Arc<Notify>,
}

#[derive(Default)]
struct LockInner {
    locks: HashMap<LockKey, LockEntry>,
    waits_for: HashMap<TxnId, TxnId>,
}

#[derive(Default)]
pub struct LockTable {
    inner: Mutex<LockInner>,
}

impl LockTable {
    /// Locks `key` for `txn`, waiting for its current owner to finish.
    /// Returns `true` if newly acquired (the caller records it for release).
    /// Waits at most `timeout` in all (then 55P03, as Postgres' `lock_timeout`).
    pub async fn acquire(
        &self,
        txn: TxnId,
        key: &LockKey,
        timeout: Option<std::time::Duration>,
    ) -> DbResult<bool> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let released = {
                let mut inner = self.inner.lock();
                let owner = match inner.locks.get(key) {
                    None => {
                        inner.locks.insert(
                            key.clone(),
                            LockEntry {
                                owner: txn,
                                released: Arc::new(Notify::new()),
                            },
                        );
                        inner.waits_for.remove(&txn);
                        return Ok(true);
                    }
                    Some(e) if e.owner == txn => return Ok(false),
                    Some(e) => (e.owner, e.released.clone()),
                };
                // deadlock check: does the owner (transitively) wait for us?
                let mut cur = owner.0;
                let mut steps = 0;
                while let Some(&next) = inner.waits_for.get(&cur) {
                    if next == txn || steps > 10_000 {
                        inner.waits_for.remove(&txn);
                        return Err(DbError::new(SqlState::DeadlockDetected, "deadlock detected")
                            .with_detail(format!(
                                "Transaction {txn} waits for transaction {}, which waits for transaction {txn}.",
                                owner.0
                            )));
                    }
                    cur = next;
                    steps += 1;
                }
                if cur == txn {
                    inner.waits_for.remove(&txn);
                    return Err(DbError::new(
                        SqlState::DeadlockDetected,
                        "deadlock detected",
                    ));
                }
                inner.waits_for.insert(txn, owner.0);
                owner.1
            };
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // re-check after enabling: the owner may have released in between
            let still_held = {
                let inner = self.inner.lock();
                inner
                    .locks
                    .get(key)
                    .is_some_and(|e| e.owner != txn && Arc::ptr_eq(&e.released, &released))
            };
            if still_held {
                match deadline {
                    None => notified.await,
                    Some(d) => {
                        if tokio::time::timeout_at(d, notified).await.is_err() {
                            self.inner.lock().waits_for.remove(&txn);
                            return Err(DbError::new(
                                SqlState::LockNotAvailable,
                                "canceling statement due to lock timeout",
                            ));
                        }
                    }
                }
            }
            self.inner.lock().waits_for.remove(&txn);
        }
    }

    /// Takes a lock nobody can hold yet (recovery of prepared transactions at start-up).
    pub fn take(&self, txn: TxnId, key: LockKey) {
        self.inner.lock().locks.insert(
            key,
            LockEntry {
                owner: txn,
                released: Arc::new(Notify::new()),
            },
        );
    }

    /// Releases the given locks held by `txn` and wakes their waiters.
    pub fn release_all(&self, txn: TxnId, keys: &[LockKey]) {
        let mut inner = self.inner.lock();
        inner.waits_for.remove(&txn);
        for k in keys {
            if let Some(e) = inner.locks.get(k)
                && e.owner == txn
            {
                let e = inner.locks.remove(k).expect("present");
                e.released.notify_waiters();
            }
        }
    }

    /// Removes `txn` from the wait-for graph (its wait was cancelled).
    pub fn forget_waiter(&self, txn: TxnId) {
        self.inner.lock().waits_for.remove(&txn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_writer_waits_and_deadlock_is_detected() {
        let locks = Arc::new(LockTable::default());
        let a: LockKey = (1, b"a".to_vec());
        let b: LockKey = (1, b"b".to_vec());
        assert!(locks.acquire(1, &a, None).await.unwrap());
        assert!(!locks.acquire(1, &a, None).await.unwrap());
        assert!(locks.acquire(2, &b, None).await.unwrap());
        // txn 2 waits for a (held by 1)
        let l2 = locks.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { l2.acquire(2, &a2, None).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        // txn 1 now wants b (held by 2, which waits for 1): deadlock
        let err = locks.acquire(1, &b, None).await.unwrap_err();
        assert_eq!(err.state, SqlState::DeadlockDetected);
        locks.release_all(1, std::slice::from_ref(&a));
        assert!(waiter.await.unwrap().unwrap());
    }
}
