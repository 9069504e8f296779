//! Columnar segments: a shard's bulk-loaded rows as an immutable Arrow IPC file (LZ4 buffer
//! compression), sorted by primary key, registered in the row store's `segments` tree
//! (DESIGN.md §4, delta + main).
//!
//! The shard's sled tree is an overlay on its segments: a key there shadows the key in every
//! segment — a row is a newer version, a tombstone ([`tombstone`]) a delete. A tombstone
//! records the newest segment of the shard when it was written, so a key deleted and later
//! loaded again (into a newer segment) is live. "Newer" is the order segments registered in
//! ([`Segment::order`]), not the order their files were written: a transaction writes its
//! runs as it loads and registers them when it commits. A load checks the row store and the segments
//! before it registers (see `RowStore::check_run`), so a key is live in at most one place.
//!
//! File layout: column 0 is the encoded primary key (`__key`, binary, sorted ascending);
//! column `1 + i` is physical column `i` of the table as it was when the segment was written
//! (columns added later read as their `missing` value). Batches of [`BATCH_ROWS`] rows; the
//! first key of each is kept in [`SegmentMeta::first_keys`] so a point lookup reads one batch.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::CompressionType;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::keycodec;
use orochi_common::schema::{ShardIndex, TableDef, TableId};
use orochi_common::service::Row;
use parking_lot::Mutex;

/// Rows per record batch in a segment file: the unit a point lookup decodes (and caches),
/// so small enough that a cache miss costs little.
pub const BATCH_ROWS: usize = 4_096;

const TOMBSTONE_TAG: u8 = 0xFF;

/// The row-store value that deletes a key from the shard's segments up to order `newest`
/// (never a valid row: rows start with their format version, 1).
pub fn tombstone(newest: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.push(TOMBSTONE_TAG);
    v.extend_from_slice(&newest.to_be_bytes());
    v
}

/// `Some(newest)` if a row-store value is a tombstone.
pub fn tombstone_of(value: &[u8]) -> Option<u64> {
    (value.len() == 9 && value[0] == TOMBSTONE_TAG)
        .then(|| u64::from_be_bytes(value[1..9].try_into().expect("9 bytes")))
}

/// Whether a row-store value hides the copy of its key in the segment of order `segment`.
pub fn shadows(value: &[u8], segment: u64) -> bool {
    tombstone_of(value).is_none_or(|newest| newest >= segment)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> DbError {
    DbError::new(SqlState::IoError, format!("columnar segment {what}: {e}"))
}

/// What the row store records about a segment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentMeta {
    /// Allocated from the row store's id generator when the file is written; names the file.
    pub id: u64,
    /// Drawn from the same generator when the segment registers (0: not registered, or
    /// registered before this was recorded, when files registered in id order): a segment
    /// registered later has a larger one. Tombstones and newer versions are ordered by it.
    #[serde(default)]
    pub seq: u64,
    pub table: TableId,
    pub shard: ShardIndex,
    pub rows: u64,
    /// Physical columns stored (file columns `1..=columns`).
    pub columns: usize,
    /// The first key of each batch.
    pub first_keys: Vec<Vec<u8>>,
    pub max_key: Vec<u8>,
    /// Size of the file, and of its data decoded in memory.
    pub file_bytes: u64,
    pub raw_bytes: u64,
}

/// A segment file and what is known about it.
#[derive(Debug)]
pub struct Segment {
    pub meta: SegmentMeta,
    pub path: PathBuf,
}

pub fn file_name(id: u64) -> String {
    format!("{id:016x}.arrow")
}

impl Segment {
    pub fn at(dir: &Path, meta: SegmentMeta) -> Segment {
        Segment {
            path: dir.join(file_name(meta.id)),
            meta,
        }
    }

    pub fn id(&self) -> u64 {
        self.meta.id
    }

    /// Where the segment stands among its shard's segments: its registration number, or,
    /// not registered yet (a transaction's own run), its id.
    pub fn order(&self) -> u64 {
        if self.meta.seq == 0 {
            self.meta.id
        } else {
            self.meta.seq
        }
    }

    pub fn min_key(&self) -> &[u8] {
        self.meta.first_keys.first().map_or(&[], Vec::as_slice)
    }

    pub fn max_key(&self) -> &[u8] {
        &self.meta.max_key
    }

    pub fn covers(&self, key: &[u8]) -> bool {
        self.meta.rows > 0 && self.min_key() <= key && key <= self.max_key()
    }

    pub fn overlaps(&self, other: &Segment) -> bool {
        self.meta.rows > 0
            && other.meta.rows > 0
            && self.min_key() <= other.max_key()
            && other.min_key() <= self.max_key()
    }

