//! Raft storage in the catalog's sled database: the log (`raft_log`, index → entry), the
//! vote, committed and purged ids (`raft_meta`), and the state machine — the `catalog` tree
//! with its applied id, membership and last snapshot in `raft_state`, each entry applied in
//! one sled transaction over both trees. Appends and applies are flushed before they are
//! reported done.

// openraft's storage traits return its (large) StorageError; the helpers here return it too
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use orochi_common::error::{DbError, DbResult, SqlState};
use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::TypeConfig;
use crate::catalog::{CatalogState, Outcome};

type Entry = openraft::Entry<TypeConfig>;
type StoreResult<T> = Result<T, StorageError<u64>>;
/// The applied log id and the membership it holds.
type Applied = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

fn io(e: sled::Error) -> DbError {
    DbError::new(SqlState::IoError, format!("catalog Raft storage: {e}"))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn get<T: for<'de> Deserialize<'de>>(tree: &sled::Tree, key: &str) -> StoreResult<Option<T>> {
    match tree.get(key).map_err(read_err)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(read_err),
    }
}

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> StoreResult<()> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    tree.insert(key, bytes).map_err(write_err)?;
    Ok(())
}

/// The log, and the vote that goes with it.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// The committed index openraft last reported (for `orochi_raft_status()`).
    committed: Arc<AtomicU64>,
}

impl LogStore {
    pub fn open(db: &sled::Db, committed: Arc<AtomicU64>) -> DbResult<LogStore> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("raft_log").map_err(io)?,
            meta: db.open_tree("raft_meta").map_err(io)?,
            committed,
        })
    }

    /// Removes the entries whose indexes are in `range` (as big-endian keys), durably.
    fn remove_entries(&self, range: impl RangeBounds<[u8; 8]>) -> StoreResult<()> {
        let keys: Vec<_> = self
            .log
            .range(range)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.flush()
    }

    fn flush(&self) -> StoreResult<()> {
        self.db.flush().map_err(write_err)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let purged: Option<LogId<u64>> = get(&self.meta, "purged")?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry = serde_json::from_slice(&v).map_err(read_err)?;
                Some(e.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        put(&self.meta, "vote", vote)?;
        self.flush()
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        get(&self.meta, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        // not flushed: after a crash it is only a hint (applies re-run from the applied id)
        put(&self.meta, "committed", &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        let c: Option<Option<LogId<u64>>> = get(&self.meta, "committed")?;
        let c = c.flatten();
        if let Some(c) = c {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(c)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = serde_json::to_vec(&e).map_err(write_err)?;
            batch.insert(&e.log_id.index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        let flushed = self.db.flush().map(|_| ()).map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.remove_entries(log_id.index.to_be_bytes()..)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        put(&self.meta, "purged", &Some(log_id))?;
        self.remove_entries(..=log_id.index.to_be_bytes())
    }
}

/// A snapshot as stored and sent: the whole `catalog` tree.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The state machine: the catalog, with what Raft needs to know about it.
#[derive(Clone)]
pub struct StateMachine {
    db: sled::Db,
    catalog: Arc<CatalogState>,
    /// `applied`, `membership`, `snapshot`.
    meta: sled::Tree,
    /// Held while applying and while reading the catalog for a snapshot, so a snapshot is one
    /// applied id's state.
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    pub fn open(db: &sled::Db, catalog: Arc<CatalogState>) -> DbResult<StateMachine> {
        Ok(StateMachine {
            db: db.clone(),
            catalog,
            meta: db.open_tree("raft_state").map_err(io)?,
            busy: Default::default(),
        })
    }

    fn applied(&self) -> StoreResult<Applied> {
        let applied = get::<Option<LogId<u64>>>(&self.meta, "applied")?.flatten();
        let membership = get(&self.meta, "membership")?.unwrap_or_default();
        Ok((applied, membership))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let _busy = self.busy.lock().await;
        let (applied, membership) = self.applied()?;
        let mut entries = Vec::new();
        for item in self.catalog.tree.iter() {
            let (k, v) = item.map_err(read_err)?;
            entries.push((k.to_vec(), v.to_vec()));
        }
        let data = serde_json::to_vec(&SnapshotBody { entries }).map_err(write_err)?;
        let snapshot_id = match applied {
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id.term,
                l.index,
                crate::session::txn_id_floor(0)
            ),
            None => format!("0-0-{}", crate::session::txn_id_floor(0)),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        put(
            &self.meta,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )?;
        self.db.flush().map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StoreResult<Applied> {
        self.applied()
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let _busy = self.busy.lock().await;
        let mut outcomes = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let applied = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
            let membership = match &entry.payload {
                EntryPayload::Membership(m) => Some(
                    serde_json::to_vec(&StoredMembership::new(Some(log_id), m.clone()))
                        .map_err(write_err)?,
                ),
                _ => None,
            };
            let result = (&self.catalog.tree, &self.meta).transaction(|(tree, meta)| {
                let out = match &entry.payload {
                    EntryPayload::Normal(command) => self.catalog.execute(tree, command)?,
                    _ => (Outcome::Done, Vec::new()),
                };
                meta.insert("applied", applied.as_slice())?;
                if let Some(m) = &membership {
                    meta.insert("membership", m.as_slice())?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(out)
            });
            let (outcome, changes) = result.map_err(|e| {
                StorageError::from(StorageIOError::apply(
                    log_id,
                    AnyError::error(format!("{e:?}")),
                ))
            })?;
            self.catalog.reflect(&changes).map_err(|e| {
                StorageError::from(StorageIOError::apply(log_id, AnyError::error(e.message)))
            })?;
            outcomes.push(outcome);
        }
        self.db.flush().map_err(write_err)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let _busy = self.busy.lock().await;
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(read_err)?;
        let old: Vec<sled::IVec> = self
            .catalog
            .tree
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(write_err)?;
        let membership = serde_json::to_vec(&meta.last_membership).map_err(write_err)?;
        (&self.catalog.tree, &self.meta)
            .transaction(|(tree, m)| {
                for k in &old {
                    tree.remove(k)?;
                }
                for (k, v) in &body.entries {
                    tree.insert(k.as_slice(), v.as_slice())?;
                }
                m.insert("applied", applied.as_slice())?;
                m.insert("membership", membership.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| write_err(std::io::Error::other(format!("{e:?}"))))?;
        put(
            &self.meta,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        self.db.flush().map_err(write_err)?;
        self.catalog
            .reload()
            .map_err(|e| write_err(std::io::Error::other(e.message)))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed a catalog snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(
            get::<StoredSnapshot>(&self.meta, "snapshot")?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }),
        )
    }
}
