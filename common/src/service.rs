//! The interface between the coordinator and the workers that own shards. Standalone mode uses
//! the in-process implementation in `orochi_worker`; a cluster will use an Arrow Flight client
//! with the same trait, so there is exactly one code path above it.
//!
//! Transactions: the coordinator names every statement or transaction block with a [`TxnId`].
//! Writes are buffered per transaction on the worker, visible to that transaction's own reads
//! and scans, and applied atomically and durably by [`ShardService::commit`]. Rows being written
//! are locked until commit/abort, so concurrent writers of one row queue behind each other
//! (Postgres' read-committed behaviour for UPDATE/DELETE) and deadlocks are detected (40P01).

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::datum::Datum;
use crate::error::DbResult;
use crate::schema::{ShardIndex, TableDef, TableId};

pub type TxnId = u64;

/// Transaction ids carry their coordinator's node id (1..MAX_COORDINATORS) in their low bits,
/// `id % MAX_COORDINATORS`: coordinators sharing workers never hand out the same id, and each
/// ends and resolves only its own transactions after a restart.
pub const MAX_COORDINATORS: u64 = 1024;

/// A stream of record batches (a scan's output).
pub type BatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = DbResult<RecordBatch>> + Send + 'static>>;

/// A full physical row of a table (see [`TableDef::columns`]).
pub type Row = Vec<Datum>;

/// The rows of a record batch that holds a table's physical columns in order, checked
/// against the table (08P01 for a batch of another shape: it came over the wire).
pub fn rows_of_batch(def: &TableDef, batch: &RecordBatch) -> DbResult<Vec<Row>> {
    use crate::error::{DbError, SqlState};
    let bad = |what: String| DbError::new(SqlState::ProtocolViolation, what);
    if batch.num_columns() != def.columns.len() {
        return Err(bad(format!(
            "a loaded batch has {} columns; table {} has {}",
            batch.num_columns(),
            def.id,
            def.columns.len()
        )));
    }
    for (c, a) in def.columns.iter().zip(batch.columns()) {
        if a.data_type() != &c.ty.arrow_type() {
            return Err(bad(format!(
                "a loaded batch has column \"{}\" as {}, not {}",
                c.name,
                a.data_type(),
                c.ty.arrow_type()
            )));
        }
    }
    let types: Vec<_> = def.columns.iter().map(|c| c.ty).collect();
    (0..batch.num_rows())
        .map(|r| {
            batch
                .columns()
                .iter()
                .zip(&types)
                .map(|(a, &ty)| Datum::from_arrow(a.as_ref(), r, ty))
                .collect()
        })
        .collect()
}

/// One buffered write.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum WriteOp {
    /// Insert a new row; fails with 23505 if the key exists.
    Insert { row: Row },
    /// Insert the row unless the key exists; `applied` in the result says which happened.
    InsertIgnore { row: Row },
    /// Replace the row stored under `key` (the key may change: `row`'s key is re-derived).
    Update { old_key: Vec<u8>, row: Row },
    /// Delete the row stored under `key`.
    Delete { key: Vec<u8> },
}

/// The writes of one statement to one table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WriteRequest {
    pub table: TableId,
    pub ops: Vec<WriteOp>,
    /// The longest a write may wait for one row lock (`lock_timeout`); past it the write
    /// fails with 55P03. `None`: wait as long as it takes (deadlocks are still detected).
    pub lock_timeout: Option<std::time::Duration>,
}

impl WriteRequest {
    /// Inserts of full physical rows, waiting for row locks as long as it takes (a bulk load
    /// sent as ordinary writes).
    pub fn inserts(table: TableId, rows: Vec<Row>) -> WriteRequest {
        WriteRequest {
            table,
            ops: rows
                .into_iter()
                .map(|row| WriteOp::Insert { row })
                .collect(),
            lock_timeout: None,
        }
    }
}

/// Per op: whether it took effect (an `InsertIgnore` that found the key reports `false`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WriteResponse {
    pub applied: Vec<bool>,
}