    /// A reader of the file's columns `projection` (file column indexes; `None`: all).
    pub fn reader(&self, projection: Option<Vec<usize>>) -> DbResult<FileReader<BufReader<File>>> {
        let file = File::open(&self.path).map_err(|e| io_err("open", e))?;
        FileReader::try_new_buffered(file, projection).map_err(|e| io_err("read", e))
    }

    /// Batch `i`, every column.
    pub fn read_batch(&self, i: usize) -> DbResult<RecordBatch> {
        let mut r = self.reader(None)?;
        r.set_index(i).map_err(|e| io_err("read", e))?;
        r.next()
            .ok_or_else(|| io_err("read", format!("batch {i} missing")))?
            .map_err(|e| io_err("read", e))
    }

    /// The key column of every batch, in order.
    pub fn keys(&self) -> DbResult<Vec<BinaryArray>> {
        self.reader(Some(vec![0]))?
            .map(|b| {
                b.map(|b| b.column(0).as_binary::<i32>().clone())
                    .map_err(|e| io_err("read", e))
            })
            .collect()
    }

    /// Where `key` is: its batch and row.
    pub fn find(&self, cache: &BatchCache, key: &[u8]) -> DbResult<Option<(RecordBatch, usize)>> {
        if !self.covers(key) {
            return Ok(None);
        }
        let b = self
            .meta
            .first_keys
            .partition_point(|k| k.as_slice() <= key)
            .saturating_sub(1);
        let batch = cache.get(self, b)?;
        let keys = batch.column(0).as_binary::<i32>();
        Ok(search(keys, key).map(|row| (batch, row)))
    }

    /// Row `row` of `batch` (a batch of this segment) as a full physical row of `def`.
    pub fn row(&self, def: &TableDef, batch: &RecordBatch, row: usize) -> DbResult<Row> {
        def.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < self.meta.columns {
                    Datum::from_arrow(batch.column(1 + i).as_ref(), row, c.ty)
                } else {
                    Ok(c.missing.clone())
                }
            })
            .collect()
    }
}

/// The index of `key` in a sorted key column.
pub fn search(keys: &BinaryArray, key: &[u8]) -> Option<usize> {
    let (mut lo, mut hi) = (0, keys.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match keys.value(mid).cmp(key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}

/// Walks the keys two sorted key sequences share, in order, until `stop(key)` says so;
/// returns that key.
pub fn find_common(
    a: &[BinaryArray],
    b: &[BinaryArray],
    mut stop: impl FnMut(&[u8]) -> DbResult<bool>,
) -> DbResult<Option<Vec<u8>>> {
    let mut a = a.iter().flat_map(|x| x.iter().flatten()).peekable();
    let mut b = b.iter().flat_map(|x| x.iter().flatten()).peekable();
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => {
                a.next();
            }
            std::cmp::Ordering::Greater => {
                b.next();
            }
            std::cmp::Ordering::Equal => {
                if stop(x)? {
                    return Ok(Some(x.to_vec()));
                }
                a.next();
                b.next();
            }
        }
    }
    Ok(None)
}

/// The unique violation for an encoded key of `def`.
pub fn duplicate(def: &TableDef, key: &[u8]) -> DbError {
    let cols: Vec<&str> = def
        .primary_key
        .iter()
        .map(|&i| def.columns[i].name.as_str())
        .collect();
    let vals: Vec<String> = keycodec::decode_key(&def.key_types(), key)
        .map(|v| {
            v.iter()
                .map(|d| d.to_text().unwrap_or_else(|| "null".into()))
                .collect()
        })
        .unwrap_or_default();
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

/// Writes rows (unsorted; `keys[i]` is row `i`'s encoded primary key) as segment `id` in
/// `dir`, sorted by key and fsynced. Two rows with one key fail with 23505, unless the table's
/// key is a hidden row id (unique by construction).
pub fn write(
    dir: &Path,
    id: u64,
    def: &TableDef,
    shard: ShardIndex,
    keys: BinaryArray,
    columns: Vec<ArrayRef>,
) -> DbResult<Segment> {
    let internal = |e: arrow::error::ArrowError| DbError::internal(format!("segment: {e}"));
    let order = arrow::compute::sort_to_indices(&keys, None, None).map_err(internal)?;
    let keys = arrow::compute::take(&keys, &order, None).map_err(internal)?;
    let keys = keys.as_binary::<i32>().clone();
    if !def.hidden_rowid {
        for i in 1..keys.len() {
            if keys.value(i) == keys.value(i - 1) {
                return Err(duplicate(def, keys.value(i)));
            }
        }
    }
    let mut fields = vec![Field::new("__key", DataType::Binary, false)];
    fields.extend(
        def.columns
            .iter()
            .enumerate()
            .map(|(i, c)| c.ty.arrow_field(&format!("c{i}"), true)),
    );
    let schema = Arc::new(Schema::new(fields));
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(keys.clone())];
    for c in &columns {
        arrays.push(arrow::compute::take(c.as_ref(), &order, None).map_err(internal)?);
    }
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(internal)?;
    let raw_bytes = batch.get_array_memory_size() as u64;

    let path = dir.join(file_name(id));
    let file = File::create(&path).map_err(|e| io_err("create", e))?;
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .map_err(internal)?;
    let mut writer = FileWriter::try_new_with_options(BufWriter::new(file), &schema, options)
        .map_err(|e| io_err("write", e))?;
    let mut first_keys = Vec::new();
    let mut offset = 0;
    while offset < batch.num_rows() {
        let len = BATCH_ROWS.min(batch.num_rows() - offset);
        first_keys.push(keys.value(offset).to_vec());
        writer
            .write(&batch.slice(offset, len))
            .map_err(|e| io_err("write", e))?;
        offset += len;
    }
    writer.finish().map_err(|e| io_err("write", e))?;
    let file = writer
        .into_inner()
        .map_err(|e| io_err("write", e))?
        .into_inner()
        .map_err(|e| io_err("write", e.error()))?;
    file.sync_all().map_err(|e| io_err("fsync", e))?;
    let file_bytes = file.metadata().map_err(|e| io_err("stat", e))?.len();
    let meta = SegmentMeta {
        id,
        seq: 0,
        table: def.id,
        shard,
        rows: keys.len() as u64,
        columns: def.columns.len(),
        first_keys,
        max_key: if keys.is_empty() {
            Vec::new()
        } else {
            keys.value(keys.len() - 1).to_vec()
        },
        file_bytes,
        raw_bytes,
    };
    Ok(Segment { meta, path })
}

