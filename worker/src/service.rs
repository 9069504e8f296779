//! [`LocalShardService`]: the worker's implementation of [`ShardService`], called in-process by
//! a standalone coordinator (and, later, by the Flight server of a worker daemon).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::keycodec;
use orochi_common::schema::{ShardIndex, TableDef, TableId};
use orochi_common::service::{
    BatchStream, Row, ScanRequest, ShardService, TxnId, WriteOp, WriteRequest, WriteResponse,
};
use parking_lot::Mutex;

use crate::batch::BatchBuilder;
use crate::commit::GroupCommit;
use crate::store::{Change, RowStore, TableEntry};
use crate::txn::{LockKey, LockTable, PendingWrite, TxnState};

/// Options of the embedded row store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache size.
    pub cache_bytes: u64,
    /// What the write sets of all open transactions may hold together; a write past it fails
    /// with 53200 (the transaction can be rolled back; the server stays up).
    pub write_set_limit_bytes: u64,
    /// The runtime plan fragments run in (its memory pool bounds their partial aggregates);
    /// `None`: a default runtime with an unbounded pool.
    pub query_runtime: Option<Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 256 << 20,
            write_set_limit_bytes: 512 << 20,
            query_runtime: None,
        }
    }
}

pub struct LocalShardService {
    store: Arc<RowStore>,
    group_commit: GroupCommit,
    locks: LockTable,
    txns: Mutex<HashMap<TxnId, Arc<Mutex<TxnState>>>>,
    /// Prepared transactions (two-phase commit): their changes, applied by
    /// `commit_prepared`, and the row locks they keep until then.
    prepared: Mutex<HashMap<TxnId, PreparedTxn>>,
    /// Bytes the open transactions' write sets hold (estimated), and the most they may.
    write_set_bytes: std::sync::atomic::AtomicU64,
    write_set_limit: u64,
    /// Where plan fragments run.
    fragment_ctx: Arc<datafusion::execution::TaskContext>,
}

/// Bytes one written row holds beyond its key and encoded row until commit: the write-set map
/// entry, the row lock (lock-table entry, its notifier, the transaction's lock list, each
/// with a copy of the key), allocator rounding and map growth. Measured, release build: a
/// 1M-row COPY (bigint key, ~50-byte rows) held open in a transaction added 505 MB of RSS
/// and peaked 600 MB above the idle server, i.e. ~500–600 bytes a row; 160 (the first
/// estimate) let the write sets grow to 3× their budget.
const WRITE_ENTRY_OVERHEAD: u64 = 480;

struct PreparedTxn {
    changes: Vec<Change>,
    locks: Vec<LockKey>,
}

impl std::fmt::Debug for LocalShardService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShardService").finish_non_exhaustive()
    }
}

impl LocalShardService {
    pub fn open(dir: &Path, options: &StoreOptions) -> DbResult<LocalShardService> {
        let store = Arc::new(RowStore::open(dir, options.cache_bytes)?);
        let group_commit = GroupCommit::start(store.clone());
        // transactions prepared before a restart are in doubt: they keep their row locks
        // until the coordinator decides
        let locks = LockTable::default();
        let mut prepared = HashMap::new();
        for (txn, changes) in store.load_prepared()? {
            let keys: Vec<LockKey> = changes.iter().map(|c| (c.table, c.key.clone())).collect();
            for k in &keys {
                locks.take(txn, k.clone());
            }
            tracing::info!(
                txn,
                changes = changes.len(),
                "prepared transaction in doubt"
            );
            prepared.insert(
                txn,
                PreparedTxn {
                    changes,
                    locks: keys,
                },
            );
        }
        Ok(LocalShardService {
            store,
            group_commit,
            locks,
            txns: Mutex::new(HashMap::new()),
            prepared: Mutex::new(prepared),
            write_set_bytes: Default::default(),
            write_set_limit: options.write_set_limit_bytes,
            fragment_ctx: crate::fragment::task_context(
                options.query_runtime.clone().unwrap_or_default(),
            ),
        })
    }

