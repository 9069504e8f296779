//! Shared vocabulary of OrochiDB. No server code lives here, and this crate never depends on
//! DataFusion or sqlparser (it must compile fast and be usable by every process).
//!
//! - [`error`]: the [`error::SqlState`] registry — every SQLSTATE the system emits comes from it.
//! - [`types`]: SQL column types ([`types::SqlType`]) and their Arrow / Postgres mappings.
//! - [`datum`]: a single SQL value ([`datum::Datum`]), parsed from and printed as Postgres text.
//! - [`keycodec`]: memcomparable encoding of primary keys (byte order = SQL order).
//! - [`rowcodec`]: compact, versioned row encoding used by the row store.
//! - [`hash`]: the fixed, documented hash that places rows into shard hash ranges.
//! - [`schema`]: table/column definitions shared by the coordinator catalog and workers.
//! - [`service`]: the [`service::ShardService`] trait — the one interface between coordinator and
//!   worker, implemented in-process (standalone) and over Arrow Flight (cluster).
//! - [`rpc`]: the messages of the worker protocol (Flight actions and scan tickets).

pub mod datum;
pub mod error;
pub mod hash;
pub mod interval;
pub mod keycodec;
pub mod rowcodec;
pub mod rpc;
pub mod schema;
pub mod service;
pub mod types;
pub mod zone;