/// A scan of some shards of one table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScanRequest {
    pub table: TableId,
    pub shards: Vec<ShardIndex>,
    /// Physical column indexes to return, in this order.
    pub projection: Vec<usize>,
    /// Optional exact primary-key lookups instead of full shard scans (encoded keys).
    pub keys: Option<Vec<Vec<u8>>>,
    pub batch_rows: usize,
    /// Stop after this many rows (a pushed-down LIMIT). Counts the scanned rows, before any
    /// fragment.
    pub limit: Option<usize>,
    /// A plan fragment to run over the scanned rows on the worker (filters, projections,
    /// partial aggregates; see `orochi_worker::fragment`): the stream returned is the
    /// fragment's output, not the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<Vec<u8>>,
    /// Further tables the fragment reads, over the same shards (a join of co-located tables:
    /// shard *i* of each lives on the same worker). Input 0 is this request's table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_inputs: Vec<ScanInput>,
}

/// A table a plan fragment reads besides the scan's own (see [`ScanRequest::more_inputs`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanInput {
    pub table: TableId,
    /// Physical column indexes to return, in this order.
    pub projection: Vec<usize>,
}

impl ScanRequest {
    /// A scan of every shard of `table` returning the physical columns in `projection`.
    pub fn full(table: &TableDef, projection: Vec<usize>, batch_rows: usize) -> ScanRequest {
        ScanRequest {
            table: table.id,
            shards: (0..table.shard_count).collect(),
            projection,
            keys: None,
            batch_rows,
            limit: None,
            fragment: None,
            more_inputs: Vec::new(),
        }
    }
}

/// What one shard holds, per storage tier (`orochi_shard_distribution()`,
/// `orochi_storage_stats()`, `orochi_compression_stats()`, relation sizes).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardStats {
    pub shard: ShardIndex,
    /// Live rows, wherever they are.
    pub rows: u64,
    /// Row store: live rows in it, and the bytes of its entries (keys, rows, tombstones).
    pub row_store_rows: u64,
    pub row_store_bytes: u64,
    /// Columnar segments: how many, the rows they hold (hidden ones too), their files' bytes
    /// (LZ4-compressed) and their data's bytes decoded.
    pub segments: u64,
    pub segment_rows: u64,
    pub segment_file_bytes: u64,
    pub segment_raw_bytes: u64,
}

impl ShardStats {
    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.row_store_bytes + self.segment_file_bytes
    }
}

/// One shard owner as the coordinator sees it (`orochi_cluster_status()`).
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// `host:port` of a worker daemon; `embedded` for standalone's in-process worker.
    pub address: String,
    pub up: bool,
    /// When it last answered (microseconds since the Unix epoch); `None`: never.
    pub last_contact_micros: Option<i64>,
}

#[async_trait]
pub trait ShardService: Send + Sync + std::fmt::Debug {
    /// Creates (or re-defines, after ALTER TABLE) a table's shards owned by this worker.
    async fn create_table(&self, table: &TableDef) -> DbResult<()>;
    /// Replaces the definition used to decode rows (after ADD/DROP COLUMN).
    async fn alter_table(&self, table: &TableDef) -> DbResult<()>;
    /// Drops every shard of a table and its data.
    async fn drop_table(&self, table: TableId) -> DbResult<()>;
    /// Removes all rows of a table (TRUNCATE). Durable on return.
    async fn truncate(&self, table: TableId) -> DbResult<()>;

    /// Stops writes to a table (they fail with 55006) and waits until no open or prepared
    /// transaction has written to it, so its committed rows are all it has and stay so: what
    /// a table rewrite needs. Fails with 55P03, the table writable again, if one still has
    /// after `timeout`.
    async fn freeze_table(&self, table: TableId, timeout: std::time::Duration) -> DbResult<()>;
    /// Makes a frozen table writable again (a rewrite that failed).
    async fn unfreeze_table(&self, table: TableId) -> DbResult<()>;