    /// A scan's rows (no fragment): the shards' committed rows overlaid with the
    /// transaction's own writes, as a bounded stream of batches.
    fn scan_rows(&self, txn: TxnId, req: ScanRequest) -> DbResult<BatchStream> {
        let entry = self.store.table(req.table)?;
        for &s in &req.shards {
            entry.tree(s)?;
        }
        if let Some(&bad) = req
            .projection
            .iter()
            .find(|&&i| i >= entry.def.columns.len())
        {
            return Err(DbError::internal(format!(
                "projection column {bad} out of range"
            )));
        }
        // the transaction's own writes to this table, per shard
        let mut overlay: HashMap<ShardIndex, HashMap<Vec<u8>, Option<Vec<u8>>>> = HashMap::new();
        if let Some(state) = self.existing_txn_state(txn) {
            for ((t, key), w) in state.lock().writes.iter() {
                if *t == req.table {
                    overlay
                        .entry(w.shard)
                        .or_default()
                        .insert(key.clone(), w.value.clone());
                }
            }
        }
        let cursor = ScanCursor::new(entry, req, overlay);
        // One blocking task per batch, not one thread per scan: a thread never waits for a
        // slow consumer, so the blocking pool (bounded, see main) serves any number of
        // concurrent scans without parking a thread, its stack and allocator caches on each.
        // The next batch is produced while the consumer works on this one.
        let stream = futures::stream::try_unfold(Some(cursor.spawn_next()), |task| async move {
            let Some(task) = task else {
                return Ok(None);
            };
            let (cursor, batch) = task
                .await
                .map_err(|e| DbError::internal(format!("scan task: {e}")))?;
            let Some(batch) = batch? else {
                return Ok(None);
            };
            Ok(Some((batch, (!cursor.done).then(|| cursor.spawn_next()))))
        });
        Ok(Box::pin(stream))
    }

    /// Charges a write of `bytes` (key + row) to the transaction, or fails with 53200 when the
    /// open transactions' write sets would outgrow their budget.
    fn charge(&self, st: &mut TxnState, bytes: usize) -> DbResult<()> {
        use std::sync::atomic::Ordering;
        let cost = bytes as u64 + WRITE_ENTRY_OVERHEAD;
        let total = self.write_set_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        if total > self.write_set_limit {
            self.write_set_bytes.fetch_sub(cost, Ordering::Relaxed);
            return Err(DbError::new(
                SqlState::OutOfMemory,
                "out of memory: transaction write sets are over their budget",
            )
            .with_detail(format!(
                "Uncommitted writes of all open transactions are limited to {} MiB \
                 (write_set_limit_bytes); this transaction holds {} MiB. Commit in smaller \
                 transactions, or raise the limit.",
                self.write_set_limit >> 20,
                st.charged >> 20
            )));
        }
        st.charged += cost;
        Ok(())
    }

    /// Adds a write to the transaction's write set, charged to the budget.
    fn put(&self, st: &mut TxnState, key: LockKey, write: PendingWrite) -> DbResult<()> {
        self.charge(st, key.1.len() + write.value.as_ref().map_or(0, Vec::len))?;
        st.put(key, write);
        Ok(())
    }

    /// Returns a finished transaction's charge to the budget.
    fn release(&self, st: &TxnState) {
        self.write_set_bytes
            .fetch_sub(st.charged, std::sync::atomic::Ordering::Relaxed);
    }

    fn txn_state(&self, txn: TxnId) -> Arc<Mutex<TxnState>> {
        self.txns.lock().entry(txn).or_default().clone()
    }

    fn existing_txn_state(&self, txn: TxnId) -> Option<Arc<Mutex<TxnState>>> {
        self.txns.lock().get(&txn).cloned()
    }

    async fn lock(
        &self,
        txn: TxnId,
        state: &Mutex<TxnState>,
        key: &LockKey,
        timeout: Option<std::time::Duration>,
    ) -> DbResult<()> {
        if self.locks.acquire(txn, key, timeout).await? {
            state.lock().locks.push(key.clone());
        }
        Ok(())
    }

