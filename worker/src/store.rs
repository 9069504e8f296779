//! The row store: one sled tree per shard (`t{table}.s{shard}`), keys in memcomparable order
//! ([`orochi_common::keycodec`]), values in the row encoding ([`orochi_common::rowcodec`]).
//! Table definitions live in the `meta` tree so stored rows can be decoded after a restart.
//! Bulk-loaded rows live in columnar segments (`segment.rs`) under `segments/`, registered in
//! the `segments` tree; a shard's tree is an overlay on its segments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::keycodec;
use orochi_common::rowcodec;
use orochi_common::schema::{ShardIndex, TableDef, TableId};
use orochi_common::service::Row;
use parking_lot::RwLock;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::segment::{self, BatchCache, Segment, SegmentMeta};

pub mod convert;

/// Errors of the storage layer, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening row store at {path}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("row store I/O on table {table}")]
    Io {
        table: TableId,
        #[source]
        source: sled::Error,
    },
    #[error("decoding stored definition of table {table}")]
    Meta {
        table: TableId,
        #[source]
        source: serde_json::Error,
    },
    #[error("rolling back an interrupted commit: its undo record is unreadable")]
    Undo,
}

impl StoreError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            StoreError::Open { .. } | StoreError::Io { .. } => SqlState::IoError,
            StoreError::Meta { .. } | StoreError::Undo => SqlState::InternalError,
        }
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        DbError::new(e.sqlstate(), msg)
    }
}

/// A table's definition and its shard trees.
pub struct TableEntry {
    pub def: TableDef,
    pub shards: Vec<sled::Tree>,
    types: Vec<orochi_common::types::SqlType>,
    key_types: Vec<orochi_common::types::SqlType>,
}

impl TableEntry {
    fn new(def: TableDef, shards: Vec<sled::Tree>) -> Self {
        let types = def.column_types();
        let key_types = def.key_types();
        TableEntry {
            def,
            shards,
            types,
            key_types,
        }
    }

    pub fn decode_row(&self, bytes: &[u8]) -> DbResult<Row> {
        rowcodec::decode_row(&self.types, |i| self.def.columns[i].missing.clone(), bytes)
    }

    pub fn encode_row(&self, row: &[Datum]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + row.len() * 8);
        rowcodec::encode_row(row, &mut out);
        out
    }

    /// The shard that owns an encoded primary key.
    pub fn shard_of_key(&self, key: &[u8]) -> DbResult<ShardIndex> {
        let values = keycodec::decode_key(&self.key_types, key)?;
        Ok(self
            .def
            .shard_of_value(&values[self.def.distribution_key_position()]))
    }

    pub fn tree(&self, shard: ShardIndex) -> DbResult<&sled::Tree> {
        self.shards
            .get(shard as usize)
            .ok_or_else(|| DbError::internal(format!("table {} has no shard {shard}", self.def.id)))
    }
}

fn tree_name(table: TableId, shard: ShardIndex) -> String {
    format!("t{table}.s{shard}")
}

/// One change to apply at commit.
/// The largest commit applied as one sled batch/transaction (see [`RowStore::apply`]).
pub const COMMIT_CHUNK: usize = 16_384;

/// Undo record: per change `table u64 | shard u32 | key len u32 | key | 0 or 1 | [len u32 | value]`.
fn encode_undo(changes: &[Change]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in changes {
        out.extend_from_slice(&c.table.to_be_bytes());
        out.extend_from_slice(&c.shard.to_be_bytes());
        out.extend_from_slice(&(c.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&c.key);
        match &c.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode_undo(mut b: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    let u32_of = |b: &mut &[u8]| take(b, 4).map(|x| u32::from_be_bytes(x.try_into().unwrap()));
    let mut out = Vec::new();
    while !b.is_empty() {
        let table = u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?);
        let shard = u32_of(&mut b)?;
        let klen = u32_of(&mut b)? as usize;
        let key = take(&mut b, klen)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let vlen = u32_of(&mut b)? as usize;
                Some(take(&mut b, vlen)?.to_vec())
            }
            _ => return None,
        };
        out.push(Change {
            table,
            shard,
            key,
            value,
            insert: false,
        });
    }
    Some(out)
}

#[derive(Clone)]
pub struct Change {
    pub table: TableId,
    pub shard: ShardIndex,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    /// The key was absent when the transaction wrote it (not persisted in undo records).
    pub insert: bool,
}