/// Makes the segment files created in `dir` durable as entries of it (their data is synced
/// when they are written).
pub fn sync_dir(dir: &Path) -> DbResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("directory fsync", e))
}

/// Decoded segment batches for point lookups, evicted oldest first past a byte budget. What
/// it holds is reserved from the query memory pool (when it has one): a full pool makes it
/// evict, or not cache, rather than take memory queries need.
pub struct BatchCache {
    inner: Mutex<CacheInner>,
    limit: usize,
    reservation: Option<datafusion::execution::memory_pool::MemoryReservation>,
}

#[derive(Default)]
struct CacheInner {
    batches: HashMap<(u64, usize), RecordBatch>,
    order: VecDeque<((u64, usize), usize)>,
    bytes: usize,
}

impl BatchCache {
    pub fn new(limit: usize) -> BatchCache {
        BatchCache {
            inner: Mutex::new(CacheInner::default()),
            limit,
            reservation: None,
        }
    }

    /// A cache of at most an eighth of `pool`'s limit, its bytes reserved there.
    pub fn in_pool(pool: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>) -> BatchCache {
        use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit};
        let limit = match pool.memory_limit() {
            MemoryLimit::Finite(n) => n / 8,
            _ => 64 << 20,
        };
        BatchCache {
            inner: Mutex::new(CacheInner::default()),
            limit,
            reservation: Some(MemoryConsumer::new("segment batch cache").register(pool)),
        }
    }

    pub fn get(&self, seg: &Segment, batch: usize) -> DbResult<RecordBatch> {
        let k = (seg.id(), batch);
        if let Some(b) = self.inner.lock().batches.get(&k) {
            return Ok(b.clone());
        }
        let b = seg.read_batch(batch)?;
        let size = b.get_array_memory_size();
        let mut inner = self.inner.lock();
        if inner.batches.contains_key(&k) {
            return Ok(b);
        }
        // make room: under the limit, and reserved in the pool
        loop {
            let fits = inner.bytes + size <= self.limit
                && self
                    .reservation
                    .as_ref()
                    .is_none_or(|r| r.try_grow(size).is_ok());
            if fits {
                break;
            }
            let Some((old, old_size)) = inner.order.pop_front() else {
                return Ok(b); // nothing to evict: not cached
            };
            inner.batches.remove(&old);
            inner.bytes -= old_size;
            if let Some(r) = &self.reservation {
                r.shrink(old_size);
            }
        }
        inner.batches.insert(k, b.clone());
        inner.order.push_back((k, size));
        inner.bytes += size;
        Ok(b)
    }

    /// Forgets a segment's batches (it was dropped).
    pub fn forget(&self, seg: u64) {
        let mut inner = self.inner.lock();
        inner.batches.retain(|k, _| k.0 != seg);
        let mut freed = 0;
        inner.order.retain(|(k, size)| {
            let keep = k.0 != seg;
            if !keep {
                freed += size;
            }
            keep
        });
        inner.bytes -= freed;
        if let Some(r) = &self.reservation {
            r.shrink(freed.min(r.size()));
        }
    }
}