    /// Whether `key` exists as seen by `txn` (own writes first, then committed data).
    fn exists(
        &self,
        entry: &TableEntry,
        state: &TxnState,
        shard: ShardIndex,
        key: &[u8],
    ) -> DbResult<bool> {
        if let Some(v) = state.lookup(&(entry.def.id, key.to_vec())) {
            return Ok(v.is_some());
        }
        entry
            .tree(shard)?
            .contains_key(key)
            .map_err(|e| DbError::new(SqlState::IoError, format!("row store read: {e}")))
    }

    fn read(
        &self,
        entry: &TableEntry,
        state: Option<&TxnState>,
        key: &[u8],
    ) -> DbResult<Option<Row>> {
        if let Some(state) = state
            && let Some(v) = state.lookup(&(entry.def.id, key.to_vec()))
        {
            return v.map(|b| entry.decode_row(b)).transpose();
        }
        let shard = entry.shard_of_key(key)?;
        let bytes = entry
            .tree(shard)?
            .get(key)
            .map_err(|e| DbError::new(SqlState::IoError, format!("row store read: {e}")))?;
        bytes.map(|b| entry.decode_row(&b)).transpose()
    }
}

impl LocalShardService {
    /// Removes a transaction's state and returns its charge to the write-set budget.
    fn take_txn(&self, txn: TxnId) -> Option<TxnState> {
        let state = self.txns.lock().remove(&txn)?;
        let state = std::mem::take(&mut *state.lock());
        self.release(&state);
        Some(state)
    }

    /// Applies committed changes to the row store (big ones on the blocking pool).
    async fn apply(&self, changes: Vec<Change>) -> DbResult<()> {
        if changes.is_empty() {
            Ok(())
        } else if changes.len() > 1000 {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.apply(&changes))
                .await
                .map_err(|e| DbError::internal(format!("commit task: {e}")))
                .and_then(|r| r)
        } else {
            self.store.apply(&changes)
        }
    }
}

/// A finished transaction's writes as row-store changes, and the locks it holds.
fn into_changes(state: TxnState) -> (Vec<Change>, Vec<LockKey>) {
    let changes = state
        .writes
        .into_iter()
        .map(|((table, key), w)| Change {
            table,
            shard: w.shard,
            key,
            value: w.value,
        })
        .collect();
    (changes, state.locks)
}

fn duplicate_key(def: &TableDef, row: &[Datum]) -> DbError {
    let cols: Vec<&str> = def
        .primary_key
        .iter()
        .map(|&i| def.columns[i].name.as_str())
        .collect();
    let vals: Vec<String> = def
        .primary_key
        .iter()
        .map(|&i| row[i].to_text().unwrap_or_else(|| "null".into()))
        .collect();
    DbError::new(
        SqlState::UniqueViolation,
        format!(
            "duplicate key value violates unique constraint \"{}_pkey\"",
            def.name
        ),
    )
    .with_detail(format!(
        "Key ({})=({}) already exists.",
        cols.join(", "),
        vals.join(", ")
    ))
}

#[async_trait]
impl ShardService for LocalShardService {
    async fn create_table(&self, table: &TableDef) -> DbResult<()> {
        self.store.create_table(table)?;
        self.store.flush()
    }

    async fn alter_table(&self, table: &TableDef) -> DbResult<()> {
        self.store.alter_table(table)?;
        self.store.flush()
    }