pub struct RowStore {
    db: sled::Db,
    /// Undo records of chunked commits in progress (see [`RowStore::apply`]).
    undo: sled::Tree,
    /// Write sets of prepared transactions (two-phase commit), by transaction id.
    prepared: sled::Tree,
    /// The runs of prepared loads (JSON list of their metas), by transaction id.
    prepared_runs: sled::Tree,
    /// What prepared transactions will commit, held against other commits until their
    /// decision.
    reserved: parking_lot::Mutex<Reserved>,
    meta: sled::Tree,
    tables: RwLock<HashMap<TableId, Arc<TableEntry>>>,
    /// Registered segments: key `table u64 | shard u32 | id u64`, value the meta as JSON.
    segment_tree: sled::Tree,
    segment_dir: PathBuf,
    segments: RwLock<HashMap<(TableId, ShardIndex), SegmentList>>,
    /// Ordinary commits hold it shared while they check and apply; registering segments holds
    /// it exclusively, so a registration's uniqueness check never interleaves with an apply.
    pub registration: RwLock<()>,
    /// The newest registered segment's order (0: none yet).
    newest: AtomicU64,
    /// Decoded segment batches for point lookups.
    pub cache: BatchCache,
    /// Per shard: scans hold it shared while they read the shard, the last step of a
    /// conversion into a segment holds it exclusively (see `convert.rs`).
    shard_locks: parking_lot::Mutex<HashMap<(TableId, ShardIndex), ShardLock>>,
    /// Per shard: what its row store holds that no conversion has moved yet.
    deltas: parking_lot::Mutex<HashMap<(TableId, ShardIndex), convert::Delta>>,
}

type ShardLock = Arc<tokio::sync::RwLock<()>>;

/// What prepared transactions (two-phase commit) will commit: the runs of prepared loads, and
/// the keys prepared transactions write. Row locks keep ordinary writers off those keys; loads
/// take no row locks, so a load that registers or prepares checks its runs against these too,
/// and an ordinary commit checks the keys it inserted against the prepared runs.
#[derive(Default)]
struct Reserved {
    runs: HashMap<u64, Vec<Arc<Segment>>>,
    keys: HashMap<u64, Vec<(TableId, ShardIndex, Vec<u8>)>>,
}

/// A prepared transaction as recorded: its changes and its load's runs.
pub struct PreparedRecord {
    pub txn: u64,
    pub changes: Vec<Change>,
    pub runs: Vec<Arc<Segment>>,
}

/// Where a committed row is (see [`RowStore::get`]).
enum Found {
    Stored(sled::IVec),
    InSegment(Arc<Segment>, arrow::record_batch::RecordBatch, usize),
}

/// A shard's registered segments, oldest first (shared by the scans that read them).
type SegmentList = Arc<[Arc<Segment>]>;

