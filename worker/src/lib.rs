//! The OrochiDB worker: owns shards and their data.
//!
//! - [`store`]: the row store — one sled tree per shard, keys in memcomparable order, rows in the
//!   versioned row encoding; table definitions persisted beside them so rows decode after restart.
//! - [`segment`]: columnar segments — bulk-loaded rows as sorted, LZ4-compressed Arrow IPC
//!   files under the shard's row store, which overlays them (newer versions, tombstones).
//! - [`load`]: a transaction's bulk loads (COPY), buffered per shard and written as segments.
//! - [`txn`]: per-transaction write sets and the row lock table (with deadlock detection).
//! - [`commit`]: group commit — concurrent commits share one fsync.
//! - [`batch`]: builds Arrow record batches from rows (the scan output format).
//! - [`service`]: [`service::LocalShardService`], the in-process implementation of
//!   [`orochi_common::service::ShardService`] used by standalone mode and the worker daemon.
//! - [`flight`]: the worker daemon's Arrow Flight server (the protocol of `orochi_common::rpc`).
//! - [`daemon`]: what both daemons share: logging, the data-directory lock, the pid file,
//!   shutdown signals.
//!
//! - [`fragment`]: plan fragments (filters, projections, partial aggregates) the coordinator
//!   ships to run over this worker's shards; [`dferror`]: SQLSTATEs for DataFusion errors.
//!
//! Architecture invariant: this crate uses DataFusion's execution engine only to run plan
//! fragments the coordinator planned; it never parses or plans SQL (no sqlparser).

pub mod batch;
pub mod commit;
pub mod daemon;
pub mod dferror;
pub mod flight;
pub mod fragment;
pub mod load;
pub mod segment;
pub mod service;
pub mod store;
pub mod txn;

pub use service::LocalShardService;