    async fn drop_table(&self, table: TableId) -> DbResult<()> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.drop_table(table)?;
            store.flush()
        })
        .await
        .map_err(|e| DbError::internal(format!("drop table task: {e}")))?
    }

    async fn truncate(&self, table: TableId) -> DbResult<()> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.truncate(table)?;
            store.flush()
        })
        .await
        .map_err(|e| DbError::internal(format!("truncate task: {e}")))?
    }

    async fn get(
        &self,
        txn: TxnId,
        table: TableId,
        keys: &[Vec<u8>],
        lock: bool,
        lock_timeout: Option<std::time::Duration>,
    ) -> DbResult<Vec<Option<Row>>> {
        let entry = self.store.table(table)?;
        let state = if lock {
            Some(self.txn_state(txn))
        } else {
            self.existing_txn_state(txn)
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if lock {
                let state = state.as_ref().expect("created above");
                self.lock(txn, state, &(table, key.clone()), lock_timeout)
                    .await?;
            }
            let guard = state.as_ref().map(|s| s.lock());
            out.push(self.read(&entry, guard.as_deref(), key)?);
        }
        Ok(out)
    }

    async fn scan(&self, txn: TxnId, mut req: ScanRequest) -> DbResult<BatchStream> {
        let fragment = req.fragment.take();
        let more = std::mem::take(&mut req.more_inputs);
        let Some(bytes) = fragment else {
            if !more.is_empty() {
                return Err(DbError::new(
                    SqlState::ProtocolViolation,
                    "more scan inputs without a plan fragment to read them",
                ));
            }
            return self.scan_rows(txn, req);
        };
        // input 0 is the request's table; the others are read over the same shards
        let mut streams = Vec::with_capacity(1 + more.len());
        for input in more {
            let other = ScanRequest {
                table: input.table,
                projection: input.projection,
                keys: None,
                limit: None,
                ..req.clone()
            };
            streams.push(self.scan_rows(txn, other)?);
        }
        streams.insert(0, self.scan_rows(txn, req)?);
        crate::fragment::execute(&bytes, streams, self.fragment_ctx.clone())
    }

    async fn write(&self, txn: TxnId, req: WriteRequest) -> DbResult<WriteResponse> {
        let entry = self.store.table(req.table)?;
        let def = &entry.def;
        let state = self.txn_state(txn);
        let mut applied = Vec::with_capacity(req.ops.len());
        for op in req.ops {
            match op {
                WriteOp::Insert { row } => {
                    let key = def.encode_key(&row);
                    let shard = def.shard_of_row(&row);
                    let lk = (def.id, key);
                    // A hidden row id comes from a sequence: a new one cannot collide with
                    // a stored row or another writer, so there is nothing to lock or check.
                    if !def.hidden_rowid {
                        self.lock(txn, &state, &lk, req.lock_timeout).await?;
                    }
                    let mut st = state.lock();
                    if !def.hidden_rowid && self.exists(&entry, &st, shard, &lk.1)? {
                        return Err(duplicate_key(def, &row));
                    }
                    self.put(
                        &mut st,
                        lk,
                        PendingWrite {
                            shard,
                            value: Some(entry.encode_row(&row)),
                        },
                    )?;
                    applied.push(true);
                }
                WriteOp::InsertIgnore { row } => {
                    let key = def.encode_key(&row);
                    let shard = def.shard_of_row(&row);
                    let lk = (def.id, key);
                    self.lock(txn, &state, &lk, req.lock_timeout).await?;
                    let mut st = state.lock();
                    if self.exists(&entry, &st, shard, &lk.1)? {
                        applied.push(false);
                    } else {
                        self.put(
                            &mut st,
                            lk,
                            PendingWrite {
                                shard,
                                value: Some(entry.encode_row(&row)),
                            },
                        )?;
                        applied.push(true);
                    }
                }
                WriteOp::Update { old_key, row } => {
                    let new_key = def.encode_key(&row);
                    let new_shard = def.shard_of_row(&row);
                    let old = (def.id, old_key);
                    self.lock(txn, &state, &old, req.lock_timeout).await?;
                    if new_key != old.1 {
                        let new = (def.id, new_key);
                        self.lock(txn, &state, &new, req.lock_timeout).await?;
                        let old_shard = entry.shard_of_key(&old.1)?;
                        let mut st = state.lock();
                        if self.exists(&entry, &st, new_shard, &new.1)? {
                            return Err(duplicate_key(def, &row));
                        }
                        self.put(
                            &mut st,
                            old,
                            PendingWrite {
                                shard: old_shard,
                                value: None,
                            },
                        )?;
                        self.put(
                            &mut st,
                            new,
                            PendingWrite {
                                shard: new_shard,
                                value: Some(entry.encode_row(&row)),
                            },
                        )?;
                    } else {
                        self.put(
                            &mut state.lock(),
                            old,
                            PendingWrite {
                                shard: new_shard,
                                value: Some(entry.encode_row(&row)),
                            },
                        )?;
                    }
                    applied.push(true);
                }
                WriteOp::Delete { key } => {
                    let shard = entry.shard_of_key(&key)?;
                    let lk = (def.id, key);
                    self.lock(txn, &state, &lk, req.lock_timeout).await?;
                    self.put(&mut state.lock(), lk, PendingWrite { shard, value: None })?;
                    applied.push(true);
                }
            }
        }
        Ok(WriteResponse { applied })
    }

    async fn commit(&self, txn: TxnId) -> DbResult<()> {
        let Some(state) = self.take_txn(txn) else {
            return Ok(());
        };
        let (changes, locks) = into_changes(state);
        let empty = changes.is_empty();
        let applied = self.apply(changes).await;
        // Early lock release: the row locks go as soon as the changes are applied, not after
        // the fsync. Safe for acknowledged commits because the row store has one log, flushed
        // in order: a transaction that takes these rows next applies after us, and the flush
        // it waits for before its own acknowledgement covers our changes too. Waiters no
        // longer queue behind our fsync (Postgres holds its locks through the WAL flush).
        self.locks.release_all(txn, &locks);
        applied?;
        if !empty {
            self.group_commit.wait_durable().await?;
        }
        Ok(())
    }

    async fn abort(&self, txn: TxnId) {
        self.locks.forget_waiter(txn);
        let Some(state) = self.txns.lock().remove(&txn) else {
            return;
        };
        self.release(&state.lock());
        let locks = std::mem::take(&mut state.lock().locks);
        self.locks.release_all(txn, &locks);
    }

    async fn prepare(&self, txn: TxnId) -> DbResult<()> {
        let (changes, locks) = match self.take_txn(txn) {
            Some(state) => into_changes(state),
            None => (Vec::new(), Vec::new()),
        };
        let store = self.store.clone();
        let changes = tokio::task::spawn_blocking(move || {
            store.save_prepared(txn, &changes).map(|()| changes)
        })
        .await
        .map_err(|e| DbError::internal(format!("prepare task: {e}")))?;
        let changes = match changes {
            Ok(c) => c,
            Err(e) => {
                self.locks.release_all(txn, &locks);
                return Err(e);
            }
        };
        self.prepared
            .lock()
            .insert(txn, PreparedTxn { changes, locks });
        self.group_commit.wait_durable().await
    }

    async fn commit_prepared(&self, txn: TxnId) -> DbResult<()> {
        let Some(p) = self.prepared.lock().remove(&txn) else {
            return Ok(());
        };
        let PreparedTxn { changes, locks } = p;
        let applied = self.apply(changes).await;
        if let Err(e) = applied {
            // still prepared: the decision can be retried
            tracing::error!(txn, error = %e.message, "applying a prepared transaction failed");
            let changes = self
                .store
                .load_prepared()?
                .into_iter()
                .find(|(t, _)| *t == txn);
            if let Some((_, changes)) = changes {
                self.prepared
                    .lock()
                    .insert(txn, PreparedTxn { changes, locks });
            }
            return Err(e);
        }
        // replaying a commit is harmless (same values), so the record may go after the apply
        self.store.remove_prepared(txn)?;
        self.locks.release_all(txn, &locks);
        self.group_commit.wait_durable().await
    }

    async fn abort_prepared(&self, txn: TxnId) -> DbResult<()> {
        let Some(p) = self.prepared.lock().remove(&txn) else {
            return Ok(());
        };
        // if this removal is lost in a crash, the coordinator aborts it again: no commit
        // decision exists for it
        self.store.remove_prepared(txn)?;
        self.locks.release_all(txn, &p.locks);
        Ok(())
    }

    async fn abort_open(&self, below: TxnId) -> DbResult<usize> {
        let open: Vec<TxnId> = self
            .txns
            .lock()
            .keys()
            .copied()
            .filter(|&t| t < below)
            .collect();
        for &txn in &open {
            self.abort(txn).await;
        }
        Ok(open.len())
    }

    async fn prepared(&self) -> DbResult<Vec<TxnId>> {
        let mut out: Vec<TxnId> = self.prepared.lock().keys().copied().collect();
        out.sort_unstable();
        Ok(out)
    }

    async fn savepoint(&self, txn: TxnId) -> DbResult<u64> {
        // the state must exist from here on: writes after the savepoint record their undo
        Ok(self.txn_state(txn).lock().savepoint())
    }

    async fn rollback_to(&self, txn: TxnId, savepoint: u64) -> DbResult<()> {
        if let Some(s) = self.existing_txn_state(txn) {
            s.lock().rollback_to(savepoint);
        }
        Ok(())
    }

    async fn nodes(&self) -> Vec<orochi_common::service::NodeStatus> {
        vec![orochi_common::service::NodeStatus {
            address: "embedded".into(),
            up: true,
            last_contact_micros: Some(chrono::Utc::now().timestamp_micros()),
        }]
    }

    fn placement_width(&self) -> u32 {
        0
    }

    fn owner_of(&self, _table: &TableDef, _shard: ShardIndex) -> usize {
        0
    }

    fn node_address(&self, _node: usize) -> String {
        "embedded".into()
    }

    async fn shard_stats(&self, table: TableId) -> DbResult<Vec<(ShardIndex, u64, u64)>> {
        let entry = self.store.table(table)?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (i, t) in entry.shards.iter().enumerate() {
                let mut rows = 0u64;
                let mut bytes = 0u64;
                for item in t.iter() {
                    let (k, v) = item.map_err(|e| {
                        DbError::new(SqlState::IoError, format!("row store read: {e}"))
                    })?;
                    rows += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
                out.push((i as ShardIndex, rows, bytes));
            }
            Ok(out)
        })
        .await
        .map_err(|e| DbError::internal(format!("stats task: {e}")))?
    }
}