fn segment_key(table: TableId, shard: ShardIndex, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.extend_from_slice(&table.to_be_bytes());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl RowStore {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<RowStore, StoreError> {
        Self::open_with(path, cache_bytes, BatchCache::new(64 << 20))
    }

    /// `segment_cache`: decoded segment batches kept for point lookups.
    pub fn open_with(
        path: &Path,
        cache_bytes: u64,
        segment_cache: BatchCache,
    ) -> Result<RowStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000));
        // sled's I/O threads may hold a store just closed in this process for a moment
        // (tests reopen stores; another process is kept out by the data-directory lock)
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other
                        && e.to_string().contains("could not acquire lock")
                        && attempts < 50 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other.map_err(open_err)?,
            }
        };
        let meta = db.open_tree("meta").map_err(open_err)?;
        let undo = db.open_tree("undo").map_err(open_err)?;
        let prepared = db.open_tree("prepared").map_err(open_err)?;
        let prepared_runs = db.open_tree("prepared_runs").map_err(open_err)?;
        let segment_tree = db.open_tree("segments").map_err(open_err)?;
        let segment_dir = path.join("segments");
        std::fs::create_dir_all(&segment_dir).map_err(|e| StoreError::Open {
            path: segment_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let store = RowStore {
            db,
            undo,
            prepared,
            prepared_runs,
            reserved: Default::default(),
            meta,
            tables: RwLock::new(HashMap::new()),
            segment_tree,
            segment_dir,
            segments: RwLock::new(HashMap::new()),
            registration: RwLock::new(()),
            newest: AtomicU64::new(0),
            cache: segment_cache,
            shard_locks: Default::default(),
            deltas: Default::default(),
        };
        for item in store.meta.iter() {
            let (k, v) = item.map_err(open_err)?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let def: TableDef = serde_json::from_slice(&v)
                .map_err(|source| StoreError::Meta { table: id, source })?;
            let entry = store.open_entry(def)?;
            store.tables.write().insert(id, Arc::new(entry));
        }
        store.roll_back_interrupted_commits()?;
        store.note_stored_rows();
        store.load_segments().map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: sled::Error::Unsupported(e.message),
        })?;
        Ok(store)
    }

    /// Reads the registered segments and removes segment files nothing registered or
    /// prepared (runs of transactions that did not commit or prepare before a crash).
    fn load_segments(&self) -> DbResult<()> {
        let io = |e: sled::Error| DbError::new(SqlState::IoError, format!("segments: {e}"));
        let mut by_shard: HashMap<(TableId, ShardIndex), Vec<Arc<Segment>>> = HashMap::new();
        let mut known = std::collections::HashSet::new();
        for item in self.segment_tree.iter() {
            let (_, v) = item.map_err(io)?;
            let meta: SegmentMeta = serde_json::from_slice(&v)
                .map_err(|e| DbError::internal(format!("segment record: {e}")))?;
            self.newest.fetch_max(
                Segment::at(&self.segment_dir, meta.clone()).order(),
                Ordering::Relaxed,
            );
            known.insert(segment::file_name(meta.id));
            by_shard
                .entry((meta.table, meta.shard))
                .or_default()
                .push(Arc::new(Segment::at(&self.segment_dir, meta)));
        }
        for record in self.prepared_run_metas()? {
            for meta in record.1 {
                known.insert(segment::file_name(meta.id));
            }
        }
        let dir = std::fs::read_dir(&self.segment_dir)
            .map_err(|e| DbError::new(SqlState::IoError, format!("segments: {e}")))?;
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(file = %name, "removing an unregistered segment file");
                let _ = std::fs::remove_file(f.path());
            }
        }
        let mut map = self.segments.write();
        for (k, mut v) in by_shard {
            v.sort_by_key(|s| s.order());
            map.insert(k, v.into());
        }
        Ok(())
    }

    /// The prepared loads' run metas, by transaction.
    fn prepared_run_metas(&self) -> DbResult<Vec<(u64, Vec<SegmentMeta>)>> {
        let mut out = Vec::new();
        for item in self.prepared_runs.iter() {
            let (k, v) = item.map_err(|source| StoreError::Io { table: 0, source })?;
            let txn = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Undo)?);
            let metas: Vec<SegmentMeta> = serde_json::from_slice(&v)
                .map_err(|e| DbError::internal(format!("prepared load record: {e}")))?;
            out.push((txn, metas));
        }
        Ok(out)
    }

    pub fn segment_dir(&self) -> &Path {
        &self.segment_dir
    }

    /// A new segment id, larger than every earlier one (across restarts too).
    pub fn new_segment_id(&self) -> DbResult<u64> {
        let id = self
            .db
            .generate_id()
            .map_err(|source| StoreError::Io { table: 0, source })?;
        Ok(id + 1)
    }

    /// The registered segments of a shard, oldest first.
    pub fn segments(&self, table: TableId, shard: ShardIndex) -> Arc<[Arc<Segment>]> {
        self.segments
            .read()
            .get(&(table, shard))
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The newest registered segment's order (0: none).
    pub fn newest_segment(&self) -> u64 {
        self.newest.load(Ordering::Acquire)
    }

    /// Where the committed row under `key` is: the row store's version if it has the key,
    /// else the segments' (unless a tombstone deleted it there).
    fn locate(&self, entry: &TableEntry, shard: ShardIndex, key: &[u8]) -> DbResult<Option<Found>> {
        let io = |e: sled::Error| DbError::new(SqlState::IoError, format!("row store read: {e}"));
        let stored = entry.tree(shard)?.get(key).map_err(io)?;
        let newer_than = match stored {
            Some(v) => match segment::tombstone_of(&v) {
                None => return Ok(Some(Found::Stored(v))),
                Some(newest) => newest,
            },
            None => 0,
        };
        for seg in self.segments(entry.def.id, shard).iter().rev() {
            if seg.order() <= newer_than {
                break;
            }
            if let Some((batch, row)) = seg.find(&self.cache, key)? {
                return Ok(Some(Found::InSegment(seg.clone(), batch, row)));
            }
        }
        Ok(None)
    }

    /// The committed row under `key`.
    pub fn get(&self, entry: &TableEntry, shard: ShardIndex, key: &[u8]) -> DbResult<Option<Row>> {
        match self.locate(entry, shard, key)? {
            None => Ok(None),
            Some(Found::Stored(v)) => entry.decode_row(&v).map(Some),
            Some(Found::InSegment(seg, batch, row)) => seg.row(&entry.def, &batch, row).map(Some),
        }
    }

    /// Whether a committed row has `key`.
    pub fn contains(&self, entry: &TableEntry, shard: ShardIndex, key: &[u8]) -> DbResult<bool> {
        Ok(self.locate(entry, shard, key)?.is_some())
    }

    /// Checks a run (a transaction's sorted segment, not registered) against the committed
    /// data of its shard: 23505 if one of its keys is live in the row store or in a segment.
    pub fn check_run(&self, entry: &TableEntry, run: &Segment) -> DbResult<()> {
        if run.meta.rows == 0 || entry.def.hidden_rowid {
            return Ok(());
        }
        let io = |e: sled::Error| DbError::new(SqlState::IoError, format!("row store read: {e}"));
        let def = &entry.def;
        let tree = entry.tree(run.meta.shard)?;
        let (lo, hi) = (run.min_key(), run.max_key());
        let overlapping: Vec<Arc<Segment>> = self
            .segments(def.id, run.meta.shard)
            .iter()
            .filter(|s| s.overlaps(run))
            .cloned()
            .collect();
        if overlapping.is_empty() && tree.range(lo..=hi).next().is_none() {
            return Ok(()); // nothing committed in the run's key range
        }
        let keys = run.keys()?;
        // the row store: walk its keys in the run's range, or look the run's keys up when
        // the range holds more row-store keys than the run has
        let mut walked = true;
        for (i, item) in tree.range(lo..=hi).enumerate() {
            if i as u64 >= run.meta.rows {
                walked = false;
                break;
            }
            let (k, v) = item.map_err(io)?;
            if segment::tombstone_of(&v).is_none()
                && keys.iter().any(|a| segment::search(a, &k).is_some())
            {
                return Err(segment::duplicate(def, &k));
            }
        }
        if !walked {
            for k in keys.iter().flat_map(|a| a.iter().flatten()) {
                if let Some(v) = tree.get(k).map_err(io)?
                    && segment::tombstone_of(&v).is_none()
                {
                    return Err(segment::duplicate(def, k));
                }
            }
        }
        // registered segments: a key both have must be deleted there (a reload of a deleted
        // key)
        for seg in &overlapping {
            let live = segment::find_common(&keys, &seg.keys()?, |k| {
                let deleted = tree
                    .get(k)
                    .map_err(io)?
                    .is_some_and(|v| segment::shadows(&v, seg.order()));
                Ok(!deleted)
            })?;
            if let Some(k) = live {
                return Err(segment::duplicate(def, &k));
            }
        }
        Ok(())
    }

    /// Checks the keys a transaction inserted (`Change::insert`) against the segments
    /// registered since it began (`seen`: the newest segment then): 23505 for a key a load
    /// committed in between. The caller holds [`RowStore::registration`] shared.
    pub fn check_inserted(&self, changes: &[Change], seen: u64) -> DbResult<()> {
        self.check_against_prepared_runs(changes)?;
        if self.newest_segment() <= seen {
            return Ok(());
        }
        for c in changes.iter().filter(|c| c.insert) {
            let entry = self.table(c.table)?;
            if self
                .segments(c.table, c.shard)
                .iter()
                .any(|s| s.order() > seen)
                && self.contains(&entry, c.shard, &c.key)?
            {
                return Err(segment::duplicate(&entry.def, &c.key));
            }
        }
        Ok(())
    }

    /// 23505 if a key the transaction inserted is in a prepared load's run (the load commits
    /// it when its coordinator decides).
    fn check_against_prepared_runs(&self, changes: &[Change]) -> DbResult<()> {
        let reserved = self.reserved.lock();
        if reserved.runs.is_empty() {
            return Ok(());
        }
        for c in changes.iter().filter(|c| c.insert) {
            for run in reserved.runs.values().flatten() {
                if run.meta.table == c.table
                    && run.meta.shard == c.shard
                    && run.covers(&c.key)
                    && run.find(&self.cache, &c.key)?.is_some()
                {
                    let entry = self.table(c.table)?;
                    return Err(segment::duplicate(&entry.def, &c.key));
                }
            }
        }
        Ok(())
    }

    /// Checks a commit's (or a prepare's) runs before they register: against the committed
    /// data of their shards, each other, and what prepared transactions will commit. The
    /// caller holds [`RowStore::registration`] exclusively.
    pub fn check_runs(&self, runs: &[Arc<Segment>]) -> DbResult<()> {
        let reserved = self.reserved.lock();
        for (i, run) in runs.iter().enumerate() {
            let entry = self.table(run.meta.table)?;
            self.check_run(&entry, run)?;
            if entry.def.hidden_rowid || run.meta.rows == 0 {
                continue;
            }
            let same_shard = |s: &&Arc<Segment>| {
                s.meta.table == run.meta.table && s.meta.shard == run.meta.shard && s.overlaps(run)
            };
            let keys = run.keys()?;
            for other in runs[..i]
                .iter()
                .chain(reserved.runs.values().flatten())
                .filter(same_shard)
            {
                if let Some(k) = segment::find_common(&other.keys()?, &keys, |_| Ok(true))? {
                    return Err(segment::duplicate(&entry.def, &k));
                }
            }
            for (table, shard, key) in reserved.keys.values().flatten() {
                if *table == run.meta.table
                    && *shard == run.meta.shard
                    && run.covers(key)
                    && keys.iter().any(|a| segment::search(a, key).is_some())
                {
                    return Err(segment::duplicate(&entry.def, key));
                }
            }
        }
        Ok(())
    }

    /// Holds a prepared transaction's runs and written keys against other commits (see
    /// [`Reserved`]). The caller holds [`RowStore::registration`], exclusively if there are
    /// runs.
    pub fn reserve(&self, txn: u64, changes: &[Change], runs: &[Arc<Segment>]) {
        let keys: Vec<(TableId, ShardIndex, Vec<u8>)> = changes
            .iter()
            .filter(|c| c.value.is_some())
            .map(|c| (c.table, c.shard, c.key.clone()))
            .collect();
        let mut reserved = self.reserved.lock();
        if !keys.is_empty() {
            reserved.keys.insert(txn, keys);
        }
        if !runs.is_empty() {
            reserved.runs.insert(txn, runs.to_vec());
        }
    }

    /// Releases what [`RowStore::reserve`] held for `txn` (committed or aborted).
    pub fn unreserve(&self, txn: u64) {
        let mut reserved = self.reserved.lock();
        reserved.keys.remove(&txn);
        reserved.runs.remove(&txn);
    }

    /// Registers runs as segments of their shards, atomically with `changes` (a commit that
    /// both loaded and wrote rows), each with the next registration number
    /// ([`SegmentMeta::seq`]). The caller holds [`RowStore::registration`] exclusively.
    pub fn register(&self, changes: &[Change], runs: &[Arc<Segment>]) -> DbResult<()> {
        segment::sync_dir(&self.segment_dir)?;
        let mut numbered = Vec::with_capacity(runs.len());
        for r in runs.iter().filter(|r| r.meta.rows > 0) {
            let mut meta = r.meta.clone();
            meta.seq = self.new_segment_id()?;
            numbered.push(Arc::new(Segment {
                meta,
                path: r.path.clone(),
            }));
        }
        let runs = numbered.as_slice();
        let records: Vec<(Vec<u8>, Vec<u8>)> = runs
            .iter()
            .map(|r| {
                (
                    segment_key(r.meta.table, r.meta.shard, r.id()),
                    serde_json::to_vec(&r.meta).expect("segment metas serialize"),
                )
            })
            .collect();
        if changes.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in &records {
                batch.insert(k.as_slice(), v.as_slice());
            }
            self.segment_tree
                .apply_batch(batch)
                .map_err(|source| StoreError::Io { table: 0, source })?;
        } else {
            // deletes of keys the runs hold become tombstones too
            let changes = self.with_tombstones(changes, runs);
            self.apply_chunked(&changes, usize::MAX, &records)?;
        }
        let mut map = self.segments.write();
        for r in runs {
            let key = (r.meta.table, r.meta.shard);
            let mut list: Vec<Arc<Segment>> = map.get(&key).map(|l| l.to_vec()).unwrap_or_default();
            list.push(r.clone());
            map.insert(key, list.into());
            self.newest.fetch_max(r.order(), Ordering::AcqRel);
        }
        drop(map);
        self.note_writes(changes);
        Ok(())
    }

    /// Deletes of keys a segment may hold become tombstones (a plain remove would uncover the
    /// segment's copy).
    /// `extra`: segments registering with these changes.
    fn with_tombstones<'a>(
        &self,
        changes: &'a [Change],
        extra: &[Arc<Segment>],
    ) -> std::borrow::Cow<'a, [Change]> {
        let map = self.segments.read();
        if map.is_empty() && extra.is_empty() {
            return std::borrow::Cow::Borrowed(changes);
        }
        let tomb = |c: &Change| -> Option<u64> {
            if c.value.is_some() {
                return None;
            }
            let segs = map
                .get(&(c.table, c.shard))
                .into_iter()
                .flat_map(|l| l.iter())
                .chain(
                    extra
                        .iter()
                        .filter(|s| s.meta.table == c.table && s.meta.shard == c.shard),
                );
            let mut newest = None;
            let mut covered = false;
            for s in segs {
                covered |= s.covers(&c.key);
                newest = newest.max(Some(s.order()));
            }
            if covered { newest } else { None }
        };
        if !changes.iter().any(|c| tomb(c).is_some()) {
            return std::borrow::Cow::Borrowed(changes);
        }
        std::borrow::Cow::Owned(
            changes
                .iter()
                .map(|c| Change {
                    table: c.table,
                    shard: c.shard,
                    key: c.key.clone(),
                    value: match tomb(c) {
                        Some(newest) => Some(segment::tombstone(newest)),
                        None => c.value.clone(),
                    },
                    insert: c.insert,
                })
                .collect(),
        )
    }

    /// Unregisters and deletes every segment of a table (DROP/TRUNCATE), durably.
    fn drop_segments(&self, id: TableId) -> DbResult<()> {
        let io = |source| -> DbError { StoreError::Io { table: id, source }.into() };
        let removed: Vec<Arc<Segment>> = {
            let mut map = self.segments.write();
            let keys: Vec<_> = map.keys().filter(|k| k.0 == id).copied().collect();
            keys.iter()
                .filter_map(|k| map.remove(k))
                .flat_map(|l| l.to_vec())
                .collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for s in &removed {
            batch.remove(segment_key(id, s.meta.shard, s.id()));
        }
        self.segment_tree.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        for s in &removed {
            self.cache.forget(s.id());
            let _ = std::fs::remove_file(&s.path);
        }
        Ok(())
    }

    /// Undoes chunked commits a crash interrupted: their undo records are still there.
    fn roll_back_interrupted_commits(&self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io { table: 0, source };
        let pending: Vec<(sled::IVec, sled::IVec)> =
            self.undo.iter().collect::<Result<_, _>>().map_err(io)?;
        for (id, record) in pending {
            let changes = decode_undo(&record).ok_or(StoreError::Undo)?;
            tracing::warn!(
                changes = changes.len(),
                "rolling back a commit interrupted by a crash"
            );
            for chunk in changes.chunks(COMMIT_CHUNK) {
                self.apply_per_tree(chunk).map_err(|_| StoreError::Undo)?;
            }
            self.db.flush().map_err(io)?;
            self.undo.remove(id).map_err(io)?;
            self.db.flush().map_err(io)?;
        }
        Ok(())
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn open_entry(&self, def: TableDef) -> Result<TableEntry, StoreError> {
        let shards = (0..def.shard_count)
            .map(|s| self.db.open_tree(tree_name(def.id, s)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StoreError::Io {
                table: def.id,
                source,
            })?;
        Ok(TableEntry::new(def, shards))
    }

    fn save_def(&self, def: &TableDef) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(def).expect("table definitions serialize");
        self.meta
            .insert(def.id.to_be_bytes(), bytes)
            .map_err(|source| StoreError::Io {
                table: def.id,
                source,
            })?;
        Ok(())
    }

    pub fn create_table(&self, def: &TableDef) -> DbResult<()> {
        self.save_def(def)?;
        let entry = self.open_entry(def.clone())?;
        self.tables.write().insert(def.id, Arc::new(entry));
        Ok(())
    }

    pub fn alter_table(&self, def: &TableDef) -> DbResult<()> {
        self.create_table(def)
    }

    pub fn drop_table(&self, id: TableId) -> DbResult<()> {
        // not while a conversion registers a segment of it
        let _exclusive = self.registration.write();
        let Some(entry) = self.tables.write().remove(&id) else {
            return Ok(());
        };
        for s in 0..entry.def.shard_count {
            self.db
                .drop_tree(tree_name(id, s))
                .map_err(|source| StoreError::Io { table: id, source })?;
        }
        self.meta
            .remove(id.to_be_bytes())
            .map_err(|source| StoreError::Io { table: id, source })?;
        self.drop_segments(id)
    }

    pub fn truncate(&self, id: TableId) -> DbResult<()> {
        let _exclusive = self.registration.write();
        let entry = self.table(id)?;
        for t in &entry.shards {
            t.clear()
                .map_err(|source| StoreError::Io { table: id, source })?;
        }
        self.drop_segments(id)
    }

    pub fn table(&self, id: TableId) -> DbResult<Arc<TableEntry>> {
        self.tables.read().get(&id).cloned().ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedTable,
                format!("table {id} does not exist on this worker"),
            )
        })
    }

    /// Applies a transaction's changes atomically. Not durable until [`RowStore::flush`].
    ///
    /// Up to [`COMMIT_CHUNK`] changes go in one sled batch or transaction. sled holds several
    /// KiB per entry while it applies one, so larger commits (a big COPY) are applied in chunks
    /// instead, made atomic across a crash by an undo record: the values the commit replaces
    /// are written (and fsynced) first, and removed after the last chunk; [`RowStore::open`]
    /// puts back the old values of any commit whose record is still there. Other sessions can
    /// see a chunked commit's first chunks before its last one lands.
    pub fn apply(&self, changes: &[Change]) -> DbResult<()> {
        let tombstoned = self.with_tombstones(changes, &[]);
        if tombstoned.len() <= COMMIT_CHUNK {
            self.apply_atomic(&tombstoned)?;
        } else {
            self.apply_chunked(&tombstoned, usize::MAX, &[])?;
        }
        self.note_writes(changes);
        Ok(())
    }

    /// `stop_after`: number of chunks to apply before returning early (a simulated crash, for
    /// tests); `usize::MAX` in real use. `register`: segment records inserted in the same sled
    /// transaction that removes the undo record (the commit point).
    fn apply_chunked(
        &self,
        changes: &[Change],
        stop_after: usize,
        register: &[(Vec<u8>, Vec<u8>)],
    ) -> DbResult<()> {
        let io = |source| -> DbError { StoreError::Io { table: 0, source }.into() };
        let mut undo = Vec::with_capacity(changes.len());
        {
            let tables = self.tables.read();
            for c in changes {
                let entry = tables.get(&c.table).ok_or_else(|| {
                    DbError::new(
                        SqlState::UndefinedTable,
                        format!("table {} was dropped by a concurrent transaction", c.table),
                    )
                })?;
                let old = entry.tree(c.shard)?.get(&c.key).map_err(io)?;
                undo.push(Change {
                    table: c.table,
                    shard: c.shard,
                    key: c.key.clone(),
                    value: old.map(|v| v.to_vec()),
                    insert: false,
                });
            }
        }
        let id = self.db.generate_id().map_err(io)?.to_be_bytes();
        self.undo.insert(id, encode_undo(&undo)).map_err(io)?;
        drop(undo);
        self.db.flush().map_err(io)?;
        for (i, chunk) in changes.chunks(COMMIT_CHUNK).enumerate() {
            if i == stop_after {
                return Ok(());
            }
            self.apply_per_tree(chunk)?;
        }
        // every chunk durable before the record that would undo them goes
        self.db.flush().map_err(io)?;
        if register.is_empty() {
            self.undo.remove(id).map_err(io)?;
            return Ok(());
        }
        use sled::Transactional;
        let result: Result<(), TransactionError<()>> = (&self.undo, &self.segment_tree)
            .transaction(|(undo, segs)| {
                undo.remove(&id)?;
                for (k, v) in register {
                    segs.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| match e {
            TransactionError::Storage(source) => io(source),
            TransactionError::Abort(()) => DbError::internal("segment registration aborted"),
        })
    }

    /// The distinct trees `changes` touch, and for each change the index of its tree.
    fn trees_of(&self, changes: &[Change]) -> DbResult<(Vec<sled::Tree>, Vec<usize>)> {
        let mut trees: Vec<sled::Tree> = Vec::new();
        let mut tree_of_change = Vec::with_capacity(changes.len());
        let mut index: HashMap<(TableId, ShardIndex), usize> = HashMap::new();
        let tables = self.tables.read();
        for c in changes {
            let i = match index.get(&(c.table, c.shard)) {
                Some(i) => *i,
                None => {
                    let entry = tables.get(&c.table).ok_or_else(|| {
                        DbError::new(
                            SqlState::UndefinedTable,
                            format!("table {} was dropped by a concurrent transaction", c.table),
                        )
                    })?;
                    trees.push(entry.tree(c.shard)?.clone());
                    index.insert((c.table, c.shard), trees.len() - 1);
                    trees.len() - 1
                }
            };
            tree_of_change.push(i);
        }
        Ok((trees, tree_of_change))
    }

    /// Applies a chunk of a commit whose undo record is already durable: one sled batch per
    /// tree. Each batch is atomic on its own; atomicity across trees (and across a crash) comes
    /// from the undo record, so no sled transaction is needed — it costs several times more per
    /// entry than a batch.
    fn apply_per_tree(&self, changes: &[Change]) -> DbResult<()> {
        let (trees, tree_of_change) = self.trees_of(changes)?;
        let mut batches: Vec<sled::Batch> = trees.iter().map(|_| sled::Batch::default()).collect();
        for (c, &ti) in changes.iter().zip(&tree_of_change) {
            match &c.value {
                Some(v) => batches[ti].insert(c.key.as_slice(), v.as_slice()),
                None => batches[ti].remove(c.key.as_slice()),
            }
        }
        for (tree, batch) in trees.iter().zip(batches) {
            tree.apply_batch(batch).map_err(|source| -> DbError {
                StoreError::Io {
                    table: changes[0].table,
                    source,
                }
                .into()
            })?;
        }
        Ok(())
    }

    /// Applies changes to several shards atomically (one sled batch, or one sled transaction
    /// over their trees).
    fn apply_atomic(&self, changes: &[Change]) -> DbResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let (trees, tree_of_change) = self.trees_of(changes)?;
        if trees.len() == 1 {
            return self.apply_per_tree(changes);
        }
        use sled::Transactional;
        let result: Result<(), TransactionError<()>> = trees.as_slice().transaction(|txs| {
            for (c, &ti) in changes.iter().zip(&tree_of_change) {
                match &c.value {
                    Some(v) => {
                        txs[ti].insert(c.key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        txs[ti].remove(c.key.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        result.map_err(|e| match e {
            TransactionError::Storage(source) => StoreError::Io {
                table: changes[0].table,
                source,
            }
            .into(),
            TransactionError::Abort(()) => DbError::internal("row store transaction aborted"),
        })
    }

    /// Records a prepared transaction's changes and its load's runs (durable after the next
    /// [`RowStore::flush`]; the run files are already).
    pub fn save_prepared(
        &self,
        txn: u64,
        changes: &[Change],
        runs: &[Arc<Segment>],
    ) -> DbResult<()> {
        let io = |source| -> DbError { StoreError::Io { table: 0, source }.into() };
        if !runs.is_empty() {
            segment::sync_dir(&self.segment_dir)?;
            let metas: Vec<&SegmentMeta> = runs.iter().map(|r| &r.meta).collect();
            let record = serde_json::to_vec(&metas).expect("segment metas serialize");
            // the runs first: a crash between the two leaves no prepared record, and the
            // files are removed as unregistered at the next start
            self.prepared_runs
                .insert(txn.to_be_bytes(), record)
                .map_err(io)?;
        }
        self.prepared
            .insert(txn.to_be_bytes(), encode_undo(changes))
            .map_err(io)?;
        Ok(())
    }

    /// Forgets a prepared transaction (committed or aborted).
    pub fn remove_prepared(&self, txn: u64) -> DbResult<()> {
        let io = |source| -> DbError { StoreError::Io { table: 0, source }.into() };
        self.prepared.remove(txn.to_be_bytes()).map_err(io)?;
        self.prepared_runs.remove(txn.to_be_bytes()).map_err(io)?;
        Ok(())
    }

    /// The prepared transactions recorded here, with their changes and runs. A prepared load
    /// whose runs are registered already committed (a crash came between its registration and
    /// the removal of its record): its record is removed, and it is not returned.
    pub fn load_prepared(&self) -> DbResult<Vec<PreparedRecord>> {
        let mut runs: HashMap<u64, Vec<SegmentMeta>> =
            self.prepared_run_metas()?.into_iter().collect();
        let mut out = Vec::new();
        for item in self.prepared.iter() {
            let (k, v) = item.map_err(|source| StoreError::Io { table: 0, source })?;
            let txn = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Undo)?);
            let changes = decode_undo(&v).ok_or(StoreError::Undo)?;
            let metas = runs.remove(&txn).unwrap_or_default();
            let mut registered = false;
            for m in &metas {
                registered |= self
                    .segment_tree
                    .contains_key(segment_key(m.table, m.shard, m.id))
                    .map_err(|source| StoreError::Io { table: 0, source })?;
            }
            if registered {
                tracing::info!(txn, "a prepared load committed before a crash");
                self.remove_prepared(txn)?;
                continue;
            }
            let runs = metas
                .into_iter()
                .map(|m| Arc::new(Segment::at(&self.segment_dir, m)))
                .collect();
            out.push(PreparedRecord { txn, changes, runs });
        }
        // runs without a prepared record: the crash came while it was saved
        for (txn, metas) in runs {
            self.prepared_runs
                .remove(txn.to_be_bytes())
                .map_err(|source| StoreError::Io { table: 0, source })?;
            for m in metas {
                let _ = std::fs::remove_file(self.segment_dir.join(segment::file_name(m.id)));
            }
        }
        Ok(out)
    }

    /// Makes every applied change durable (fsync).
    pub fn flush(&self) -> DbResult<()> {
        self.db
            .flush()
            .map_err(|source| StoreError::Io { table: 0, source })?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use orochi_common::schema::ColumnDef;
    use orochi_common::types::SqlType;

    use super::*;

    /// `t (k int8 PRIMARY KEY, v int8)`, id 16384, 4 shards: the worker's unit-test table.
    pub(crate) fn table() -> TableDef {
        TableDef {
            id: 16384,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                ColumnDef::new("k", SqlType::Int8),
                ColumnDef::new("v", SqlType::Int8),
            ],
            primary_key: vec![0],
            distribution_column: 0,
            shard_count: 4,
            hidden_rowid: false,
            version: 1,
            reference: false,
            workers: 0,
        }
    }

    fn change(entry: &TableEntry, k: i64, v: Option<i64>) -> Change {
        let row = vec![Datum::Int8(k), Datum::Int8(v.unwrap_or(0))];
        Change {
            table: entry.def.id,
            shard: entry.def.shard_of_row(&row),
            key: entry.def.encode_key(&row),
            value: v.map(|_| entry.encode_row(&row)),
            insert: false,
        }
    }

    fn contents(store: &RowStore) -> Vec<(i64, i64)> {
        let entry = store.table(16384).unwrap();
        let mut out = Vec::new();
        for s in 0..entry.def.shard_count {
            for item in entry.tree(s).unwrap().iter() {
                let (_, v) = item.unwrap();
                let row = entry.decode_row(&v).unwrap();
                match (&row[0], &row[1]) {
                    (Datum::Int8(k), Datum::Int8(v)) => out.push((*k, *v)),
                    other => panic!("unexpected row {other:?}"),
                }
            }
        }
        out.sort();
        out
    }

    /// A chunked commit cut short (a crash after its first chunk) is rolled back when the
    /// store is opened again: updated rows get their old values, inserted rows disappear,
    /// deleted rows come back.
    #[test]
    fn interrupted_chunked_commit_is_rolled_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let before: Vec<(i64, i64)> = (0..10).map(|k| (k, k * 10)).collect();
        {
            let store = RowStore::open(dir.path(), 8 << 20).unwrap();
            store.create_table(&table()).unwrap();
            let entry = store.table(16384).unwrap();
            let initial: Vec<Change> = before
                .iter()
                .map(|&(k, v)| change(&entry, k, Some(v)))
                .collect();
            store.apply(&initial).unwrap();
            // updates and a delete of existing rows, then many inserts: three chunks
            let mut big: Vec<Change> = (0..5).map(|k| change(&entry, k, Some(-1))).collect();
            big.push(change(&entry, 9, None));
            big.extend((100..100 + 2 * COMMIT_CHUNK as i64).map(|k| change(&entry, k, Some(k))));
            store.apply_chunked(&big, 1, &[]).unwrap();
            assert_ne!(contents(&store), before, "the first chunk was applied");
            store.flush().unwrap();
        }
        let store = RowStore::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(contents(&store), before);
        assert_eq!(store.undo.len(), 0);

        // an uninterrupted chunked commit is all there, and leaves no undo record
        let entry = store.table(16384).unwrap();
        let big: Vec<Change> = (100..100 + 2 * COMMIT_CHUNK as i64)
            .map(|k| change(&entry, k, Some(k)))
            .collect();
        store.apply(&big).unwrap();
        assert_eq!(contents(&store).len(), 10 + 2 * COMMIT_CHUNK);
        assert_eq!(store.undo.len(), 0);
    }

    #[test]
    fn undo_records_round_trip() {
        let changes = vec![
            Change {
                table: 7,
                shard: 3,
                key: vec![1, 2, 3],
                value: Some(vec![9; 40]),
                insert: false,
            },
            Change {
                table: u64::MAX,
                shard: 0,
                key: vec![],
                value: None,
                insert: false,
            },
        ];
        let decoded = decode_undo(&encode_undo(&changes)).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].key, vec![1, 2, 3]);
        assert_eq!(decoded[0].value, Some(vec![9; 40]));
        assert_eq!(decoded[1].table, u64::MAX);
        assert_eq!(decoded[1].value, None);
        // truncated records are an error, not a panic
        let bytes = encode_undo(&changes);
        assert!(decode_undo(&bytes[..bytes.len() - 1]).is_none());
    }
}
