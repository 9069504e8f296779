//! Cluster mode: the shard service is a set of worker daemons reached over Arrow Flight.
//!
//! - [`RemoteWorker`]: one worker, a [`ShardService`] call per Flight request (protocol:
//!   [`orochi_common::rpc`]).
//! - [`ClusterShardService`]: the [`ShardService`] the rest of the coordinator sees. It places
//!   shard *i* of every table on worker *i mod N* (so co-located tables keep shard *i*
//!   together), routes row operations by the key's shard, splits scans per worker, and commits
//!   a transaction that wrote on several workers with two-phase commit: every participant
//!   prepares (its write set durable, its locks kept), the commit decision is made durable in
//!   the catalog, then each applies. A coordinator restart resolves what a crash left prepared
//!   ([`ClusterShardService::recover`]): commit where a decision exists, abort otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow_flight::Action;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::keycodec;
use orochi_common::rpc::{
    ACTION, BOOT_HEADER, Call, LoadTicket, PROTOCOL_VERSION, Reply, ScanTicket, WireError,
};
use orochi_common::schema::{ShardIndex, TableDef, TableId};
use orochi_common::service::{
    BatchStream, NodeStatus, Row, ScanRequest, ShardService, ShardStats, TxnId, WriteOp,
    WriteRequest, WriteResponse,
};
use orochi_common::types::SqlType;
use parking_lot::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};

use crate::catalog::Catalog;

/// How long connecting to a worker may take before its statements fail.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings find a dead worker under an idle or blocked stream.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// One worker daemon.
#[derive(Clone)]
pub struct RemoteWorker {
    pub address: String,
    client: FlightServiceClient<Channel>,
    /// When the worker last answered a call (µs since the epoch; 0: never).
    last_contact: Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for RemoteWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWorker")
            .field("address", &self.address)
            .finish()
    }
}