/// Runs on a blocking thread: reads the shards and sends batches until done or the consumer
/// goes away.
/// A scan in progress: where it is, so that each batch can be produced by a separate
/// blocking task.
struct ScanCursor {
    entry: Arc<TableEntry>,
    req: ScanRequest,
    /// The transaction's own writes, per shard: they replace stored rows with the same key.
    overlay: HashMap<ShardIndex, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Next entry of `req.shards` (or of `req.keys`) to start.
    next: usize,
    /// The shard being read, and its stored rows from where the last batch stopped.
    current: Option<(ShardIndex, sled::Iter)>,
    remaining: usize,
    done: bool,
}

impl ScanCursor {
    fn new(
        entry: Arc<TableEntry>,
        req: ScanRequest,
        overlay: HashMap<ShardIndex, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    ) -> Self {
        let remaining = req.limit.unwrap_or(usize::MAX);
        ScanCursor {
            entry,
            req,
            overlay,
            next: 0,
            current: None,
            remaining,
            done: remaining == 0,
        }
    }

    /// Produces the next batch on the blocking pool.
    fn spawn_next(
        mut self,
    ) -> tokio::task::JoinHandle<(Self, DbResult<Option<arrow::record_batch::RecordBatch>>)> {
        tokio::task::spawn_blocking(move || {
            let batch = self.next_batch();
            (self, batch)
        })
    }

