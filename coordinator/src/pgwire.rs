//! The Postgres wire protocol front end (on the `pgwire` crate).
//!
//! - [`server`]: accept loop, connection limit, shutdown.
//! - [`auth`]: trust, or SCRAM-SHA-256 when passwords are configured.
//! - [`io`]: write coalescing (one send per round trip).
//! - [`handler`]: pgwire's handler traits, calling only [`crate::session::Session`].
//! - [`encode`]: Arrow batches → DataRow messages (text and binary formats), bound parameters.
//! - [`parse`]: SQL text → sqlparser statements, syntax errors with positions.
//! - [`error`]: the one place that builds pgwire `ErrorInfo`.

pub mod auth;
pub mod encode;
pub mod error;
pub mod handler;
pub mod io;
pub mod parse;
pub mod server;
