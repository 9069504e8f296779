//! [`LocalShardService`]: the worker's implementation of [`ShardService`], called in-process by
//! a standalone coordinator (and, later, by the Flight server of a worker daemon).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::keycodec;
use orochi_common::schema::{ShardIndex, TableDef, TableId};
use orochi_common::service::{
    BatchStream, Row, ScanRequest, ShardService, ShardStats, TxnId, WriteOp, WriteRequest,
    WriteResponse,
};
use parking_lot::Mutex;

use crate::batch::BatchBuilder;
use crate::commit::GroupCommit;
use crate::load::Run;
use crate::segment::{self, Segment};
use crate::store::convert::ConversionPolicy;
use crate::store::{Change, PreparedRecord, RowStore, TableEntry};
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
    /// When shards' row stores are converted into columnar segments in the background.
    pub conversion: ConversionPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 256 << 20,
            write_set_limit_bytes: 512 << 20,
            query_runtime: None,
            conversion: ConversionPolicy::default(),
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
    /// Tables being rewritten: writes to them fail (see `ShardService::freeze_table`).
    frozen: Mutex<std::collections::HashSet<TableId>>,
    /// Moves row-store rows into columnar segments in the background.
    _converter: Option<Converter>,
}

/// The thread that converts due shards (`store/convert.rs`) every
/// [`ConversionPolicy::check_every`]; stopped and joined when the service is dropped.
struct Converter {
    stop: Arc<(
        std::sync::atomic::AtomicBool,
        parking_lot::Mutex<()>,
        parking_lot::Condvar,
    )>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Converter {
    fn start(store: Arc<RowStore>, policy: ConversionPolicy) -> Option<Converter> {
        let every = policy.check_every?;
        tracing::debug!(?policy, "background conversion of row stores");
        let stop = Arc::new((
            std::sync::atomic::AtomicBool::new(false),
            parking_lot::Mutex::new(()),
            parking_lot::Condvar::new(),
        ));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("orochi-convert".into())
            .spawn(move || {
                let (flag, lock, cond) = &*s;
                loop {
                    {
                        let mut g = lock.lock();
                        if !flag.load(std::sync::atomic::Ordering::Acquire) {
                            cond.wait_for(&mut g, every);
                        }
                    }
                    if flag.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    match store.convert_due(&policy, flag) {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(rows, "row store rows converted into segments"),
                        Err(e) => tracing::warn!(error = %e.message, "converting row stores"),
                    }
                }
            })
            .ok()?;
        Some(Converter {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Converter {
    fn drop(&mut self) {
        let (flag, lock, cond) = &*self.stop;
        flag.store(true, std::sync::atomic::Ordering::Release);
        {
            let _g = lock.lock();
            cond.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    /// A prepared load's runs, registered when it commits.
    runs: Vec<Arc<Segment>>,
}

impl std::fmt::Debug for LocalShardService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShardService").finish_non_exhaustive()
    }
}

impl LocalShardService {
    pub fn open(dir: &Path, options: &StoreOptions) -> DbResult<LocalShardService> {
        let runtime = options.query_runtime.clone().unwrap_or_default();
        // decoded segment batches are reserved in the query memory pool
        let store = Arc::new(RowStore::open_with(
            dir,
            options.cache_bytes,
            crate::segment::BatchCache::in_pool(&runtime.memory_pool),
        )?);
        let group_commit = GroupCommit::start(store.clone());
        // transactions prepared before a restart are in doubt: they keep their row locks
        // until the coordinator decides
        let locks = LockTable::default();
        let mut prepared = HashMap::new();
        for record in store.load_prepared()? {
            let PreparedRecord { txn, changes, runs } = record;
            let keys: Vec<LockKey> = changes.iter().map(|c| (c.table, c.key.clone())).collect();
            for k in &keys {
                locks.take(txn, k.clone());
            }
            store.reserve(txn, &changes, &runs);
            tracing::info!(
                txn,
                changes = changes.len(),
                loaded = runs.iter().map(|r| r.meta.rows).sum::<u64>(),
                "prepared transaction in doubt"
            );
            prepared.insert(
                txn,
                PreparedTxn {
                    changes,
                    locks: keys,
                    runs,
                },
            );
        }
        let store_for_converter = store.clone();
        Ok(LocalShardService {
            store,
            group_commit,
            locks,
            txns: Mutex::new(HashMap::new()),
            prepared: Mutex::new(prepared),
            write_set_bytes: Default::default(),
            write_set_limit: options.write_set_limit_bytes,
            fragment_ctx: crate::fragment::task_context(runtime),
            frozen: Default::default(),
            _converter: Converter::start(store_for_converter, options.conversion),
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
        // the transaction's own runs (a shard's registered segments are listed when the scan
        // reaches it)
        let mut own_runs: HashMap<ShardIndex, Vec<Arc<Segment>>> = HashMap::new();
        if let Some(state) = self.existing_txn_state(txn) {
            let st = state.lock();
            for ((t, key), w) in st.writes.iter() {
                if *t == req.table {
                    overlay
                        .entry(w.shard)
                        .or_default()
                        .insert(key.clone(), w.value.clone());
                }
            }
            if st.loads.touches(req.table) {
                for &s in &req.shards {
                    let own = st.loads.runs_of(req.table, s);
                    if !own.is_empty() {
                        own_runs.insert(s, own);
                    }
                }
            }
        }
        let cursor = ScanCursor::new(self.store.clone(), entry, req, overlay, own_runs);
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
        self.charge_exactly(st, bytes as u64 + WRITE_ENTRY_OVERHEAD)
    }

    /// Charges exactly `cost` bytes (a load buffer's rows: no write-set entry or lock).
    fn charge_exactly(&self, st: &mut TxnState, cost: u64) -> DbResult<()> {
        use std::sync::atomic::Ordering;
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

    /// Returns part of a transaction's charge (load buffers written out or dropped).
    fn uncharge(&self, st: &mut TxnState, bytes: u64) {
        let bytes = bytes.min(st.charged);
        st.charged -= bytes;
        self.write_set_bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns a finished transaction's charge to the budget.
    fn release(&self, st: &TxnState) {
        self.write_set_bytes
            .fetch_sub(st.charged, std::sync::atomic::Ordering::Relaxed);
    }

    fn txn_state(&self, txn: TxnId) -> Arc<Mutex<TxnState>> {
        self.txns
            .lock()
            .entry(txn)
            .or_insert_with(|| Arc::new(Mutex::new(TxnState::new(self.store.newest_segment()))))
            .clone()
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
        let own = state.loads.runs_of(entry.def.id, shard);
        if in_runs(&self.store, &entry.def, &own, key)?.is_some() {
            return Ok(true);
        }
        self.store.contains(entry, shard, key)
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
        if let Some(state) = state {
            let own = state.loads.runs_of(entry.def.id, shard);
            if let Some(row) = in_runs(&self.store, &entry.def, &own, key)? {
                return Ok(Some(row));
            }
        }
        self.store.get(entry, shard, key)
    }

    /// Writes the transaction's load buffers that `which(table, shard, rows)` picks out as
    /// runs, on the blocking pool.
    async fn spill(
        &self,
        state: &Mutex<TxnState>,
        which: impl Fn(TableId, ShardIndex, usize) -> bool,
    ) -> DbResult<()> {
        let buffers = state.lock().loads.take_buffers(which);
        if buffers.is_empty() {
            return Ok(());
        }
        let charge: u64 = buffers.iter().map(|b| b.charged).sum();
        let store = self.store.clone();
        let runs = tokio::task::spawn_blocking(move || {
            let mut runs: Vec<Run> = Vec::with_capacity(buffers.len());
            for b in buffers {
                let written = store
                    .new_segment_id()
                    .and_then(|id| b.write(store.segment_dir(), id));
                match written {
                    Ok(r) => runs.push(r),
                    Err(e) => {
                        remove_runs(&runs);
                        return Err(e);
                    }
                }
            }
            Ok(runs)
        })
        .await
        .map_err(|e| DbError::internal(format!("load task: {e}")))?;
        let mut st = state.lock();
        self.uncharge(&mut st, charge);
        st.loads.runs.extend(runs?);
        Ok(())
    }

    /// Writes out every load buffer of `table`: single-row reads and writes see the
    /// transaction's loaded rows in its runs.
    async fn spill_table(&self, state: &Mutex<TxnState>, table: TableId) -> DbResult<()> {
        if !state.lock().loads.touches(table) {
            return Ok(());
        }
        self.spill(state, |t, _, _| t == table).await
    }

    /// Applies an ordinary transaction's changes. Keys it inserted are checked first against
    /// segments registered since it began (a load that committed in between), under the
    /// registration lock shared.
    async fn apply_checked(&self, changes: Vec<Change>, seen: u64) -> DbResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let small = changes.len() <= 1000;
        let run = move || -> DbResult<()> {
            let _shared = store.registration.read();
            store.check_inserted(&changes, seen)?;
            store.apply(&changes)
        };
        if small {
            run()
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| DbError::internal(format!("commit task: {e}")))?
        }
    }

    /// Commits a transaction that loaded rows: its runs are checked against committed data
    /// and each other, then registered together with its other changes, under the
    /// registration lock held exclusively.
    async fn register(&self, changes: Vec<Change>, runs: Vec<Run>) -> DbResult<()> {
        let store = self.store.clone();
        let segs: Vec<Arc<Segment>> = runs.iter().map(|r| r.seg.clone()).collect();
        let result = tokio::task::spawn_blocking(move || -> DbResult<()> {
            let _exclusive = store.registration.write();
            store.check_runs(&segs)?;
            store.register(&changes, &segs)
        })
        .await
        .map_err(|e| DbError::internal(format!("commit task: {e}")))?;
        if result.is_err() {
            remove_runs(&runs);
        }
        result
    }
}

impl LocalShardService {
    /// 55006 for a write to a table being rewritten.
    fn writable(&self, table: TableId) -> DbResult<()> {
        if self.frozen.lock().contains(&table) {
            return Err(DbError::new(
                SqlState::ObjectInUse,
                "the table is being rewritten (a change of its key or placement); retry",
            ));
        }
        Ok(())
    }

    /// Whether an open or prepared transaction has written to `table`.
    fn written_by_open_transactions(&self, table: TableId) -> bool {
        let open: Vec<Arc<Mutex<TxnState>>> = self.txns.lock().values().cloned().collect();
        open.iter().any(|s| {
            let st = s.lock();
            st.writes.keys().any(|(t, _)| *t == table) || st.loads.touches(table)
        }) || self.prepared.lock().values().any(|p| {
            p.changes.iter().any(|c| c.table == table)
                || p.runs.iter().any(|r| r.meta.table == table)
        })
    }
}

/// The row under `key` in a transaction's own runs (not registered yet) of its shard.
fn in_runs(
    store: &RowStore,
    def: &TableDef,
    runs: &[Arc<Segment>],
    key: &[u8],
) -> DbResult<Option<Row>> {
    for run in runs {
        if let Some((batch, row)) = run.find(&store.cache, key)? {
            return run.row(def, &batch, row).map(Some);
        }
    }
    Ok(None)
}

/// Deletes the files of runs that will not be registered.
fn remove_runs(runs: &[Run]) {
    for r in runs {
        let _ = std::fs::remove_file(&r.seg.path);
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

    async fn write_ops(
        &self,
        txn: TxnId,
        state: &Arc<Mutex<TxnState>>,
        entry: &Arc<TableEntry>,
        req: WriteRequest,
    ) -> DbResult<WriteResponse> {
        let entry = entry.clone();
        let def = &entry.def;
        let state = state.clone();
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
                            insert: !def.hidden_rowid,
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
                                insert: true,
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
                                insert: false,
                            },
                        )?;
                        self.put(
                            &mut st,
                            new,
                            PendingWrite {
                                shard: new_shard,
                                value: Some(entry.encode_row(&row)),
                                insert: true,
                            },
                        )?;
                    } else {
                        let mut st = state.lock();
                        // a row this transaction inserted stays an insert
                        let insert = st.writes.get(&old).is_some_and(|w| w.insert);
                        self.put(
                            &mut st,
                            old,
                            PendingWrite {
                                shard: new_shard,
                                value: Some(entry.encode_row(&row)),
                                insert,
                            },
                        )?;
                    }
                    applied.push(true);
                }
                WriteOp::Delete { key } => {
                    let shard = entry.shard_of_key(&key)?;
                    let lk = (def.id, key);
                    self.lock(txn, &state, &lk, req.lock_timeout).await?;
                    self.put(
                        &mut state.lock(),
                        lk,
                        PendingWrite {
                            shard,
                            value: None,
                            insert: false,
                        },
                    )?;
                    applied.push(true);
                }
            }
        }
        Ok(WriteResponse { applied })
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
            insert: w.insert && w.value.is_some(),
            value: w.value,
        })
        .collect();
    (changes, state.locks)
}

fn duplicate_key(def: &TableDef, row: &[Datum]) -> DbError {
    segment::duplicate(def, &def.encode_key(row))
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
        self.frozen.lock().remove(&table);
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
        if let Some(st) = &state {
            self.spill_table(st, table).await?;
        }
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
        if let Some(state) = self.existing_txn_state(txn) {
            // the transaction's loaded rows are scanned in place, once written out as runs
            // (only this scan's shards: a scan's partitions run concurrently)
            let tables = std::iter::once(req.table).chain(req.more_inputs.iter().map(|i| i.table));
            for t in tables.collect::<Vec<_>>() {
                if state.lock().loads.touches(t) {
                    let keyed = req.keys.is_some();
                    self.spill(&state, |table, shard, _| {
                        table == t && (keyed || req.shards.contains(&shard))
                    })
                    .await?;
                }
            }
        }
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

    async fn freeze_table(&self, table: TableId, timeout: std::time::Duration) -> DbResult<()> {
        self.store.table(table)?;
        self.frozen.lock().insert(table);
        let deadline = std::time::Instant::now() + timeout;
        while self.written_by_open_transactions(table) {
            if std::time::Instant::now() >= deadline {
                self.frozen.lock().remove(&table);
                return Err(DbError::new(
                    SqlState::LockNotAvailable,
                    "could not obtain lock on the table: open transactions have written to it",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn unfreeze_table(&self, table: TableId) -> DbResult<()> {
        self.frozen.lock().remove(&table);
        Ok(())
    }

    async fn write(&self, txn: TxnId, req: WriteRequest) -> DbResult<WriteResponse> {
        self.writable(req.table)?;
        let entry = self.store.table(req.table)?;
        let state = self.txn_state(txn);
        self.spill_table(&state, req.table).await?;
        self.write_ops(txn, &state, &entry, req).await
    }

    async fn load(&self, txn: TxnId, table: TableId, rows: Vec<Row>) -> DbResult<()> {
        self.writable(table)?;
        let entry = self.store.table(table)?;
        let def = &entry.def;
        if let Some(bad) = rows.iter().find(|r| r.len() != def.columns.len()) {
            return Err(DbError::new(
                SqlState::ProtocolViolation,
                format!(
                    "a loaded row has {} values; table {} has {} columns",
                    bad.len(),
                    def.id,
                    def.columns.len()
                ),
            ));
        }
        let state = self.txn_state(txn);
        // after ordinary writes to the table in this transaction, a load is ordinary writes
        // too (their deletes and the loaded keys must meet in one write set)
        let has_writes = state.lock().writes.keys().any(|(t, _)| *t == table);
        if has_writes {
            let req = WriteRequest::inserts(table, rows);
            return self.write_ops(txn, &state, &entry, req).await.map(|_| ());
        }
        {
            let mut st = state.lock();
            let mut bytes = 0;
            for row in &rows {
                let key = def.encode_key(row);
                let shard = def.shard_of_row(row);
                bytes += st.loads.push(&entry, shard, &key, row)?;
            }
            // (over the budget, the error ends the transaction, and its buffers with it)
            self.charge_exactly(&mut st, bytes)?;
        }
        // a load's buffers stay a small part of the write-set budget
        let limit = crate::load::BUFFER_BYTES.min(self.write_set_limit / 8);
        let full = state.lock().loads.buffered() >= limit;
        self.spill(&state, |_, _, rows| full || rows >= crate::load::RUN_ROWS)
            .await
    }

    async fn load_batch(&self, txn: TxnId, table: TableId, batch: RecordBatch) -> DbResult<()> {
        let entry = self.store.table(table)?;
        let rows = orochi_common::service::rows_of_batch(&entry.def, &batch)?;
        self.load(txn, table, rows).await
    }

    async fn commit(&self, txn: TxnId) -> DbResult<()> {
        if let Some(state) = self.existing_txn_state(txn) {
            // the last rows buffered by loads become runs
            self.spill(&state, |_, _, _| true).await?;
        }
        let Some(mut state) = self.take_txn(txn) else {
            return Ok(());
        };
        let runs = std::mem::take(&mut state.loads.runs);
        let seen = state.segments_seen;
        let (changes, locks) = into_changes(state);
        let empty = changes.is_empty() && runs.is_empty();
        let applied = if runs.is_empty() {
            self.apply_checked(changes, seen).await
        } else {
            self.register(changes, runs).await
        };
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
        remove_runs(&std::mem::take(&mut state.lock().loads.runs));
    }

    /// Phase one: the write set and the load's runs made durable, checked as a commit would
    /// check them, and held (row locks; for loads, a reservation in the row store) until the
    /// decision.
    async fn prepare(&self, txn: TxnId) -> DbResult<()> {
        if let Some(state) = self.existing_txn_state(txn) {
            // the last rows buffered by loads become runs
            self.spill(&state, |_, _, _| true).await?;
        }
        let (changes, locks, seen, runs) = match self.take_txn(txn) {
            Some(mut state) => {
                let seen = state.segments_seen;
                let runs: Vec<Run> = std::mem::take(&mut state.loads.runs);
                let (c, l) = into_changes(state);
                (c, l, seen, runs)
            }
            None => (Vec::new(), Vec::new(), u64::MAX, Vec::new()),
        };
        let store = self.store.clone();
        let segs: Vec<Arc<Segment>> = runs.iter().map(|r| r.seg.clone()).collect();
        let checked = tokio::task::spawn_blocking(move || {
            // as at commit: a load's runs are checked under the registration lock held
            // exclusively, keys inserted against segments registered since under it shared
            let _exclusive = (!segs.is_empty()).then(|| store.registration.write());
            let _shared = segs.is_empty().then(|| store.registration.read());
            store.check_runs(&segs)?;
            store.check_inserted(&changes, seen)?;
            store.save_prepared(txn, &changes, &segs)?;
            store.reserve(txn, &changes, &segs);
            Ok((changes, segs))
        })
        .await
        .map_err(|e| DbError::internal(format!("prepare task: {e}")))?;
        let (changes, runs) = match checked {
            Ok(c) => c,
            Err(e) => {
                self.locks.release_all(txn, &locks);
                remove_runs(&runs);
                return Err(e);
            }
        };
        self.prepared.lock().insert(
            txn,
            PreparedTxn {
                changes,
                locks,
                runs,
            },
        );
        self.group_commit.wait_durable().await
    }

    async fn commit_prepared(&self, txn: TxnId) -> DbResult<()> {
        let Some(p) = self.prepared.lock().remove(&txn) else {
            return Ok(());
        };
        let PreparedTxn {
            changes,
            locks,
            runs,
        } = p;
        // checked when it prepared, and held since: applied (and its runs registered)
        // without checks
        let store = self.store.clone();
        let (changes, runs, applied) = tokio::task::spawn_blocking(move || {
            let applied = if runs.is_empty() {
                let _shared = store.registration.read();
                store.apply(&changes)
            } else {
                let _exclusive = store.registration.write();
                store.register(&changes, &runs)
            };
            if applied.is_ok() {
                store.unreserve(txn);
            }
            (changes, runs, applied)
        })
        .await
        .map_err(|e| DbError::internal(format!("commit task: {e}")))?;
        if let Err(e) = applied {
            // still prepared: the decision can be retried
            tracing::error!(txn, error = %e.message, "applying a prepared transaction failed");
            self.prepared.lock().insert(
                txn,
                PreparedTxn {
                    changes,
                    locks,
                    runs,
                },
            );
            return Err(e);
        }
        // replaying a commit is harmless (same values), and a load whose runs registered is
        // known as committed at the next start, so the record may go after the apply
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
        self.store.unreserve(txn);
        self.locks.release_all(txn, &p.locks);
        for r in &p.runs {
            let _ = std::fs::remove_file(&r.path);
        }
        Ok(())
    }

    async fn abort_open(&self, below: TxnId) -> DbResult<usize> {
        let open: Vec<TxnId> = self
            .txns
            .lock()
            .keys()
            .copied()
            .filter(|&t| {
                t < below
                    && t % orochi_common::service::MAX_COORDINATORS
                        == below % orochi_common::service::MAX_COORDINATORS
            })
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
        let state = self.txn_state(txn);
        // rows buffered before the savepoint become runs, so that a rollback to it drops
        // exactly the runs after it
        self.spill(&state, |_, _, _| true).await?;
        Ok(state.lock().savepoint())
    }

    async fn rollback_to(&self, txn: TxnId, savepoint: u64) -> DbResult<()> {
        if let Some(s) = self.existing_txn_state(txn) {
            let mut st = s.lock();
            let (runs, charge) = st.rollback_to(savepoint);
            self.uncharge(&mut st, charge);
            drop(st);
            remove_runs(&runs);
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

    async fn shard_stats(&self, table: TableId) -> DbResult<Vec<ShardStats>> {
        let entry = self.store.table(table)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (i, t) in entry.shards.iter().enumerate() {
                let shard = i as ShardIndex;
                let _reading = store.read_shard(table, shard);
                let segments = store.segments(table, shard);
                let mut st = ShardStats {
                    shard,
                    segments: segments.len() as u64,
                    ..ShardStats::default()
                };
                for s in segments.iter() {
                    st.segment_rows += s.meta.rows;
                    st.segment_file_bytes += s.meta.file_bytes;
                    st.segment_raw_bytes += s.meta.raw_bytes;
                }
                let mut rows = st.segment_rows;
                for item in t.iter() {
                    let (k, v) = item.map_err(|e| {
                        DbError::new(SqlState::IoError, format!("row store read: {e}"))
                    })?;
                    st.row_store_bytes += (k.len() + v.len()) as u64;
                    if segment::tombstone_of(&v).is_none() {
                        rows += 1;
                        st.row_store_rows += 1;
                    }
                    // a segment row this key shadows is not counted twice (or at all, if
                    // deleted)
                    for seg in segments.iter().filter(|s| segment::shadows(&v, s.order())) {
                        if seg.find(&store.cache, &k)?.is_some() {
                            rows = rows.saturating_sub(1);
                            break;
                        }
                    }
                }
                st.rows = rows;
                out.push(st);
            }
            Ok(out)
        })
        .await
        .map_err(|e| DbError::internal(format!("stats task: {e}")))?
    }
}

/// A scan in progress: where it is, so that each batch can be produced by a separate
/// blocking task. Per shard: the row store's rows (skipping tombstones and keys the
/// transaction wrote), the transaction's own rows, then the segments' rows that nothing in
/// the row store or the transaction shadows, one segment batch at a time.
struct ScanCursor {
    store: Arc<RowStore>,
    entry: Arc<TableEntry>,
    req: ScanRequest,
    /// The transaction's own writes, per shard: they replace stored rows with the same key.
    overlay: HashMap<ShardIndex, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// The segments of the shard being read (registered, then the transaction's own runs).
    segments: HashMap<ShardIndex, Vec<Arc<Segment>>>,
    /// The transaction's own runs alone (for key lookups).
    own_runs: HashMap<ShardIndex, Vec<Arc<Segment>>>,
    /// Next entry of `req.shards` (or of `req.keys`) to start.
    next: usize,
    /// The shard being read and where in it.
    current: Option<(ShardIndex, Phase)>,
    /// Held while a shard is read: no conversion moves its rows from the row store into a
    /// segment in the middle (see `RowStore::read_shard`).
    reading: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    remaining: usize,
    done: bool,
}

enum Phase {
    /// Its stored rows, from where the last batch stopped.
    Rows(sled::Iter),
    /// Its segments: the one being read (index into the list) and its reader.
    Segments {
        index: usize,
        reader: Option<SegmentReader>,
    },
}

type SegmentReader = arrow::ipc::reader::FileReader<std::io::BufReader<std::fs::File>>;

impl ScanCursor {
    fn new(
        store: Arc<RowStore>,
        entry: Arc<TableEntry>,
        req: ScanRequest,
        overlay: HashMap<ShardIndex, HashMap<Vec<u8>, Option<Vec<u8>>>>,
        own_runs: HashMap<ShardIndex, Vec<Arc<Segment>>>,
    ) -> Self {
        let remaining = req.limit.unwrap_or(usize::MAX);
        ScanCursor {
            store,
            entry,
            req,
            overlay,
            segments: HashMap::new(),
            own_runs,
            next: 0,
            current: None,
            reading: None,
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

    /// Up to `batch_rows` rows (a segment batch may give more); `None` at the end. Sets
    /// `done` when nothing follows.
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
                match self.overlay.get(&shard).and_then(|own| own.get(key)) {
                    Some(Some(v)) => {
                        let v = v.clone();
                        self.push(&mut builder, &v)?;
                    }
                    Some(None) => {}
                    None => {
                        let key = key.clone();
                        let own = self.own_runs.get(&shard).map_or(&[][..], Vec::as_slice);
                        let mut row = in_runs(&self.store, &self.entry.def, own, &key)?;
                        if row.is_none() {
                            row = self.store.get(&self.entry, shard, &key)?;
                        }
                        if let Some(row) = row {
                            self.push_row(&mut builder, &row)?;
                        }
                    }
                }
                continue;
            }
            let Some((shard, phase)) = &mut self.current else {
                let Some(&shard) = self.req.shards.get(self.next) else {
                    self.done = true;
                    break;
                };
                self.next += 1;
                self.reading = None;
                self.reading = Some(self.store.read_shard(self.entry.def.id, shard));
                let mut list = self.store.segments(self.entry.def.id, shard).to_vec();
                if let Some(own) = self.own_runs.get(&shard) {
                    list.extend(own.iter().cloned());
                }
                self.segments.clear();
                if !list.is_empty() {
                    self.segments.insert(shard, list);
                }
                self.current = Some((shard, Phase::Rows(self.entry.tree(shard)?.iter())));
                continue;
            };
            let shard = *shard;
            match phase {
                Phase::Rows(iter) => match iter.next() {
                    Some(item) => {
                        let (k, v) = item.map_err(io)?;
                        if segment::tombstone_of(&v).is_some()
                            || self
                                .overlay
                                .get(&shard)
                                .is_some_and(|own| own.contains_key(k.as_ref()))
                        {
                            continue;
                        }
                        self.push(&mut builder, &v)?;
                    }
                    None => {
                        // the stored rows of this shard are done; then its rows written by
                        // this transaction, then its segments
                        if let Some(own) = self.overlay.get(&shard) {
                            let own: Vec<Vec<u8>> = own.values().flatten().cloned().collect();
                            for v in own {
                                self.push(&mut builder, &v)?;
                                if self.done {
                                    break;
                                }
                            }
                        }
                        self.current = if self.segments.contains_key(&shard) {
                            Some((
                                shard,
                                Phase::Segments {
                                    index: 0,
                                    reader: None,
                                },
                            ))
                        } else {
                            self.reading = None;
                            None
                        };
                    }
                },
                Phase::Segments { .. } => {
                    // segment batches go out as they are: first what the builder holds
                    if !builder.is_empty() {
                        break;
                    }
                    match self.segment_batch(shard)? {
                        Some(b) => return Ok(Some(b)),
                        None => {
                            self.current = None;
                            self.reading = None;
                        }
                    }
                }
            }
        }
        (!builder.is_empty()).then(|| builder.finish()).transpose()
    }

    /// The next non-empty batch of the shard's segments, projected, without the rows that
    /// the row store or the transaction shadows; `None` when its segments are done.
    fn segment_batch(&mut self, shard: ShardIndex) -> DbResult<Option<RecordBatch>> {
        let internal = |e: arrow::error::ArrowError| DbError::internal(format!("segment: {e}"));
        loop {
            let Some((_, Phase::Segments { index, reader })) = &mut self.current else {
                return Ok(None);
            };
            let Some(seg) = self
                .segments
                .get(&shard)
                .and_then(|l| l.get(*index))
                .cloned()
            else {
                return Ok(None);
            };
            // file columns: the key, then each projected column the segment has
            let stored: Vec<usize> = self
                .req
                .projection
                .iter()
                .copied()
                .filter(|&c| c < seg.meta.columns)
                .collect();
            if reader.is_none() {
                let mut cols = vec![0];
                cols.extend(stored.iter().map(|c| c + 1));
                *reader = Some(seg.reader(Some(cols))?);
            }
            let next = reader.as_mut().expect("opened above").next();
            let Some(batch) = next else {
                *index += 1;
                *reader = None;
                continue;
            };
            let batch = batch.map_err(internal)?;
            let keys = batch.column(0).as_binary::<i32>();
            if keys.is_empty() {
                continue;
            }
            let mut keep = vec![true; keys.len()];
            // row-store keys in the batch's range: newer versions and tombstones
            let tree = self.entry.tree(shard)?;
            let (lo, hi) = (keys.value(0).to_vec(), keys.value(keys.len() - 1).to_vec());
            for item in tree.range(lo..=hi) {
                let (k, v) = item
                    .map_err(|e| DbError::new(SqlState::IoError, format!("row store read: {e}")))?;
                if segment::shadows(&v, seg.order())
                    && let Some(i) = segment::search(keys, &k)
                {
                    keep[i] = false;
                }
            }
            if let Some(own) = self.overlay.get(&shard) {
                for (i, k) in keys.iter().enumerate() {
                    if k.is_some_and(|k| own.contains_key(k)) {
                        keep[i] = false;
                    }
                }
            }
            let n = batch.num_rows();
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.req.projection.len());
            let mut pos = 1;
            for &c in &self.req.projection {
                if c < seg.meta.columns {
                    columns.push(batch.column(pos).clone());
                    pos += 1;
                } else {
                    // a column added after the segment was written: its missing value
                    let mut b = BatchBuilder::new(&self.entry.def, &[c], n);
                    let v = self.entry.def.columns[c].missing.clone();
                    for _ in 0..n {
                        b.push(std::iter::once(&v))?;
                    }
                    columns.push(b.finish()?.column(0).clone());
                }
            }
            let schema = crate::batch::projected_schema(&self.entry.def, &self.req.projection);
            let out = RecordBatch::try_new_with_options(
                schema,
                columns,
                &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
            )
            .map_err(internal)?;
            let out = if keep.iter().all(|&k| k) {
                out
            } else {
                arrow::compute::filter_record_batch(&out, &BooleanArray::from(keep))
                    .map_err(internal)?
            };
            if out.num_rows() == 0 {
                continue;
            }
            let out = if out.num_rows() >= self.remaining {
                self.done = true;
                out.slice(0, self.remaining)
            } else {
                out
            };
            self.remaining -= out.num_rows();
            return Ok(Some(out));
        }
    }

    fn push(&mut self, builder: &mut BatchBuilder, bytes: &[u8]) -> DbResult<()> {
        let row = self.entry.decode_row(bytes)?;
        self.push_row(builder, &row)
    }

    fn push_row(&mut self, builder: &mut BatchBuilder, row: &[Datum]) -> DbResult<()> {
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

    async fn count(s: &LocalShardService, txn: TxnId) -> usize {
        use futures::TryStreamExt;
        let req = ScanRequest::full(&table(), vec![0], 1024);
        let batches: Vec<RecordBatch> =
            s.scan(txn, req).await.unwrap().try_collect().await.unwrap();
        batches.iter().map(|b| b.num_rows()).sum()
    }

    /// A scan that is reading a shard when a conversion of it reaches its last step sees
    /// every row once: the step waits for the scan to leave the shard. Scans after it read
    /// the rows from the segment, and see a transaction's own changes over them.
    #[tokio::test]
    async fn a_scan_sees_every_row_once_across_a_conversion() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let def = table();
        let options = StoreOptions {
            conversion: ConversionPolicy {
                check_every: None,
                ..ConversionPolicy::default()
            },
            ..StoreOptions::default()
        };
        let s = LocalShardService::open(dir.path(), &options).unwrap();
        s.create_table(&def).await.unwrap();
        let n = 5_000;
        for k in 0..n {
            s.write(1, insert(k)).await.unwrap();
        }
        s.commit(1).await.unwrap();
        // a scan that has read one batch of shard 0 (batches of 16 rows)
        let mut req = ScanRequest::full(&def, vec![0], 16);
        req.shards = vec![0, 1, 2, 3];
        let mut scan = s.scan(2, req).await.unwrap();
        let mut seen = scan.next().await.unwrap().unwrap().num_rows();
        let store = s.store.clone();
        let convert = tokio::task::spawn_blocking(move || {
            let mut moved = 0;
            for shard in 0..4 {
                let p = store.begin_conversion(16384, shard).unwrap().unwrap();
                moved += store.finish_conversion(p).unwrap();
            }
            moved
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        while let Some(b) = scan.next().await {
            seen += b.unwrap().num_rows();
        }
        assert_eq!(seen, n as usize);
        assert_eq!(convert.await.unwrap(), n as u64, "every row moved");
        assert_eq!(count(&s, 3).await, n as usize);
        // an update and a delete of converted rows, seen by their transaction and after
        s.write(
            4,
            WriteRequest {
                table: 16384,
                ops: vec![WriteOp::Delete {
                    key: def.encode_key(&[Datum::Int8(7), Datum::Int8(0)]),
                }],
                lock_timeout: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(count(&s, 4).await, n as usize - 1);
        s.commit(4).await.unwrap();
        assert_eq!(count(&s, 5).await, n as usize - 1);
        let got = s
            .get(
                5,
                16384,
                &[def.encode_key(&[Datum::Int8(8), Datum::Int8(0)])],
                false,
                None,
            )
            .await
            .unwrap();
        assert_eq!(got, vec![Some(vec![Datum::Int8(8), Datum::Int8(80)])]);
    }

    /// Rows a transaction loaded and then deleted or updated in the same transaction: the
    /// delete becomes a tombstone over the segment registered by the same commit, the update
    /// a newer version.
    #[tokio::test]
    async fn loaded_rows_changed_in_their_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let def = table();
        let key = |k: i64| def.encode_key(&[Datum::Int8(k), Datum::Int8(0)]);
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        s.create_table(&def).await.unwrap();
        let rows: Vec<Row> = (1..=10)
            .map(|k| vec![Datum::Int8(k), Datum::Int8(k * 10)])
            .collect();
        s.load(1, 16384, rows.clone()).await.unwrap();
        assert_eq!(count(&s, 1).await, 10);
        assert_eq!(count(&s, 2).await, 0, "not visible to others before commit");
        s.write(
            1,
            WriteRequest {
                table: 16384,
                ops: vec![
                    WriteOp::Delete { key: key(3) },
                    WriteOp::Update {
                        old_key: key(4),
                        row: vec![Datum::Int8(4), Datum::Int8(-4)],
                    },
                ],
                lock_timeout: None,
            },
        )
        .await
        .unwrap();
        // a loaded key is taken for the transaction's own inserts
        let err = s.write(1, insert(5)).await.unwrap_err();
        assert_eq!(err.state, SqlState::UniqueViolation);
        s.commit(1).await.unwrap();
        assert_eq!(count(&s, 3).await, 9);
        let got = s
            .get(3, 16384, &[key(3), key(4)], false, None)
            .await
            .unwrap();
        assert_eq!(got, vec![None, Some(vec![Datum::Int8(4), Datum::Int8(-4)])]);
        // deleted, it can be loaded again, and is live in the newer segment
        s.load(4, 16384, vec![rows[2].clone()]).await.unwrap();
        s.commit(4).await.unwrap();
        assert_eq!(count(&s, 5).await, 10);
        // a reload of a live key fails when it prepares, as at commit
        s.load(6, 16384, vec![rows[0].clone()]).await.unwrap();
        let err = s.prepare(6).await.unwrap_err();
        assert_eq!(err.state, SqlState::UniqueViolation);
        assert!(s.prepared().await.unwrap().is_empty());
        drop(s);
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(count(&s, 7).await, 10);
        let got = s.get(7, 16384, &[key(3)], false, None).await.unwrap();
        assert_eq!(got, vec![Some(rows[2].clone())]);
    }

    /// A load takes part in two-phase commit: prepared, its rows are invisible, durable
    /// across a restart, and their keys are held against ordinary inserts and other loads
    /// until the decision; committed, they are live; aborted, gone with their files.
    #[tokio::test]
    async fn prepared_loads_hold_their_keys_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let def = table();
        let key = |k: i64| def.encode_key(&[Datum::Int8(k), Datum::Int8(0)]);
        let row = |k: i64| vec![Datum::Int8(k), Datum::Int8(k * 10)];
        let files = || {
            std::fs::read_dir(dir.path().join("segments"))
                .unwrap()
                .count()
        };
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        s.create_table(&def).await.unwrap();
        s.load(1, 16384, (1..=5).map(row).collect()).await.unwrap();
        s.write(1, insert(6)).await.unwrap();
        s.prepare(1).await.unwrap();
        assert_eq!(s.prepared().await.unwrap(), vec![1]);
        assert_eq!(count(&s, 2).await, 0, "prepared rows are not visible");
        // an ordinary insert of a prepared load's key fails when it commits
        s.write(3, insert(2)).await.unwrap();
        let err = s.commit(3).await.unwrap_err();
        assert_eq!(err.state, SqlState::UniqueViolation, "{err:?}");
        // so does it when it prepares, and another load of the key, at commit and prepare
        s.write(4, insert(3)).await.unwrap();
        assert_eq!(
            s.prepare(4).await.unwrap_err().state,
            SqlState::UniqueViolation
        );
        s.load(5, 16384, vec![row(4)]).await.unwrap();
        assert_eq!(
            s.commit(5).await.unwrap_err().state,
            SqlState::UniqueViolation
        );
        s.load(5, 16384, vec![row(4)]).await.unwrap();
        assert_eq!(
            s.prepare(5).await.unwrap_err().state,
            SqlState::UniqueViolation
        );
        // the ordinary insert's key too (it holds a row lock against ordinary writers only)
        s.load(5, 16384, vec![row(6)]).await.unwrap();
        assert_eq!(
            s.commit(5).await.unwrap_err().state,
            SqlState::UniqueViolation
        );
        // other keys load and commit meanwhile
        s.load(7, 16384, vec![row(7)]).await.unwrap();
        s.commit(7).await.unwrap();
        assert_eq!(count(&s, 8).await, 1);
        // a second prepared load, to be aborted after the restart
        s.load(9, 16384, vec![row(8), row(9)]).await.unwrap();
        s.prepare(9).await.unwrap();
        drop(s);

        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(
            s.prepared().await.unwrap(),
            vec![1, 9],
            "in doubt after a restart"
        );
        assert_eq!(count(&s, 10).await, 1);
        // still held
        s.write(11, insert(1)).await.unwrap();
        assert_eq!(
            s.commit(11).await.unwrap_err().state,
            SqlState::UniqueViolation
        );
        let before = files();
        s.abort_prepared(9).await.unwrap();
        let runs: std::collections::HashSet<_> =
            [8, 9].iter().map(|&k| def.shard_of_row(&row(k))).collect();
        assert_eq!(
            files(),
            before - runs.len(),
            "an aborted load's runs are removed"
        );
        s.commit_prepared(1).await.unwrap();
        assert_eq!(count(&s, 12).await, 7);
        let got = s
            .get(12, 16384, &[key(2), key(6), key(8)], false, None)
            .await;
        assert_eq!(got.unwrap(), vec![Some(row(2)), Some(row(6)), None]);
        // the keys are free again for what the commit did not take
        s.load(13, 16384, vec![row(8)]).await.unwrap();
        s.commit(13).await.unwrap();
        drop(s);

        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(s.prepared().await.unwrap().is_empty());
        assert_eq!(count(&s, 14).await, 8);
    }

    /// A frozen table (being rewritten) waits for the transactions that wrote to it, then
    /// refuses writes until it is unfrozen.
    #[tokio::test]
    async fn a_frozen_table_waits_for_its_writers_then_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap());
        s.create_table(&table()).await.unwrap();
        let wait = std::time::Duration::from_millis(200);
        s.write(1, insert(1)).await.unwrap();
        let err = s.freeze_table(16384, wait).await.unwrap_err();
        assert_eq!(err.state, SqlState::LockNotAvailable);
        // not frozen after the failure
        s.write(2, insert(2)).await.unwrap();
        s.commit(2).await.unwrap();
        // the writer commits while the freeze waits: then it is frozen
        let waiting = {
            let s = s.clone();
            tokio::spawn(async move {
                s.freeze_table(16384, std::time::Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.commit(1).await.unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(
            s.write(3, insert(3)).await.unwrap_err().state,
            SqlState::ObjectInUse
        );
        let row = vec![vec![Datum::Int8(4), Datum::Int8(40)]];
        assert_eq!(
            s.load(3, 16384, row.clone()).await.unwrap_err().state,
            SqlState::ObjectInUse
        );
        s.abort(3).await;
        assert_eq!(count(&s, 4).await, 2, "reads go on");
        s.unfreeze_table(16384).await.unwrap();
        s.write(5, insert(3)).await.unwrap();
        s.commit(5).await.unwrap();
        assert_eq!(count(&s, 6).await, 3);
    }

    /// Segments are ordered by when they registered, not when their files were written: a
    /// run written before a delete and registered after it is newer than the tombstone.
    #[tokio::test]
    async fn a_run_registered_after_a_delete_is_newer_than_its_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let def = table();
        let key = |k: i64| def.encode_key(&[Datum::Int8(k), Datum::Int8(0)]);
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        s.create_table(&def).await.unwrap();
        s.load(1, 16384, vec![vec![Datum::Int8(1), Datum::Int8(10)]])
            .await
            .unwrap();
        s.commit(1).await.unwrap();
        // transaction 2 writes its run of key 1 (the savepoint writes the buffer out) ...
        s.load(2, 16384, vec![vec![Datum::Int8(1), Datum::Int8(20)]])
            .await
            .unwrap();
        s.savepoint(2).await.unwrap();
        // ... a later file of the same shard registers first, then key 1 is deleted ...
        let shard = |k: i64| def.shard_of_row(&[Datum::Int8(k), Datum::Int8(0)]);
        let other = (2..).find(|&k| shard(k) == shard(1)).unwrap();
        s.load(3, 16384, vec![vec![Datum::Int8(other), Datum::Int8(30)]])
            .await
            .unwrap();
        s.commit(3).await.unwrap();
        s.write(
            4,
            WriteRequest {
                table: 16384,
                ops: vec![WriteOp::Delete { key: key(1) }],
                lock_timeout: None,
            },
        )
        .await
        .unwrap();
        s.commit(4).await.unwrap();
        // ... and transaction 2's reload of the deleted key commits: it is live
        s.commit(2).await.unwrap();
        let want = vec![Some(vec![Datum::Int8(1), Datum::Int8(20)])];
        assert_eq!(s.get(5, 16384, &[key(1)], false, None).await.unwrap(), want);
        assert_eq!(count(&s, 5).await, 2);
        drop(s);
        let s = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(s.get(6, 16384, &[key(1)], false, None).await.unwrap(), want);
        assert_eq!(count(&s, 6).await, 2);
    }

    /// A load far larger than the write-set budget goes through (its buffers are written
    /// out as they fill, and their charge returned), and leaves nothing charged.
    #[tokio::test]
    async fn loads_stay_within_the_write_set_budget() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            write_set_limit_bytes: 2 << 20,
            ..StoreOptions::default()
        };
        let s = LocalShardService::open(dir.path(), &options).unwrap();
        s.create_table(&table()).await.unwrap();
        for chunk in 0..20 {
            let rows: Vec<Row> = (0..10_000)
                .map(|i| {
                    let k = chunk * 10_000 + i;
                    vec![Datum::Int8(k), Datum::Int8(k)]
                })
                .collect();
            s.load(1, 16384, rows).await.unwrap();
        }
        s.commit(1).await.unwrap();
        assert_eq!(count(&s, 2).await, 200_000);
        let charged = s.write_set_bytes.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(charged, 0);
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