    /// Up to `batch_rows` rows; `None` at the end. Sets `done` when nothing follows.
    fn next_batch(&mut self) -> DbResult<Option<arrow::record_batch::RecordBatch>> {
        let batch_rows = self.req.batch_rows.max(1);
        let mut builder = BatchBuilder::new(&self.entry.def, &self.req.projection, batch_rows);
        let io = |e: sled::Error| DbError::new(SqlState::IoError, format!("row store read: {e}"));
        while !self.done && builder.len() < batch_rows {
            if let Some(keys) = &self.req.keys {
                let Some(key) = keys.get(self.next) else {
                    self.done = true;
                    break;
                };
                self.next += 1;
                let shard = self.entry.shard_of_key(key)?;
                let value = match self.overlay.get(&shard).and_then(|own| own.get(key)) {
                    Some(v) => v.clone(),
                    None => self
                        .entry
                        .tree(shard)?
                        .get(key)
                        .map_err(io)?
                        .map(|v| v.to_vec()),
                };
                if let Some(v) = value {
                    self.push(&mut builder, &v)?;
                }
                continue;
            }
            let Some((shard, iter)) = &mut self.current else {
                let Some(&shard) = self.req.shards.get(self.next) else {
                    self.done = true;
                    break;
                };
                self.next += 1;
                self.current = Some((shard, self.entry.tree(shard)?.iter()));
                continue;
            };
            let shard = *shard;
            match iter.next() {
                Some(item) => {
                    let (k, v) = item.map_err(io)?;
                    if self
                        .overlay
                        .get(&shard)
                        .is_some_and(|own| own.contains_key(k.as_ref()))
                    {
                        continue;
                    }
                    self.push(&mut builder, &v)?;
                }
                None => {
                    // the stored rows of this shard are done; then its rows written by this
                    // transaction
                    self.current = None;
                    if let Some(own) = self.overlay.remove(&shard) {
                        for v in own.values().flatten() {
                            self.push(&mut builder, v)?;
                            if self.done {
                                break;
                            }
                        }
                    }
                }
            }
        }
        (!builder.is_empty()).then(|| builder.finish()).transpose()
    }

