//! A transaction's bulk loads (COPY): rows buffered per shard as Arrow columns, written out
//! as sorted segment files ("runs") when a buffer fills, at a savepoint and at commit, and
//! registered as the shard's segments when the transaction commits.
//!
//! A buffered row costs its Arrow bytes, not a write-set entry and a row lock: loads take no
//! row locks. Uniqueness is checked when the runs register (under the row store's exclusive
//! registration lock; see `RowStore::check_run`), and ordinary commits that raced with a
//! registration check their inserted keys against the new segments.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder};
use orochi_common::datum::Datum;
use orochi_common::error::DbResult;
use orochi_common::schema::{ShardIndex, TableId};

use crate::batch::BatchBuilder;
use crate::segment::{self, Segment};
use crate::store::TableEntry;

/// A shard buffer is written out as a run at this many rows.
pub const RUN_ROWS: usize = 131_072;

/// A transaction's buffers are all written out when together they hold this many bytes.
pub const BUFFER_BYTES: u64 = 64 << 20;

/// Rows of one shard waiting to be written as a run.
pub struct ShardBuffer {
    entry: Arc<TableEntry>,
    shard: ShardIndex,
    keys: BinaryBuilder,
    rows: BatchBuilder,
    /// Bytes charged to the write-set budget for these rows.
    pub charged: u64,
}

/// A run written by the transaction, not yet registered.
pub struct Run {
    pub seg: Arc<Segment>,
}

#[derive(Default)]
pub struct Loads {
    buffers: HashMap<(TableId, ShardIndex), ShardBuffer>,
    pub runs: Vec<Run>,
}

/// Approximate bytes a value holds in an Arrow column.
fn datum_bytes(d: &Datum) -> usize {
    match d {
        Datum::Text(s) | Datum::Json(s) => s.len() + 4,
        Datum::Bytea(b) => b.len() + 4,
        Datum::Numeric { .. } | Datum::Uuid(_) => 16,
        _ => 8,
    }
}

impl std::fmt::Debug for Loads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loads")
            .field("buffers", &self.buffers.len())
            .field("runs", &self.runs.len())
            .finish()
    }
}

impl Loads {
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty() && self.runs.is_empty()
    }

    /// Bytes the buffers hold.
    pub fn buffered(&self) -> u64 {
        self.buffers.values().map(|b| b.charged).sum()
    }

    /// Whether the transaction has loaded rows into `table`.
    pub fn touches(&self, table: TableId) -> bool {
        self.buffers.keys().any(|(t, _)| *t == table)
            || self.runs.iter().any(|r| r.seg.meta.table == table)
    }

    /// Buffers a full physical row under its encoded key; returns the bytes it holds.
    pub fn push(
        &mut self,
        entry: &Arc<TableEntry>,
        shard: ShardIndex,
        key: &[u8],
        row: &[Datum],
    ) -> DbResult<u64> {
        self.buffers
            .entry((entry.def.id, shard))
            .or_insert_with(|| ShardBuffer::new(entry, shard))
            .push(key, row)
    }

    /// The buffers `which(table, shard, rows)` picks, taken out to be written.
    pub fn take_buffers(
        &mut self,
        which: impl Fn(TableId, ShardIndex, usize) -> bool,
    ) -> Vec<ShardBuffer> {
        self.buffers
            .extract_if(|k, b| which(k.0, k.1, b.rows.len()))
            .map(|(_, b)| b)
            .collect()
    }

    /// Every buffer, dropped (rolled back); returns their charge.
    pub fn drop_buffers(&mut self) -> u64 {
        self.buffers.drain().map(|(_, b)| b.charged).sum()
    }

    /// The unregistered runs of one shard of `table`.
    pub fn runs_of(&self, table: TableId, shard: ShardIndex) -> Vec<Arc<Segment>> {
        self.runs
            .iter()
            .filter(|r| r.seg.meta.table == table && r.seg.meta.shard == shard)
            .map(|r| r.seg.clone())
            .collect()
    }
}

impl ShardBuffer {
    pub fn new(entry: &Arc<TableEntry>, shard: ShardIndex) -> ShardBuffer {
        let all: Vec<usize> = (0..entry.def.columns.len()).collect();
        ShardBuffer {
            entry: entry.clone(),
            shard,
            keys: BinaryBuilder::new(),
            rows: BatchBuilder::new(&entry.def, &all, 1024),
            charged: 0,
        }
    }

    /// Buffers a full physical row under its encoded key; returns the bytes it holds.
    pub fn push(&mut self, key: &[u8], row: &[Datum]) -> DbResult<u64> {
        self.keys.append_value(key);
        self.rows.push(row.iter())?;
        let bytes = (key.len() + 8 + row.iter().map(datum_bytes).sum::<usize>()) as u64;
        self.charged += bytes;
        Ok(bytes)
    }

    /// Writes the buffer as run `id` in `dir` (blocking I/O).
    pub fn write(mut self, dir: &Path, id: u64) -> DbResult<Run> {
        let keys = self.keys.finish();
        let batch = self.rows.finish()?;
        let columns: Vec<ArrayRef> = batch.columns().to_vec();
        let shard = self.shard;
        let seg = segment::write(dir, id, &self.entry.def, shard, keys, columns)?;
        Ok(Run { seg: Arc::new(seg) })
    }
}
