//! The worker protocol: what travels between a coordinator and a worker daemon over Arrow
//! Flight. Every [`ShardService`](crate::service::ShardService) call except `scan` and
//! `load` is a Flight `DoAction` whose body is a JSON [`Call`] and whose one result is a JSON
//! [`Reply`]; a scan is a `DoGet` whose ticket is a JSON [`ScanTicket`] and whose answer is the
//! Arrow IPC stream of the batches; a bulk load (COPY) is a `DoPut` whose descriptor's command
//! is a JSON [`LoadTicket`] and whose data is Arrow IPC batches of the table's physical
//! columns, answered by one `PutResult` whose metadata is a JSON [`Reply::Done`]. Errors travel as a gRPC status whose message is a JSON [`WireError`], so the
//! SQLSTATE a worker chose reaches the client unchanged.
//!
//! JSON keeps the protocol readable and versionable while it settles; rows are small in row
//! operations, and bulk data (scans and loads) is Arrow IPC already.

use serde::{Deserialize, Serialize};

use crate::error::{DbError, SqlState};
use crate::schema::{TableDef, TableId};
use crate::service::{Row, ScanRequest, TxnId, WriteRequest, WriteResponse};

/// Bumped on any incompatible change; a coordinator refuses a worker that speaks another one.
pub const PROTOCOL_VERSION: u32 = 2;

/// The `DoAction` type every call uses.
pub const ACTION: &str = "orochi.call";

/// Response metadata with the worker's boot id: a random number drawn when the worker starts.
/// A coordinator that sees it change during a transaction knows the worker lost that
/// transaction's writes.
pub const BOOT_HEADER: &str = "x-orochi-boot";

/// One call to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Call {
    /// Who are you: the worker answers [`Reply::Hello`].
    Hello,
    CreateTable {
        table: TableDef,
    },
    AlterTable {
        table: TableDef,
    },
    DropTable {
        table: TableId,
    },
    Truncate {
        table: TableId,
    },
    FreezeTable {
        table: TableId,
        timeout_ms: u64,
    },
    UnfreezeTable {
        table: TableId,
    },
    Get {
        txn: TxnId,
        table: TableId,
        keys: Vec<Vec<u8>>,
        lock: bool,
        lock_timeout_ms: Option<u64>,
    },
    Write {
        txn: TxnId,
        req: WriteRequest,
    },
    Commit {
        txn: TxnId,
    },
    Abort {
        txn: TxnId,
    },
    Savepoint {
        txn: TxnId,
    },
    RollbackTo {
        txn: TxnId,
        savepoint: u64,
    },
    ShardStats {
        table: TableId,
    },
    /// Two-phase commit, phase one: make the write set durable and keep its locks.
    Prepare {
        txn: TxnId,
    },
    /// Phase two of a prepared transaction.
    CommitPrepared {
        txn: TxnId,
    },
    AbortPrepared {
        txn: TxnId,
    },
    /// The prepared transactions awaiting a decision (after a restart: in doubt).
    ListPrepared,
    /// Ends every open transaction below `below` that is not prepared: the (one) coordinator
    /// restarted, so the sessions they belonged to are gone, and their row locks must go too.
    /// Transaction ids grow across coordinator restarts (they start at the start time in
    /// µs), so the new process's own transactions, at or above `below`, are left alone.
    AbortOpen {
        below: TxnId,
    },
}

/// A worker's answer to a [`Call`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Hello { protocol: u32, version: String },
    Done,
    Rows(Vec<Option<Row>>),
    Written(WriteResponse),
    Savepoint(u64),
    Stats(Vec<crate::service::ShardStats>),
    Prepared(Vec<TxnId>),
}

/// Actions a worker sends the coordinator's cluster listener (`--cluster-listen`), each with a
/// JSON [`Registration`] body and a JSON [`Registered`] answer: joining the cluster (idempotent:
/// a restarted worker registers again) and, every second after, a heartbeat. A heartbeat from
/// a worker the coordinator does not know fails with NOT_FOUND: the worker registers again.
pub const REGISTER_ACTION: &str = "orochi.register";
pub const HEARTBEAT_ACTION: &str = "orochi.heartbeat";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    /// The worker's Flight address as the coordinator should dial it.
    pub address: String,
    pub protocol: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The worker's place in the cluster's worker list.
    pub node: usize,
}

/// The ticket of a scan (`DoGet`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanTicket {
    pub txn: TxnId,
    pub req: ScanRequest,
}

/// The descriptor command of a bulk load (`DoPut`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadTicket {
    pub txn: TxnId,
    pub table: TableId,
}

/// A [`DbError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub context: Option<String>,
}

impl From<&DbError> for WireError {
    fn from(e: &DbError) -> Self {
        WireError {
            sqlstate: e.state.code().to_string(),
            message: e.message.clone(),
            detail: e.detail.clone(),
            context: e.context.clone(),
        }
    }
}

impl From<WireError> for DbError {
    fn from(w: WireError) -> Self {
        DbError {
            state: SqlState::from_code(&w.sqlstate).unwrap_or(SqlState::InternalError),
            message: w.message,
            detail: w.detail,
            context: w.context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_sqlstate_across_the_wire() {
        let e = DbError::new(SqlState::UniqueViolation, "duplicate key").with_detail("Key (k)=(1)");
        let json = serde_json::to_string(&WireError::from(&e)).unwrap();
        let back: DbError = serde_json::from_str::<WireError>(&json).unwrap().into();
        assert_eq!(back, e);
    }
}