    fn push(&mut self, builder: &mut BatchBuilder, bytes: &[u8]) -> DbResult<()> {
        let row = self.entry.decode_row(bytes)?;
        builder.push(self.req.projection.iter().map(|&i| &row[i]))?;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.done = true;
        }
        Ok(())
    }
}

/// Encodes a primary key from its values (helper for callers holding values, not rows).
pub fn encode_key_values(values: &[Datum]) -> Vec<u8> {
    let refs: Vec<&Datum> = values.iter().collect();
    keycodec::encode_key(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::table;

    fn insert(k: i64) -> WriteRequest {
        WriteRequest {
            table: 16384,
            ops: vec![WriteOp::Insert {
                row: vec![Datum::Int8(k), Datum::Int8(k * 10)],
            }],
            lock_timeout: Some(std::time::Duration::from_millis(50)),
        }
    }

    /// A prepared transaction survives a restart of the worker in doubt: its rows are not
    /// visible, its row locks still held, until the decision comes; commit then applies it
    /// and abort discards it.
    #[tokio::test]
    async fn prepared_transactions_survive_a_restart_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let def = table();
        let key = |k: i64| def.encode_key(&[Datum::Int8(k), Datum::Int8(0)]);
        {
            let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
            s.create_table(&def).await.unwrap();
            s.write(7, insert(1)).await.unwrap();
            s.prepare(7).await.unwrap();
            s.write(8, insert(2)).await.unwrap();
            s.prepare(8).await.unwrap();
            assert_eq!(s.prepared().await.unwrap(), vec![7, 8]);
        }
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(s.prepared().await.unwrap(), vec![7, 8]);
        assert_eq!(
            s.get(9, 16384, &[key(1)], false, None).await.unwrap(),
            vec![None]
        );
        // the in-doubt transaction still holds its row lock
        let err = s.write(9, insert(1)).await.unwrap_err();
        assert_eq!(err.state, SqlState::LockNotAvailable);
        s.abort(9).await;

        s.commit_prepared(7).await.unwrap();
        s.abort_prepared(8).await.unwrap();
        // idempotent: a repeated decision is not an error
        s.commit_prepared(7).await.unwrap();
        assert!(s.prepared().await.unwrap().is_empty());
        let rows = s
            .get(10, 16384, &[key(1), key(2)], false, None)
            .await
            .unwrap();
        assert_eq!(rows[0], Some(vec![Datum::Int8(1), Datum::Int8(10)]));
        assert_eq!(rows[1], None);
        // the locks are gone with the decisions
        s.write(10, insert(2)).await.unwrap();
        s.commit(10).await.unwrap();
        drop(s);
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(s.prepared().await.unwrap().is_empty());
    }
}