impl RemoteWorker {
    /// A handle that connects on first use (and reconnects after the worker restarts).
    pub fn new(address: &str) -> DbResult<RemoteWorker> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                DbError::new(
                    SqlState::InvalidParameterValue,
                    format!("invalid worker address \"{address}\": {e}"),
                )
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        let client = FlightServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Ok(RemoteWorker {
            address: address.to_string(),
            client,
            last_contact: Default::default(),
        })
    }

    /// The error a failed request stands for: the worker's own (with its SQLSTATE), or a
    /// connection failure naming the worker.
    fn error(&self, status: &tonic::Status) -> DbError {
        if let Ok(w) = serde_json::from_str::<WireError>(status.message()) {
            return w.into();
        }
        DbError::new(
            SqlState::ConnectionFailure,
            format!(
                "worker {} is unavailable: {}",
                self.address,
                status.message()
            ),
        )
    }

    pub async fn call(&self, call: &Call) -> DbResult<Reply> {
        self.call_with_boot(call).await.map(|(r, _)| r)
    }

    /// A call, and the worker's boot id (it changes when the worker restarts, which loses
    /// the write sets of its open transactions).
    pub async fn call_with_boot(&self, call: &Call) -> DbResult<(Reply, Option<u64>)> {
        let body = serde_json::to_vec(call)
            .map_err(|e| DbError::internal(format!("encoding a worker call: {e}")))?;
        let action = Action {
            r#type: ACTION.into(),
            body: body.into(),
        };
        let mut client = self.client.clone();
        let response = client.do_action(action).await.map_err(|s| self.error(&s))?;
        let (result, boot) = self.first_answer(response).await?;
        let reply = serde_json::from_slice(&result.body).map_err(|e| {
            DbError::new(
                SqlState::ProtocolViolation,
                format!("worker {} sent a malformed reply: {e}", self.address),
            )
        })?;
        Ok((reply, boot))
    }

    pub async fn scan(&self, txn: TxnId, req: ScanRequest) -> DbResult<BatchStream> {
        let ticket = serde_json::to_vec(&ScanTicket { txn, req })
            .map_err(|e| DbError::internal(format!("encoding a scan: {e}")))?;
        let mut client = self.client.clone();
        let data = client
            .do_get(arrow_flight::Ticket {
                ticket: ticket.into(),
            })
            .await
            .map_err(|s| self.error(&s))?
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let me = self.clone();
        let batches =
            FlightRecordBatchStream::new_from_flight_data(data).map_err(move |e| match e {
                FlightError::Tonic(s) => me.error(&s),
                other => DbError::new(
                    SqlState::ProtocolViolation,
                    format!("worker {}: {other}", me.address),
                ),
            });
        Ok(Box::pin(batches))
    }

    /// Bulk-loads `batch` (the table's physical columns) into `txn` on this worker (Flight
    /// `DoPut`); returns the worker's boot id.
    pub async fn load(
        &self,
        txn: TxnId,
        table: TableId,
        batch: arrow::record_batch::RecordBatch,
    ) -> DbResult<Option<u64>> {
        let ticket = serde_json::to_vec(&LoadTicket { txn, table })
            .map_err(|e| DbError::internal(format!("encoding a load: {e}")))?;
        let data: Vec<arrow_flight::FlightData> =
            arrow_flight::encode::FlightDataEncoderBuilder::new()
                .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_cmd(ticket)))
                .build(futures::stream::once(async { Ok(batch) }))
                .try_collect()
                .await
                .map_err(|e| DbError::internal(format!("encoding a load: {e}")))?;
        let mut client = self.client.clone();
        let response = client
            .do_put(futures::stream::iter(data))
            .await
            .map_err(|s| self.error(&s))?;
        let (result, boot) = self.first_answer(response).await?;
        match serde_json::from_slice(&result.app_metadata) {
            Ok(Reply::Done) => Ok(boot),
            Ok(other) => Err(unexpected(&self.address, &other)),
            Err(e) => Err(DbError::new(
                SqlState::ProtocolViolation,
                format!(
                    "worker {} sent a malformed answer to a load: {e}",
                    self.address
                ),
            )),
        }
    }

    /// The first message of an answer, and the worker's boot id from its metadata.
    async fn first_answer<T>(
        &self,
        response: tonic::Response<tonic::Streaming<T>>,
    ) -> DbResult<(T, Option<u64>)> {
        let boot = response
            .metadata()
            .get(BOOT_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let first = response
            .into_inner()
            .message()
            .await
            .map_err(|s| self.error(&s))?
            .ok_or_else(|| {
                DbError::new(
                    SqlState::ProtocolViolation,
                    format!("worker {} sent no answer", self.address),
                )
            })?;
        self.touch();
        Ok((first, boot))
    }

    fn touch(&self) {
        self.last_contact.store(
            chrono::Utc::now().timestamp_micros(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// When the worker last answered.
    pub fn last_contact_micros(&self) -> Option<i64> {
        Some(self.last_contact.load(std::sync::atomic::Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Checks the worker answers and speaks our protocol.
    pub async fn hello(&self) -> DbResult<String> {
        match self.call(&Call::Hello).await? {
            Reply::Hello { protocol, version } if protocol == PROTOCOL_VERSION => Ok(version),
            Reply::Hello { protocol, .. } => Err(DbError::new(
                SqlState::ConnectionFailure,
                format!(
                    "worker {} speaks protocol {protocol}, this coordinator {PROTOCOL_VERSION}",
                    self.address
                ),
            )),
            other => Err(unexpected(&self.address, &other)),
        }
    }
}

/// Fails if a participant's boot id changed since the transaction first reached it.
fn same_boot(address: &str, seen: Option<u64>, boot: Option<u64>) -> DbResult<()> {
    match (seen, boot) {
        (Some(a), Some(b)) if a != b => Err(DbError::new(
            SqlState::SerializationFailure,
            format!(
                "worker {address} restarted during this transaction and lost its writes there; \
                 the transaction was rolled back"
            ),
        )),
        _ => Ok(()),
    }
}

fn unexpected(address: &str, reply: &Reply) -> DbError {
    DbError::new(
        SqlState::ProtocolViolation,
        format!("worker {address} sent an unexpected reply: {reply:?}"),
    )
}

fn expect_done(address: &str, reply: Reply) -> DbResult<()> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(unexpected(address, &other)),
    }
}

/// A table's definition with what routing a key needs.
struct Routed {
    def: Arc<TableDef>,
    key_types: Vec<SqlType>,
}

pub struct ClusterShardService {
    /// The workers, in the order the catalog records them; a worker that registers itself
    /// is appended (the list never shrinks or reorders: placements index it).
    workers: RwLock<Arc<Vec<RemoteWorker>>>,
    catalog: Arc<Catalog>,
    tables: RwLock<HashMap<TableId, Arc<Routed>>>,
    /// Per open transaction, the workers holding state for it (writes, locks, savepoints),
    /// with the boot id each had when the transaction first reached it.
    participants: Mutex<HashMap<TxnId, BTreeMap<usize, Option<u64>>>>,
    /// Per open transaction, its savepoints: each worker's mark, by savepoint id.
    savepoints: Mutex<HashMap<TxnId, Vec<Vec<u64>>>>,
    /// Serializes worker registrations.
    registering: tokio::sync::Mutex<()>,
    /// The catalog version the worker list was last compared with.
    seen_version: std::sync::atomic::AtomicU64,
    /// When this process started (µs since the epoch): every transaction id it hands out is
    /// above it, every one of its predecessors' below (see `Call::AbortOpen`).
    started: TxnId,
    /// Committed transactions every participant applied: their decisions are forgotten in
    /// the next batch.
    applied: Mutex<Vec<TxnId>>,
}

/// How often a coordinator of a group looks for transactions a dead coordinator left
/// prepared, and how long one must be in doubt before it is decided.
const ORPHAN_CHECK_SECONDS: u64 = 2;
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// A failure injected for tests: `OROCHI_FAILPOINT=<name>`.
fn failpoint(name: &str) -> bool {
    static SET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SET.get_or_init(|| std::env::var("OROCHI_FAILPOINT").ok())
        .as_deref()
        == Some(name)
}

impl std::fmt::Debug for ClusterShardService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterShardService")
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

impl ClusterShardService {
    /// `node`: this coordinator's Raft node id, the low bits of its transaction ids.
    pub fn new(workers: Vec<RemoteWorker>, catalog: Arc<Catalog>, node: u64) -> Self {
        let svc = ClusterShardService {
            workers: RwLock::new(Arc::new(workers)),
            catalog: catalog.clone(),
            tables: RwLock::new(HashMap::new()),
            participants: Mutex::new(HashMap::new()),
            savepoints: Mutex::new(HashMap::new()),
            registering: tokio::sync::Mutex::new(()),
            seen_version: Default::default(),
            started: crate::session::txn_id_floor(node),
            applied: Mutex::new(Vec::new()),
        };
        let count = svc.workers().len() as u32;
        for def in catalog.all_tables() {
            let mut def = (*def).clone();
            // placed before placements were recorded: over the whole (then fixed) list
            if def.workers == 0 && count > 0 {
                def.workers = count;
                if let Err(e) = catalog.put_table(def.clone()) {
                    tracing::warn!(table = %def.qualified_name(), error = %e.message, "recording a placement");
                }
            }
            svc.remember(&def);
        }
        svc
    }

    /// A worker joins (or, restarted, re-joins) the cluster: it answers `Hello` and gets the
    /// definitions of the existing tables (it owns none of their shards: they stay where they
    /// were placed); tables created from now on are placed over it too. Its place in the list
    /// is recorded in the catalog before it is used.
    pub async fn register(&self, address: &str) -> DbResult<usize> {
        let _one_at_a_time = self.registering.lock().await;
        if let Some(i) = self.workers().iter().position(|w| w.address == address) {
            self.workers()[i].touch();
            return Ok(i);
        }
        let worker = RemoteWorker::new(address)?;
        worker.hello().await?;
        for def in self.catalog.all_tables() {
            expect_done(
                address,
                worker
                    .call(&Call::CreateTable {
                        table: (*def).clone(),
                    })
                    .await?,
            )?;
        }
        // one order for every coordinator: the log's
        let node = self.catalog.append_worker(address)?;
        self.sync_workers();
        tracing::info!(worker = %address, node, "worker registered");
        Ok(node)
    }

    /// A registered worker's heartbeat; `None` if the coordinator does not know it.
    pub fn heartbeat(&self, address: &str) -> Option<usize> {
        let workers = self.workers();
        let i = workers.iter().position(|w| w.address == address)?;
        workers[i].touch();
        Some(i)
    }

    /// The workers now (with those that registered through another coordinator since).
    fn workers(&self) -> Arc<Vec<RemoteWorker>> {
        if self.catalog.version() != self.seen_version.load(Ordering::Acquire) {
            self.sync_workers();
        }
        self.workers.read().clone()
    }

    /// Appends the workers the catalog lists beyond those known here (the list only grows).
    fn sync_workers(&self) {
        let version = self.catalog.version();
        let Ok(Some(recorded)) = self.catalog.workers() else {
            self.seen_version.store(version, Ordering::Release);
            return;
        };
        let mut workers = self.workers.write();
        if recorded.len() > workers.len()
            && recorded[..workers.len()]
                .iter()
                .eq(workers.iter().map(|w| &w.address))
        {
            let mut list = workers.as_ref().clone();
            for address in &recorded[list.len()..] {
                match RemoteWorker::new(address) {
                    Ok(w) => {
                        tracing::info!(worker = %address, "a worker registered through another coordinator");
                        list.push(w);
                    }
                    Err(e) => {
                        tracing::error!(worker = %address, error = %e.message, "a recorded worker");
                        return;
                    }
                }
            }
            *workers = Arc::new(list);
        }
        self.seen_version.store(version, Ordering::Release);
    }

    /// The worker that owns shard `shard` of table `def`: shards are placed round-robin over
    /// the first `def.workers` workers (the workers there were when it was placed).
    pub fn owner(&self, def: &TableDef, shard: ShardIndex) -> usize {
        if def.reference {
            return 0;
        }
        let width = if def.workers == 0 {
            self.workers().len()
        } else {
            def.workers as usize
        };
        shard as usize % width.max(1)
    }

    fn remember(&self, def: &TableDef) {
        self.tables.write().insert(
            def.id,
            Arc::new(Routed {
                def: Arc::new(def.clone()),
                key_types: def.key_types(),
            }),
        );
    }

    fn routed(&self, table: TableId) -> DbResult<Arc<Routed>> {
        if let Some(r) = self.tables.read().get(&table) {
            return Ok(r.clone());
        }
        // created through another coordinator: its definition came through the catalog
        let def = self.catalog.table_by_id(table).ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedTable,
                format!("table {table} does not exist"),
            )
        })?;
        self.remember(&def);
        self.routed(table)
    }

    fn shard_of_key(r: &Routed, key: &[u8]) -> DbResult<ShardIndex> {
        let values = keycodec::decode_key(&r.key_types, key)?;
        Ok(r.def
            .shard_of_value(&values[r.def.distribution_key_position()]))
    }

    /// How many workers hold a copy of reference table `def`: the workers there were when it
    /// was placed (a worker that registered later has its definition, not its rows).
    fn copies(&self, def: &TableDef) -> usize {
        let n = self.workers().len();
        if def.workers == 0 {
            n
        } else {
            (def.workers as usize).min(n)
        }
    }

    /// A read of a reference table from the first copy that answers (a dead worker fails with
    /// 08006 within the connect timeout; the next copy serves). Reads and locks otherwise go
    /// to the first copy, where writers of a row queue too (writes reach the copies in order).
    async fn first_copy<T, F, Fut>(&self, def: &TableDef, read: F) -> DbResult<T>
    where
        F: Fn(RemoteWorker) -> Fut,
        Fut: std::future::Future<Output = DbResult<T>>,
    {
        let mut last = None;
        for w in self.workers().iter().take(self.copies(def)) {
            match read(w.clone()).await {
                Err(e) if e.state == SqlState::ConnectionFailure => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| DbError::internal("no workers")))
    }

    /// A write to a reference table: the same ops on every copy, in worker order, all in
    /// `txn` (so its commit is two-phase, and every copy or none has it).
    async fn write_every_copy(
        &self,
        def: &TableDef,
        txn: TxnId,
        req: WriteRequest,
    ) -> DbResult<WriteResponse> {
        let mut first = None;
        for w in 0..self.copies(def) {
            let call = Call::Write {
                txn,
                req: req.clone(),
            };
            let reply = self.txn_call(txn, w, &call).await?;
            let Reply::Written(resp) = reply else {
                return Err(unexpected(&self.workers()[w].address, &reply));
            };
            match &first {
                None => first = Some(resp),
                Some(f) if f.applied != resp.applied => {
                    return Err(DbError::internal(format!(
                        "the copies of reference table {} disagree on worker {}",
                        req.table,
                        self.workers()[w].address
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(first.unwrap_or_default())
    }

    /// A call that creates or uses `txn`'s state on worker `w`. A worker that restarted since
    /// the transaction first reached it lost the transaction's writes there: the call fails
    /// (and the session rolls the transaction back) instead of committing what is left.
    async fn txn_call(&self, txn: TxnId, w: usize, call: &Call) -> DbResult<Reply> {
        self.joins(txn, w);
        let (reply, boot) = self.workers()[w].call_with_boot(call).await?;
        self.answered(txn, w, boot)?;
        Ok(reply)
    }

    /// Records worker `w` as a participant of `txn` (before the call that creates its
    /// state there).
    fn joins(&self, txn: TxnId, w: usize) {
        self.participants
            .lock()
            .entry(txn)
            .or_default()
            .entry(w)
            .or_insert(None);
    }

    /// Checks the boot id a participant answered with against the one it had when the
    /// transaction first reached it.
    fn answered(&self, txn: TxnId, w: usize, boot: Option<u64>) -> DbResult<()> {
        let mut participants = self.participants.lock();
        if let Some(seen) = participants.get_mut(&txn).and_then(|m| m.get_mut(&w)) {
            same_boot(&self.workers()[w].address, *seen, boot)?;
            if seen.is_none() {
                *seen = boot;
            }
        }
        Ok(())
    }

    /// A load's rows for worker `w`, shipped as one Arrow batch.
    async fn load_on(&self, txn: TxnId, w: usize, def: &TableDef, rows: &[Row]) -> DbResult<()> {
        let all: Vec<usize> = (0..def.columns.len()).collect();
        let mut builder = orochi_worker::batch::BatchBuilder::new(def, &all, rows.len());
        for row in rows {
            builder.push(row.iter())?;
        }
        let batch = builder.finish()?;
        self.joins(txn, w);
        let boot = self.workers()[w].load(txn, def.id, batch).await?;
        self.answered(txn, w, boot)
    }

    /// The same call on every worker, all at once; the first error wins.
    async fn broadcast(&self, call: Call) -> DbResult<()> {
        let workers = self.workers();
        let calls = workers.iter().map(|w| {
            let call = &call;
            async move { expect_done(&w.address, w.call(call).await?) }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .collect::<DbResult<Vec<()>>>()
            .map(|_| ())
    }

    /// Resolves what a crash left prepared on the workers: commit where the catalog holds a
    /// commit decision, abort otherwise. A worker that cannot be reached is retried in the
    /// background until it answers.
    /// Whether `txn` is one of this coordinator's (of this process or an earlier one).
    fn owns(&self, txn: TxnId) -> bool {
        txn % crate::session::MAX_COORDINATORS == self.started % crate::session::MAX_COORDINATORS
    }

    pub async fn recover(self: &Arc<Self>) {
        self.start_background();
        let decisions = self.catalog.decisions();
        let mut all_answered = true;
        for (i, w) in self.workers().iter().enumerate() {
            // the sessions of the previous coordinator process are gone: so are their
            // transactions (prepared ones wait for the decision below)
            let _ = w
                .call(&Call::AbortOpen {
                    below: self.started,
                })
                .await;
            let prepared = match w.call(&Call::ListPrepared).await {
                Ok(Reply::Prepared(p)) => p,
                Ok(other) => {
                    tracing::error!(worker = %w.address, error = %unexpected(&w.address, &other).message, "recovery");
                    all_answered = false;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(worker = %w.address, error = %e.message, "worker unreachable at start; its in-doubt transactions are resolved when it is back");
                    all_answered = false;
                    let me = self.clone();
                    let decisions = decisions.clone();
                    tokio::spawn(async move { me.recover_worker_later(i, decisions).await });
                    continue;
                }
            };
            // another coordinator's transactions are its own to resolve (or, if it is gone,
            // the in-doubt resolver's: see `resolve_orphans`)
            for txn in prepared.into_iter().filter(|t| self.owns(*t)) {
                let Some(commit) = self.decision(&decisions, txn) else {
                    continue;
                };
                tracing::info!(worker = %w.address, txn, commit, "resolving an in-doubt transaction");
                self.resolve(i, txn, commit).await;
            }
        }
        if all_answered {
            let mine: Vec<TxnId> = decisions
                .keys()
                .copied()
                .filter(|t| self.owns(*t))
                .collect();
            if let Err(e) = self.catalog.forget_decisions(&mine) {
                tracing::warn!(error = %e.message, "forgetting resolved decisions");
            }
        }
    }

    /// A prepared transaction's decision: the recorded one, or else abort (recorded first,
    /// so that no other coordinator decides otherwise). `None` if it cannot be recorded now.
    fn decision(&self, known: &BTreeMap<TxnId, bool>, txn: TxnId) -> Option<bool> {
        if let Some(&d) = known.get(&txn) {
            return Some(d);
        }
        match self.catalog.decide(txn, false) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(txn, error = %e.message, "recording an abort decision");
                None
            }
        }
    }

    /// The background work of a cluster coordinator: forgetting applied decisions in
    /// batches, and, in a group of coordinators, resolving what a dead one left in doubt.
    fn start_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut orphans: HashMap<TxnId, std::time::Instant> = HashMap::new();
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = std::mem::take(&mut *me.applied.lock());
                if !done.is_empty() {
                    let catalog = me.catalog.clone();
                    let forgot =
                        tokio::task::spawn_blocking(move || catalog.forget_decisions(&done)).await;
                    if let Ok(Err(e)) = forgot {
                        tracing::warn!(error = %e.message, "forgetting applied decisions");
                    }
                }
                tick += 1;
                if tick.is_multiple_of(ORPHAN_CHECK_SECONDS) && me.catalog.coordinator_count() > 1 {
                    me.resolve_orphans(&mut orphans).await;
                }
            }
        });
    }

    /// Transactions of another coordinator that stay prepared on a worker: once that
    /// coordinator does not answer and they have been in doubt for [`ORPHAN_GRACE`], they are
    /// decided here — abort, unless their own coordinator recorded a decision first — and
    /// finished on the workers, so their row locks do not outlive their coordinator.
    async fn resolve_orphans(&self, seen: &mut HashMap<TxnId, std::time::Instant>) {
        let now = std::time::Instant::now();
        let mut listed = BTreeSet::new();
        for (i, w) in self.workers().iter().enumerate() {
            let Ok(Reply::Prepared(prepared)) = w.call(&Call::ListPrepared).await else {
                continue;
            };
            for txn in prepared.into_iter().filter(|t| !self.owns(*t)) {
                listed.insert(txn);
                let since = *seen.entry(txn).or_insert(now);
                if now.duration_since(since) < ORPHAN_GRACE {
                    continue;
                }
                let owner = txn % crate::session::MAX_COORDINATORS;
                let catalog = self.catalog.clone();
                let alive = tokio::task::spawn_blocking(move || catalog.coordinator_alive(owner))
                    .await
                    .unwrap_or(true);
                if alive {
                    continue;
                }
                let catalog = self.catalog.clone();
                let decided = tokio::task::spawn_blocking(move || catalog.decide(txn, false)).await;
                let Ok(Ok(commit)) = decided else {
                    continue;
                };
                tracing::warn!(worker = %w.address, txn, owner, commit, "resolving a transaction its dead coordinator left in doubt");
                self.resolve(i, txn, commit).await;
            }
        }
        seen.retain(|t, _| listed.contains(t));
    }

    async fn recover_worker_later(
        self: Arc<Self>,
        worker: usize,
        decisions: BTreeMap<TxnId, bool>,
    ) {
        let w = &self.workers()[worker];
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // the old process's transactions only: this one's sessions may already have
            // transactions there (a worker that was down lost the old ones anyway)
            if w.call(&Call::AbortOpen {
                below: self.started,
            })
            .await
            .is_err()
            {
                continue;
            }
            if let Ok(Reply::Prepared(prepared)) = w.call(&Call::ListPrepared).await {
                for txn in prepared.into_iter().filter(|t| self.owns(*t)) {
                    if let Some(commit) = self.decision(&decisions, txn) {
                        self.resolve(worker, txn, commit).await;
                    }
                }
                return;
            }
        }
    }

    /// Phase two on one worker, retried in the background until the worker takes it.
    async fn resolve(&self, worker: usize, txn: TxnId, commit: bool) {
        let call = if commit {
            Call::CommitPrepared { txn }
        } else {
            Call::AbortPrepared { txn }
        };
        let w = self.workers()[worker].clone();
        if let Err(e) = w.call(&call).await {
            tracing::warn!(worker = %w.address, txn, commit, error = %e.message, "phase two failed; retrying in the background");
            tokio::spawn(retry_until_done(w, call));
        }
    }

    /// Two-phase commit over the workers a transaction wrote on (see the module docs).
    async fn commit_two_phase(
        &self,
        txn: TxnId,
        participants: &BTreeMap<usize, Option<u64>>,
    ) -> DbResult<()> {
        let prepares = participants.iter().map(|(&w, &seen)| {
            let worker = self.workers()[w].clone();
            async move {
                let r = worker.call_with_boot(&Call::Prepare { txn }).await;
                let r = r.and_then(|(reply, boot)| {
                    same_boot(&worker.address, seen, boot)?;
                    expect_done(&worker.address, reply)
                });
                (w, r)
            }
        });
        let prepared = futures::future::join_all(prepares).await;
        if let Some(e) = prepared.iter().find_map(|(_, r)| r.as_ref().err()).cloned() {
            for (w, r) in &prepared {
                if r.is_err() {
                    // not prepared there (or the answer was lost): end it either way
                    let _ = self.workers()[*w].call(&Call::Abort { txn }).await;
                }
                self.resolve(*w, txn, false).await;
            }
            return Err(e);
        }
        if failpoint("crash-before-decision") {
            tracing::error!(txn, "failpoint crash-before-decision: aborting the process");
            std::process::abort();
        }
        // the commit point: once this is recorded (replicated), the transaction is committed;
        // unless a coordinator that found it in doubt decided first
        if !self.catalog.decide(txn, true)? {
            for &w in participants.keys() {
                self.resolve(w, txn, false).await;
            }
            return Err(DbError::new(
                SqlState::SerializationFailure,
                "the transaction was in doubt too long and another coordinator aborted it; \
                 it was rolled back",
            ));
        }
        if failpoint("crash-after-decision") {
            tracing::error!(txn, "failpoint crash-after-decision: aborting the process");
            std::process::abort();
        }
        let applies = participants.keys().map(|&w| {
            let worker = self.workers()[w].clone();
            async move { (w, worker.call(&Call::CommitPrepared { txn }).await) }
        });
        let mut pending = false;
        for (w, r) in futures::future::join_all(applies).await {
            if let Err(e) = r {
                let worker = self.workers()[w].clone();
                tracing::warn!(worker = %worker.address, txn, error = %e.message, "phase two failed; retrying in the background");
                tokio::spawn(retry_until_done(worker, Call::CommitPrepared { txn }));
                pending = true;
            }
        }
        if !pending {
            // forgotten in the next batch (a lost removal is harmless: recovery finds nothing
            // prepared for it)
            self.applied.lock().push(txn);
        }
        Ok(())
    }
}

/// Repeats a phase-two call until the worker takes it (it restarts with the transaction still
/// prepared, and the call is idempotent).
async fn retry_until_done(worker: RemoteWorker, call: Call) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::time::sleep(delay).await;
        match worker.call(&call).await {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(worker = %worker.address, error = %e.message, "retrying phase two")
            }
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl ShardService for ClusterShardService {
    async fn create_table(&self, table: &TableDef) -> DbResult<()> {
        if self.workers().is_empty() {
            return Err(DbError::new(
                SqlState::ConnectionFailure,
                "no worker has registered with this coordinator yet",
            ));
        }
        self.broadcast(Call::CreateTable {
            table: table.clone(),
        })
        .await?;
        self.remember(table);
        Ok(())
    }

    async fn alter_table(&self, table: &TableDef) -> DbResult<()> {
        self.broadcast(Call::AlterTable {
            table: table.clone(),
        })
        .await?;
        self.remember(table);
        Ok(())
    }

    async fn drop_table(&self, table: TableId) -> DbResult<()> {
        self.broadcast(Call::DropTable { table }).await?;
        self.tables.write().remove(&table);
        Ok(())
    }

    async fn truncate(&self, table: TableId) -> DbResult<()> {
        self.broadcast(Call::Truncate { table }).await
    }

    async fn freeze_table(&self, table: TableId, timeout: Duration) -> DbResult<()> {
        let frozen = self
            .broadcast(Call::FreezeTable {
                table,
                timeout_ms: timeout.as_millis() as u64,
            })
            .await;
        if frozen.is_err() {
            let _ = self.broadcast(Call::UnfreezeTable { table }).await;
        }
        frozen
    }

    async fn unfreeze_table(&self, table: TableId) -> DbResult<()> {
        self.broadcast(Call::UnfreezeTable { table }).await
    }

    async fn get(
        &self,
        txn: TxnId,
        table: TableId,
        keys: &[Vec<u8>],
        lock: bool,
        lock_timeout: Option<Duration>,
    ) -> DbResult<Vec<Option<Row>>> {
        let r = self.routed(table)?;
        // keys per worker, remembering where each answer goes
        let mut per: HashMap<usize, (Vec<Vec<u8>>, Vec<usize>)> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let w = self.owner(&r.def, Self::shard_of_key(&r, k)?);
            let e = per.entry(w).or_default();
            e.0.push(k.clone());
            e.1.push(i);
        }
        let mut out = vec![None; keys.len()];
        for (w, (keys, slots)) in per {
            let worker = &self.workers()[w];
            let call = Call::Get {
                txn,
                table,
                keys,
                lock,
                lock_timeout_ms: lock_timeout.map(|d| d.as_millis() as u64),
            };
            // a locking read holds state (the locks) on the worker; a plain one may read the
            // transaction's own writes there, so it is checked the same way when it has any
            let holds = lock
                || self
                    .participants
                    .lock()
                    .get(&txn)
                    .is_some_and(|m| m.contains_key(&w));
            let reply = if holds {
                self.txn_call(txn, w, &call).await?
            } else if r.def.reference {
                self.first_copy(&r.def, |w| {
                    let call = call.clone();
                    async move { w.call(&call).await }
                })
                .await?
            } else {
                worker.call(&call).await?
            };
            let Reply::Rows(rows) = reply else {
                return Err(unexpected(&worker.address, &reply));
            };
            if rows.len() != slots.len() {
                return Err(DbError::new(
                    SqlState::ProtocolViolation,
                    format!(
                        "worker {} answered the wrong number of rows",
                        worker.address
                    ),
                ));
            }
            for (row, slot) in rows.into_iter().zip(slots) {
                out[slot] = row;
            }
        }
        Ok(out)
    }

    async fn scan(&self, txn: TxnId, req: ScanRequest) -> DbResult<BatchStream> {
        let r = self.routed(req.table)?;
        let mut per: Vec<ScanRequest> = (0..self.workers().len())
            .map(|_| ScanRequest {
                shards: Vec::new(),
                keys: req.keys.as_ref().map(|_| Vec::new()),
                ..req.clone()
            })
            .collect();
        match &req.keys {
            Some(keys) => {
                for k in keys {
                    let w = self.owner(&r.def, Self::shard_of_key(&r, k)?);
                    per[w].keys.as_mut().expect("set above").push(k.clone());
                }
            }
            None => {
                for &s in &req.shards {
                    per[self.owner(&r.def, s)].shards.push(s);
                }
            }
        }
        let mut streams = Vec::new();
        for (w, sub) in per.into_iter().enumerate() {
            let empty = match &sub.keys {
                Some(k) => k.is_empty(),
                None => sub.shards.is_empty(),
            };
            if empty {
                continue;
            }
            streams.push(if r.def.reference {
                self.first_copy(&r.def, |w| {
                    let sub = sub.clone();
                    async move { w.scan(txn, sub).await }
                })
                .await?
            } else {
                self.workers()[w].scan(txn, sub).await?
            });
        }
        // every worker's scan runs at once; the pushed-down LIMIT holds for the merge
        let merged = futures::stream::select_all(streams);
        let Some(limit) = req.limit else {
            return Ok(Box::pin(merged));
        };
        let limited = merged
            .scan(limit, |left, batch| {
                let out = match batch {
                    Ok(_) if *left == 0 => None,
                    Ok(b) => {
                        let n = b.num_rows().min(*left);
                        *left -= n;
                        Some(Ok(b.slice(0, n)))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed();
        Ok(limited)
    }

    /// A load's rows go to the workers that own their shards (every copy, for a reference
    /// table) as Arrow batches, all workers at once (Flight `DoPut`): there they become
    /// columnar segments when the transaction commits, two-phase if it loaded on several.
    async fn load(&self, txn: TxnId, table: TableId, rows: Vec<Row>) -> DbResult<()> {
        let r = self.routed(table)?;
        let def = &r.def;
        let per: Vec<(usize, Vec<Row>)> = if def.reference {
            (0..self.copies(def)).map(|w| (w, rows.clone())).collect()
        } else {
            let mut per: BTreeMap<usize, Vec<Row>> = BTreeMap::new();
            for row in rows {
                per.entry(self.owner(def, def.shard_of_row(&row)))
                    .or_default()
                    .push(row);
            }
            per.into_iter().collect()
        };
        let loads = per.iter().map(|(w, rows)| self.load_on(txn, *w, def, rows));
        futures::future::join_all(loads)
            .await
            .into_iter()
            .collect::<DbResult<Vec<()>>>()
            .map(|_| ())
    }

    async fn load_batch(
        &self,
        txn: TxnId,
        table: TableId,
        batch: arrow::record_batch::RecordBatch,
    ) -> DbResult<()> {
        let rows = orochi_common::service::rows_of_batch(&self.routed(table)?.def, &batch)?;
        self.load(txn, table, rows).await
    }

    async fn write(&self, txn: TxnId, req: WriteRequest) -> DbResult<WriteResponse> {
        let r = self.routed(req.table)?;
        let def = &r.def;
        if def.reference {
            return self.write_every_copy(&r.def, txn, req).await;
        }
        // ops per worker in statement order; an UPDATE that moves a row to another worker's
        // shard becomes a delete there and an insert here
        let mut per: Vec<(Vec<WriteOp>, Vec<usize>)> = (0..self.workers().len())
            .map(|_| Default::default())
            .collect();
        let n = req.ops.len();
        for (i, op) in req.ops.into_iter().enumerate() {
            match op {
                WriteOp::Update { old_key, row } => {
                    let from = self.owner(def, Self::shard_of_key(&r, &old_key)?);
                    let to = self.owner(def, def.shard_of_row(&row));
                    if from == to {
                        per[to].0.push(WriteOp::Update { old_key, row });
                        per[to].1.push(i);
                    } else {
                        per[from].0.push(WriteOp::Delete { key: old_key });
                        per[from].1.push(usize::MAX);
                        per[to].0.push(WriteOp::Insert { row });
                        per[to].1.push(i);
                    }
                }
                WriteOp::Delete { key } => {
                    let w = self.owner(def, Self::shard_of_key(&r, &key)?);
                    per[w].0.push(WriteOp::Delete { key });
                    per[w].1.push(i);
                }
                WriteOp::Insert { row } => {
                    let w = self.owner(def, def.shard_of_row(&row));
                    per[w].0.push(WriteOp::Insert { row });
                    per[w].1.push(i);
                }
                WriteOp::InsertIgnore { row } => {
                    let w = self.owner(def, def.shard_of_row(&row));
                    per[w].0.push(WriteOp::InsertIgnore { row });
                    per[w].1.push(i);
                }
            }
        }
        let mut applied = vec![true; n];
        for (w, (ops, slots)) in per.into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            let worker = &self.workers()[w];
            let call = Call::Write {
                txn,
                req: WriteRequest {
                    table: req.table,
                    ops,
                    lock_timeout: req.lock_timeout,
                },
            };
            let reply = self.txn_call(txn, w, &call).await?;
            let Reply::Written(resp) = reply else {
                return Err(unexpected(&worker.address, &reply));
            };
            for (ok, slot) in resp.applied.into_iter().zip(slots) {
                if slot != usize::MAX {
                    applied[slot] = ok;
                }
            }
        }
        Ok(WriteResponse { applied })
    }

    async fn commit(&self, txn: TxnId) -> DbResult<()> {
        self.savepoints.lock().remove(&txn);
        let participants: BTreeMap<usize, Option<u64>> =
            self.participants.lock().remove(&txn).unwrap_or_default();
        if participants.len() <= 1 {
            let Some((&w, &seen)) = participants.iter().next() else {
                return Ok(());
            };
            let worker = &self.workers()[w];
            let (reply, boot) = worker.call_with_boot(&Call::Commit { txn }).await?;
            // a restart just before the commit: there was nothing left to commit there
            same_boot(&worker.address, seen, boot)?;
            return expect_done(&worker.address, reply);
        }
        self.commit_two_phase(txn, &participants).await
    }

    async fn abort(&self, txn: TxnId) {
        self.savepoints.lock().remove(&txn);
        let participants = self.participants.lock().remove(&txn).unwrap_or_default();
        let calls = participants.into_keys().map(|w| {
            let worker = self.workers()[w].clone();
            async move {
                if let Err(e) = worker.call(&Call::Abort { txn }).await {
                    // the worker went away: its transactions went with it
                    tracing::warn!(worker = %worker.address, txn, error = %e.message, "abort");
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    async fn prepare(&self, _txn: TxnId) -> DbResult<()> {
        Err(DbError::new(
            SqlState::FeatureNotSupported,
            "PREPARE TRANSACTION is not supported",
        ))
    }

    async fn commit_prepared(&self, _txn: TxnId) -> DbResult<()> {
        Err(DbError::new(
            SqlState::FeatureNotSupported,
            "COMMIT PREPARED is not supported",
        ))
    }

    async fn abort_prepared(&self, _txn: TxnId) -> DbResult<()> {
        Err(DbError::new(
            SqlState::FeatureNotSupported,
            "ROLLBACK PREPARED is not supported",
        ))
    }

    async fn prepared(&self) -> DbResult<Vec<TxnId>> {
        Ok(Vec::new())
    }

    async fn abort_open(&self, below: TxnId) -> DbResult<usize> {
        self.broadcast(Call::AbortOpen { below }).await?;
        Ok(0)
    }

    async fn savepoint(&self, txn: TxnId) -> DbResult<u64> {
        // every worker marks its write set (one that joins later must still roll back), and
        // the coordinator's savepoint id indexes the marks
        let mut marks = Vec::with_capacity(self.workers().len());
        for (w, worker) in self.workers().iter().enumerate() {
            match self.txn_call(txn, w, &Call::Savepoint { txn }).await? {
                Reply::Savepoint(m) => marks.push(m),
                other => return Err(unexpected(&worker.address, &other)),
            }
        }
        let mut saved = self.savepoints.lock();
        let list = saved.entry(txn).or_default();
        list.push(marks);
        Ok(list.len() as u64 - 1)
    }

    async fn rollback_to(&self, txn: TxnId, savepoint: u64) -> DbResult<()> {
        let marks = self
            .savepoints
            .lock()
            .get(&txn)
            .and_then(|l| l.get(savepoint as usize).cloned())
            .ok_or_else(|| {
                DbError::internal(format!(
                    "unknown savepoint {savepoint} of transaction {txn}"
                ))
            })?;
        for (w, mark) in marks.into_iter().enumerate() {
            let call = Call::RollbackTo {
                txn,
                savepoint: mark,
            };
            expect_done(
                &self.workers()[w].address,
                self.txn_call(txn, w, &call).await?,
            )?;
        }
        Ok(())
    }

    async fn nodes(&self) -> Vec<NodeStatus> {
        let workers = self.workers();
        let checks = workers.iter().map(|w| async move {
            let up = matches!(
                tokio::time::timeout(Duration::from_secs(1), w.hello()).await,
                Ok(Ok(_))
            );
            NodeStatus {
                address: w.address.clone(),
                up,
                last_contact_micros: w.last_contact_micros(),
            }
        });
        futures::future::join_all(checks).await
    }

    fn owner_of(&self, table: &TableDef, shard: ShardIndex) -> usize {
        self.owner(table, shard)
    }

    fn placement_width(&self) -> u32 {
        self.workers().len() as u32
    }

    fn node_address(&self, node: usize) -> String {
        self.workers()
            .get(node)
            .map_or_else(|| "unknown".into(), |w| w.address.clone())
    }

    async fn shard_stats(&self, table: TableId) -> DbResult<Vec<ShardStats>> {
        let mut out = Vec::new();
        let r = self.routed(table)?;
        for (w, worker) in self.workers().iter().enumerate() {
            if r.def.reference && w > 0 {
                // every copy is the same: the one reads use is reported
                break;
            }
            match worker.call(&Call::ShardStats { table }).await? {
                Reply::Stats(stats) => out.extend(
                    stats
                        .into_iter()
                        .filter(|s| self.owner(&r.def, s.shard) == w),
                ),
                other => return Err(unexpected(&worker.address, &other)),
            }
        }
        out.sort_by_key(|s| s.shard);
        Ok(out)
    }
}