    /// Reads rows by primary key under `txn` (sees the transaction's own writes).
    /// With `lock`, each key is locked for `txn` first, so the row returned is the latest
    /// committed version and no other transaction can change it until `txn` ends; a lock
    /// wait longer than `lock_timeout` fails with 55P03.
    async fn get(
        &self,
        txn: TxnId,
        table: TableId,
        keys: &[Vec<u8>],
        lock: bool,
        lock_timeout: Option<std::time::Duration>,
    ) -> DbResult<Vec<Option<Row>>>;

    /// Scans shards under `txn`, streaming Arrow batches of the projected columns. The stream
    /// is bounded: the worker produces at most a couple of batches ahead of the consumer.
    async fn scan(&self, txn: TxnId, req: ScanRequest) -> DbResult<BatchStream>;

    /// Buffers writes in `txn`, locking each key. Uniqueness is checked against committed
    /// data and the transaction's own writes.
    async fn write(&self, txn: TxnId, req: WriteRequest) -> DbResult<WriteResponse>;

    /// Bulk-loads full physical rows into `txn` (COPY). Rows are buffered as Arrow columns and
    /// become columnar segments of their shards at commit, without row locks or write-set
    /// entries. Keys are checked for uniqueness when the segments register, at commit (23505
    /// then), against committed data and the rest of the load.
    async fn load(&self, txn: TxnId, table: TableId, rows: Vec<Row>) -> DbResult<()>;

    /// [`ShardService::load`] of a record batch of the table's physical columns, in order
    /// (what a worker receives over Flight `DoPut`; see [`rows_of_batch`]).
    async fn load_batch(&self, txn: TxnId, table: TableId, batch: RecordBatch) -> DbResult<()>;

    /// Applies the transaction's writes atomically; durable when this returns.
    async fn commit(&self, txn: TxnId) -> DbResult<()>;
    /// Discards the transaction's writes and releases its locks.
    async fn abort(&self, txn: TxnId);

    /// Two-phase commit, phase one: makes `txn`'s writes durable without applying them and
    /// keeps its row locks. The transaction then waits for [`ShardService::commit_prepared`]
    /// or [`ShardService::abort_prepared`], across a restart of the worker if need be.
    async fn prepare(&self, txn: TxnId) -> DbResult<()>;
    /// Phase two: applies a prepared transaction (durable on return). Idempotent: a
    /// transaction this worker does not know (already resolved) is not an error.
    async fn commit_prepared(&self, txn: TxnId) -> DbResult<()>;
    /// Phase two, the other way: discards a prepared transaction. Idempotent.
    async fn abort_prepared(&self, txn: TxnId) -> DbResult<()>;
    /// The prepared transactions awaiting a decision.
    async fn prepared(&self) -> DbResult<Vec<TxnId>>;
    /// Ends every open transaction of `below`'s coordinator (same id modulo
    /// [`MAX_COORDINATORS`]) with an id below `below` that is not prepared, releasing its
    /// locks (that coordinator restarted). Returns how many there were.
    async fn abort_open(&self, below: TxnId) -> DbResult<usize>;

    /// Marks the current end of `txn`'s write set; [`ShardService::rollback_to`] undoes later
    /// writes (statement atomicity inside a transaction block, savepoints).
    async fn savepoint(&self, txn: TxnId) -> DbResult<u64>;
    async fn rollback_to(&self, txn: TxnId, savepoint: u64) -> DbResult<()>;

    /// What each shard of a table holds.
    async fn shard_stats(&self, table: TableId) -> DbResult<Vec<ShardStats>>;

    /// The shard owners, checked now (a worker that does not answer within a second is down).
    async fn nodes(&self) -> Vec<NodeStatus>;
    /// Which of [`ShardService::nodes`] owns shard `shard` of `table` (the one reads go to,
    /// for a reference table).
    fn owner_of(&self, table: &TableDef, shard: ShardIndex) -> usize;
    /// What a table created now is placed over ([`TableDef::workers`]): the number of
    /// workers, 0 in standalone.
    fn placement_width(&self) -> u32;
    /// The address of node `node` of [`ShardService::nodes`], as `nodes` reports it.
    fn node_address(&self, node: usize) -> String;
}
