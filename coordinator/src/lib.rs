//! The OrochiDB coordinator: speaks the Postgres protocol, plans with DataFusion, routes row
//! operations and scans to the shards' owner through [`orochi_common::service::ShardService`].
//!
//! - [`pgwire`]: protocol front end (accept loop, handlers, encoding, parsing, errors).
//! - [`session`]: per-connection state and the single `match` over statement kinds.
//! - [`handler`]: one module per statement kind (query, dml, ddl, copy, explain, utility).
//! - [`planner`]: DataFusion's SQL planner wired to our catalog.
//! - [`provider`]: DataFusion catalog/table providers over our catalog.
//! - [`exec`]: our physical operators ([`exec::shard_scan::ShardScanExec`]).
//! - [`checked`]: integer arithmetic that fails on overflow (an analyzer rule).
//! - [`functions`]: session information functions (`version()`, `current_schema()`, …).
//! - [`pgtypes`]: built-in type identities, `format_type`, `regtype`/`regclass`.
//! - [`catalog`]: schemas, tables, sequences, roles and ACLs (persisted).
//! - [`privilege`]: roles, ACLs and privilege checks, SCRAM verifiers.
//! - [`config`]: the coordinator options (`CoordinatorOptions`).
//! - [`error`]: DataFusion ↔ SQLSTATE error mapping.
//! - [`system`]: `pg_catalog` tables built from the catalog.
//! - [`standalone`]: starting a coordinator: with an embedded worker, or with worker daemons.
//! - [`cluster`]: the shard service over worker daemons (Flight client, routing, 2PC).

pub mod catalog;
pub mod checked;
pub mod cluster;
pub mod config;
pub mod error;
pub mod exec;
pub mod functions;
pub mod handler;
pub mod infoschema;
pub mod pgtypes;
pub mod pgwire;
pub mod planner;
pub mod privilege;
pub mod procs;
pub mod provider;
pub mod raft;
pub mod registry;
pub mod session;
pub mod settings;
pub mod standalone;
pub mod subquery;
pub mod system;
