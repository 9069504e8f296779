//! A client session: transaction state, settings, and [`Session::execute`], which holds the
//! single `match` over statement kinds and dispatches to `handler::*`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionConfig;
use datafusion::sql::sqlparser::ast::{self, ObjectType, Statement};
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::service::{ShardService, TxnId};

use crate::catalog::Catalog;
use crate::config::CoordinatorOptions;
use crate::handler;
use crate::planner::Planner;
use crate::provider::TxnContext;

/// State shared by every session of one coordinator.
pub struct Instance {
    pub catalog: Arc<Catalog>,
    pub service: Arc<dyn ShardService>,
    pub options: Arc<CoordinatorOptions>,
    pub runtime: Arc<RuntimeEnv>,
    /// Server-wide parameter values: `ALTER SYSTEM` as of start or the last `pg_reload_conf()`.
    pub server_settings: crate::settings::ServerValues,
    /// How to cancel the running statement of each connected backend, by pid
    /// (`pg_cancel_backend`).
    backends: parking_lot::Mutex<std::collections::HashMap<i32, Canceller>>,
    next_txn: AtomicU64,
}

/// Cancels whatever statement a backend is running (as a CancelRequest does).
pub type Canceller = Arc<dyn Fn() + Send + Sync>;

pub use orochi_common::service::MAX_COORDINATORS;

/// Where a coordinator process's transaction ids start: the clock in µs since the epoch,
/// times [`MAX_COORDINATORS`], plus the coordinator's node id (ids then step by
/// `MAX_COORDINATORS`). Ids only need to be unique among live transactions, but starting from
/// the clock means a restarted coordinator never reuses an id a worker may still remember,
/// every id of the new process is above every id of the old (what `AbortOpen` relies on),
/// and coordinators sharing workers never collide.
pub fn txn_id_floor(node: u64) -> TxnId {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    micros * MAX_COORDINATORS + node % MAX_COORDINATORS
}

impl Instance {
    pub fn new(
        catalog: Arc<Catalog>,
        service: Arc<dyn ShardService>,
        options: Arc<CoordinatorOptions>,
        runtime: Arc<RuntimeEnv>,
    ) -> Self {
        let start = txn_id_floor(options.node_id);
        Instance {
            catalog,
            service,
            options,
            runtime,
            server_settings: Default::default(),
            backends: Default::default(),
            next_txn: AtomicU64::new(start),
        }
    }

    pub fn register_backend(&self, pid: i32, cancel: Canceller) {
        self.backends.lock().insert(pid, cancel);
    }

    pub fn unregister_backend(&self, pid: i32) {
        self.backends.lock().remove(&pid);
    }

    /// `pg_cancel_backend(pid)`: `false` if there is no such backend.
    pub fn cancel_backend(&self, pid: i32) -> bool {
        let cancel = self.backends.lock().get(&pid).cloned();
        match cancel {
            Some(c) => {
                c();
                true
            }
            None => false,
        }
    }

    /// Loads the `ALTER SYSTEM` parameters from the catalog (at start, and `pg_reload_conf()`).
    pub fn reload_settings(&self) -> DbResult<()> {
        let values = self.catalog.system_settings()?;
        *self.server_settings.write() = values;
        crate::settings::SERVER_RELOADS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn new_txn_id(&self) -> TxnId {
        self.next_txn.fetch_add(MAX_COORDINATORS, Ordering::Relaxed)
    }
}

/// Transaction state of a session, as Postgres reports it in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    /// Inside `BEGIN … COMMIT`.
    Block(TxnId),
    /// A statement in the block failed: everything but ROLLBACK/COMMIT gets 25P02.
    Failed(TxnId),
}

/// What a statement produced.
pub enum StatementResult {
    /// Rows, streamed; `tag` is the CommandComplete verb ("SELECT", "INSERT 0", ...), the row
    /// count is appended when the stream ends.
    Rows {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        tag: String,
    },
    /// A command with its full tag ("CREATE TABLE", "UPDATE 3").
    Command(String),
    Begin,
    /// End of a block with the tag to send ("COMMIT" or "ROLLBACK").
    End(&'static str),
    /// `COPY … FROM STDIN` is waiting for data (in binary format: clients such as psql treat
    /// text-format data as lines of characters).
    CopyIn {
        columns: usize,
        binary: bool,
    },
    /// `COPY … TO STDOUT`: these rows, in this format.
    CopyOut {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        options: crate::handler::copy::CopyOptions,
    },
}

impl StatementResult {
    /// One text column `name` with these values (EXPLAIN's lines, a function's result).
    pub fn text_column(
        name: &str,
        nullable: bool,
        values: Vec<String>,
        tag: &str,
    ) -> DbResult<StatementResult> {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new(
            name,
            DataType::Utf8,
            nullable,
        )]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::StringArray::from(values))],
        )
        .map_err(|e| DbError::internal(e.to_string()))?;
        let stream = futures::stream::iter(vec![Ok(batch)]);
        Ok(StatementResult::Rows {
            schema: schema.clone(),
            stream: Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream),
            ),
            tag: tag.to_string(),
        })
    }
}

/// Bound parameter values of an extended-protocol statement, `$1` first.
pub type Params = Vec<ScalarValue>;

pub struct Session {
    pub instance: Arc<Instance>,
    pub state: SessionState,
    pub txn: TxnStatus,
    /// Savepoints of the open transaction block, oldest first: name and the write-set mark
    /// to roll back to.
    pub savepoints: Vec<(String, u64)>,
    /// Raised when a statement's rows, streamed after it returned, end in an error: inside a
    /// block that fails the block, as any error does.
    pub stream_failed: Arc<AtomicBool>,
    pub search_path: Vec<String>,
    /// Shared with the functions that read and change them (`current_setting`, `set_config`).
    pub settings: crate::settings::SharedSettings,

    pub copy: Option<handler::copy::CopyIn>,
    /// Who logged in.
    pub login_user: String,
    /// The session user (who logged in, or `SET SESSION AUTHORIZATION`).
    pub user: String,
    /// The current role (`SET ROLE`): whose privileges statements run with.
    pub role: String,
    pub database: String,
    /// When the current transaction started: what `now()`/`CURRENT_TIMESTAMP` return.
    pub txn_start: chrono::DateTime<chrono::Utc>,
    /// The process id clients see (`pg_backend_pid()`, cancel requests).
    pub backend_pid: i32,
    /// The settings generation [`Session::sync_settings`] last applied.
    synced_generation: Option<u64>,
    /// `lock_timeout`, as of the last [`Session::sync_settings`].
    pub lock_timeout: Option<std::time::Duration>,
    /// `TimeZone`, likewise: how timestamptz values are printed and read.
    pub zone: orochi_common::zone::Zone,
    /// `idle_session_timeout` and `idle_in_transaction_session_timeout`, likewise.
    pub idle_timeouts: (Option<std::time::Duration>, Option<std::time::Duration>),
}

impl Session {
    pub fn new(instance: Arc<Instance>, user: String, database: String) -> Session {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema("postgres", "public")
            .with_information_schema(false)
            .with_target_partitions(instance.options.query_parallelism())
            .with_batch_size(8192);
        {
            let opts = config.options_mut();
            opts.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
            opts.sql_parser.enable_ident_normalization = true;
            opts.sql_parser.map_string_types_to_utf8view = false;
            // numeric literals (`1.5`, `1e3`) are `numeric`, as in Postgres, not float8
            opts.sql_parser.parse_float_as_decimal = true;
            opts.execution.time_zone = Some("+00:00".to_string());
        }
        let mut state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(instance.runtime.clone())
            .with_default_features()
            .with_physical_optimizer_rule(crate::exec::pushdown::rule())
            .build();
        state.add_analyzer_rule(Arc::new(crate::checked::CheckedIntegerArithmetic));
        datafusion::execution::FunctionRegistry::register_expr_planner(
            &mut state,
            Arc::new(crate::checked::PgOperators),
        )
        .expect("a session state takes expression planners");
        for name in ["generate_series", "range"] {
            if let Some(f) = state.table_functions().get(name).cloned() {
                state.register_udtf(
                    name,
                    Arc::new(crate::functions::FoldedArgs(f.function().clone())),
                );
            }
        }
        {
            use datafusion::execution::FunctionRegistry;
            let single = datafusion::logical_expr::AggregateUDF::new_from_impl(
                crate::subquery::SingleRow::default(),
            );
            state
                .register_udaf(Arc::new(single))
                .expect("registering an aggregate cannot fail");
            let value = datafusion::logical_expr::ScalarUDF::new_from_impl(
                crate::subquery::SubqueryValue::default(),
            );
            state
                .register_udf(Arc::new(value))
                .expect("registering a function cannot fail");
        }
        let settings = Arc::new(parking_lot::Mutex::new(crate::settings::Settings::new(
            instance.server_settings.clone(),
        )));
        let mut session = Session {
            instance,
            state,
            txn: TxnStatus::Idle,
            savepoints: Vec::new(),
            stream_failed: Arc::new(AtomicBool::new(false)),
            search_path: vec!["public".to_string()],
            settings,
            copy: None,
            role: user.clone(),
            login_user: user.clone(),
            user,
            database,
            txn_start: chrono::Utc::now(),
            backend_pid: 0,
            synced_generation: None,
            lock_timeout: None,
            zone: orochi_common::zone::Zone::UTC,
            idle_timeouts: (None, None),
        };
        session.refresh_functions();
        session
    }

    /// Logs the session in as `user` (also the current role).
    pub fn set_session_user(&mut self, user: &str) {
        self.login_user = user.to_string();
        self.user = user.to_string();
        self.role = user.to_string();
        self.refresh_functions();
    }

    /// Who statements run as: the current role, and whether it is a superuser.
    pub fn access(&self) -> crate::privilege::Access {
        crate::privilege::Access::of(&self.instance.catalog, &self.role)
    }

    pub fn check_table(
        &self,
        def: &orochi_common::schema::TableDef,
        p: crate::privilege::Privilege,
    ) -> DbResult<()> {
        crate::privilege::check_table(&self.instance.catalog, &self.access(), def, p)
    }

    pub fn check_table_owner(&self, def: &orochi_common::schema::TableDef) -> DbResult<()> {
        crate::privilege::check_table_owner(&self.instance.catalog, &self.access(), def)
    }

    pub fn check_schema(&self, schema: &str, p: crate::privilege::Privilege) -> DbResult<()> {
        crate::privilege::check_schema(&self.instance.catalog, &self.access(), schema, p)
    }

    /// Re-registers the session information functions (`current_schema()`, …) after the
    /// user, database, search path or backend pid changed.
    pub fn refresh_functions(&mut self) {
        use datafusion::execution::FunctionRegistry;
        let info = crate::functions::SessionInfo {
            user: &self.user,
            role: &self.role,
            database: &self.database,
            search_path: &self.search_path,
            backend_pid: self.backend_pid,
            catalog: &self.instance.catalog,
        };
        let mut settings_functions =
            crate::settings::functions::all(&self.settings, &self.instance);
        settings_functions.push(datafusion::logical_expr::ScalarUDF::new_from_impl(
            crate::functions::CancelBackend::new(self.instance.clone()),
        ));
        settings_functions.extend(crate::functions::stateless_functions());
        for f in crate::functions::session_functions(&info)
            .into_iter()
            .chain(settings_functions)
        {
            if let Err(e) = self.state.register_udf(Arc::new(f)) {
                tracing::warn!(error = %e, "registering a session function");
            }
        }
    }

    /// Re-derives what depends on parameters (the search path and the functions resolving
    /// names through it, the execution batch size, the lock and idle timeouts) after `SET`, `set_config()`, a rollback
    /// or `pg_reload_conf()` changed them.
    pub fn sync_settings(&mut self) {
        let (path, batch) = {
            let st = self.settings.lock();
            // nothing changed since the last sync: the common case, once per statement
            let generation = st.generation();
            if self.synced_generation == Some(generation) {
                return;
            }
            self.synced_generation = Some(generation);
            self.lock_timeout = st.duration("lock_timeout");
            let zone =
                orochi_common::zone::Zone::from_setting(&st.get("TimeZone").unwrap_or_default());
            if zone != self.zone {
                self.zone = zone;
                // DataFusion reads a timestamptz written without an offset (casts, literals)
                // in its session zone, and gives now() that zone
                let name = zone.arrow_name();
                self.state.config_mut().options_mut().execution.time_zone = Some(name);
            }
            self.idle_timeouts = (
                st.duration("idle_session_timeout"),
                st.duration("idle_in_transaction_session_timeout"),
            );
            (
                st.get("search_path").unwrap_or_default(),
                st.get("orochi.vectorized_batch_size").unwrap_or_default(),
            )
        };
        let path: Vec<String> = path
            .split(',')
            .map(|p| p.trim().trim_matches('"').to_string())
            .filter(|p| !p.is_empty() && p != "$user")
            .collect();
        if path != self.search_path {
            self.search_path = path;
            self.refresh_functions();
        }
        if let Ok(n) = batch.parse::<usize>()
            && let Ok(n) = datafusion::config::ConfigNonZeroUsize::try_new(n)
        {
            let options = self.state.config_mut().options_mut();
            if options.execution.batch_size.get() != n.get() {
                options.execution.batch_size = n;
            }
        }
    }

    pub fn planner(&self) -> Planner<'_> {
        let mut p = Planner::new(
            &self.state,
            &self.instance.catalog,
            &self.instance.service,
            &self.search_path,
        );
        p.user = &self.role;
        p.access = self.access();
        p.settings = Some(self.settings.clone());
        p
    }

    fn set_txn_context(&mut self, txn: TxnId) {
        self.state
            .config_mut()
            .set_extension(Arc::new(TxnContext { txn }));
    }

    /// Executes one statement with Postgres' transaction semantics: outside a block each
    /// statement is its own transaction (committed on success, rolled back on error); inside
    /// a block an error fails the block until ROLLBACK.
    pub async fn execute(
        &mut self,
        stmt: &Statement,
        params: &Params,
    ) -> DbResult<StatementResult> {
        self.settle_stream_failure();
        self.sync_settings();
        match stmt {
            Statement::StartTransaction { .. } => return Ok(self.handle_begin()),
            Statement::Commit { .. } => return self.handle_commit().await,
            Statement::Rollback {
                savepoint: None, ..
            } => return Ok(self.handle_rollback().await),
            // allowed in a failed block: it is how a client recovers from an error
            Statement::Rollback {
                savepoint: Some(name),
                ..
            } => return self.handle_rollback_to(&name.value).await,
            _ => {}
        }
        if let TxnStatus::Failed(_) = self.txn {
            return Err(DbError::new(
                SqlState::InFailedSqlTransaction,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let (txn, implicit) = match self.txn {
            TxnStatus::Block(t) => (t, false),
            _ => {
                self.txn_start = chrono::Utc::now();
                self.settings.lock().begin();
                (self.instance.new_txn_id(), true)
            }
        };
        self.set_txn_context(txn);
        // what SessionContext does per query; now()/CURRENT_TIMESTAMP are the transaction's
        // start time, as in Postgres
        self.state.mark_start_execution();
        self.state.execution_props_mut().query_execution_start_time = Some(self.txn_start);
        let result = self.dispatch(stmt, params, txn).await;
        match (&result, implicit) {
            (Ok(StatementResult::CopyIn { .. }), _) => {
                // the COPY sub-protocol finishes the statement (and its implicit transaction)
                if let Some(c) = self.copy.as_mut() {
                    c.implicit = implicit;
                    c.txn = txn;
                }
            }
            (Ok(_), true) => {
                let committed = self.instance.service.commit(txn).await;
                self.settings.lock().end(committed.is_ok());
                committed?
            }
            (Err(_), true) => {
                self.settings.lock().end(false);
                self.instance.service.abort(txn).await
            }
            (Err(_), false) => self.txn = TxnStatus::Failed(txn),
            (Ok(_), false) => {}
        }
        result
    }

    /// The single match over statement kinds.
    async fn dispatch(
        &mut self,
        stmt: &Statement,
        params: &Params,
        txn: TxnId,
    ) -> DbResult<StatementResult> {
        use handler::*;
        if let Some(plan) = fastpath::plan(self, stmt)
            && let Some(result) = fastpath::execute(self, &plan, params, txn).await?
        {
            return Ok(result);
        }
        match stmt {
            Statement::CreateRole(cr) => role::handle_create_role(self, cr),
            Statement::AlterRole { name, operation } => {
                role::handle_alter_role(self, name, operation)
            }
            Statement::Drop {
                object_type: ObjectType::Role | ObjectType::User,
                if_exists,
                names,
                ..
            } => role::handle_drop_roles(self, names, *if_exists),
            Statement::Grant(g) => role::handle_grant(self, g),
            Statement::Revoke(r) => role::handle_revoke(self, r),
            Statement::Set(ast::Set::SetRole { role_name, .. }) => {
                role::handle_set_role(self, role_name.as_ref())
            }
            Statement::Set(ast::Set::SetSessionAuthorization(param)) => {
                role::handle_set_session_authorization(self, param)
            }
            Statement::Query(q) => match crate::handler::distribution::placement_call(q) {
                Some(call) => crate::handler::distribution::handle(self, call, params, txn).await,
                None => query::handle_query(self, q, params).await,
            },
            Statement::Insert(ins) => dml::handle_insert(self, ins, params, txn).await,
            Statement::Update(upd) => dml::handle_update(self, upd, params, txn).await,
            Statement::Delete(del) => dml::handle_delete(self, del, params, txn).await,
            Statement::CreateTable(ct) => ddl::handle_create_table(self, ct).await,
            Statement::CreateSequence {
                temporary: false,
                if_not_exists,
                name,
                data_type,
                sequence_options,
                owned_by: None,
            } => ddl::handle_create_sequence(
                self,
                *if_not_exists,
                name,
                data_type.as_ref(),
                sequence_options,
            ),
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => ddl::handle_drop(self, object_type, *if_exists, names, *cascade).await,
            Statement::Truncate(t) => ddl::handle_truncate(self, t).await,
            Statement::CreateSchema {
                schema_name,
                if_not_exists,
                ..
            } => ddl::handle_create_schema(self, schema_name, *if_not_exists),
            Statement::AlterTable(at) => ddl::handle_alter_table(self, at, txn).await,
            Statement::Copy {
                source,
                to: true,
                target,
                options,
                legacy_options,
                ..
            } => copy::handle_copy_to(self, source, target, options, legacy_options, params).await,
            Statement::Copy {
                source,
                target,
                options,
                legacy_options,
                ..
            } => copy::handle_copy_from(self, source, target, options, legacy_options),
            Statement::Explain {
                statement,
                analyze,
                verbose,
                ..
            } => explain::handle_explain(self, statement, *analyze, *verbose, params).await,
            Statement::Set(set) => utility::handle_set(self, set),
            Statement::ShowVariable { variable } => utility::handle_show(self, variable),
            Statement::Reset(r) => utility::handle_reset(self, r),
            Statement::Vacuum(_) => Ok(StatementResult::Command("VACUUM".into())),
            Statement::Analyze(_) => Ok(StatementResult::Command("ANALYZE".into())),
            Statement::CreateExtension(ext) => utility::handle_create_extension(ext),
            Statement::Discard { .. } => Ok(StatementResult::Command("DISCARD ALL".into())),
            Statement::Savepoint { name } => self.handle_savepoint(&name.value, txn).await,
            Statement::ReleaseSavepoint { name } => self.handle_release(&name.value),
            other => Err(DbError::new(
                SqlState::FeatureNotSupported,
                format!("statement not supported yet: {}", statement_kind(other)),
            )),
        }
    }

    fn handle_begin(&mut self) -> StatementResult {
        if let TxnStatus::Idle = self.txn {
            self.txn = TxnStatus::Block(self.instance.new_txn_id());
            self.txn_start = chrono::Utc::now();
            self.settings.lock().begin();
        } else {
            tracing::debug!(
                "BEGIN inside a transaction block: there is already a transaction in progress"
            );
        }
        StatementResult::Begin
    }

    /// Applies a failure of the last statement's row stream (see `stream_failed`).
    pub fn settle_stream_failure(&mut self) {
        if self.stream_failed.swap(false, Ordering::Relaxed)
            && let TxnStatus::Block(t) = self.txn
        {
            self.txn = TxnStatus::Failed(t);
        }
    }

    /// `SAVEPOINT name`: marks the block's write set (names may repeat; the newest wins).
    async fn handle_savepoint(&mut self, name: &str, txn: TxnId) -> DbResult<StatementResult> {
        if !matches!(self.txn, TxnStatus::Block(_)) {
            return Err(DbError::new(
                SqlState::NoActiveSqlTransaction,
                "SAVEPOINT can only be used in transaction blocks",
            ));
        }
        let mark = self.instance.service.savepoint(txn).await?;
        self.savepoints.push((name.to_string(), mark));
        Ok(StatementResult::Command("SAVEPOINT".into()))
    }

    /// The newest savepoint called `name`, as an index into `savepoints`.
    fn find_savepoint(&self, name: &str, verb: &str) -> DbResult<usize> {
        if matches!(self.txn, TxnStatus::Idle) {
            return Err(DbError::new(
                SqlState::NoActiveSqlTransaction,
                format!("{verb} can only be used in transaction blocks"),
            ));
        }
        self.savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| {
                DbError::new(
                    SqlState::InvalidSavepointSpecification,
                    format!("savepoint \"{name}\" does not exist"),
                )
            })
    }

    /// `RELEASE [SAVEPOINT] name`: forgets it and every later savepoint; the writes stay.
    fn handle_release(&mut self, name: &str) -> DbResult<StatementResult> {
        let i = self.find_savepoint(name, "RELEASE SAVEPOINT")?;
        self.savepoints.truncate(i);
        Ok(StatementResult::Command("RELEASE".into()))
    }

    /// `ROLLBACK TO [SAVEPOINT] name`: undoes the writes made since, keeps the savepoint, and
    /// brings a failed block back to life.
    async fn handle_rollback_to(&mut self, name: &str) -> DbResult<StatementResult> {
        let i = match self.find_savepoint(name, "ROLLBACK TO SAVEPOINT") {
            Ok(i) => i,
            Err(e) => {
                // like any error in a block, this one fails it
                if let TxnStatus::Block(t) = self.txn {
                    self.txn = TxnStatus::Failed(t);
                }
                return Err(e);
            }
        };
        let (TxnStatus::Block(t) | TxnStatus::Failed(t)) = self.txn else {
            unreachable!("find_savepoint refuses Idle");
        };
        self.instance
            .service
            .rollback_to(t, self.savepoints[i].1)
            .await?;
        self.savepoints.truncate(i + 1);
        self.txn = TxnStatus::Block(t);
        Ok(StatementResult::Command("ROLLBACK".into()))
    }

    async fn handle_commit(&mut self) -> DbResult<StatementResult> {
        self.savepoints.clear();
        match std::mem::replace(&mut self.txn, TxnStatus::Idle) {
            TxnStatus::Idle => Ok(StatementResult::End("COMMIT")),
            TxnStatus::Block(t) => {
                let committed = self.instance.service.commit(t).await;
                self.settings.lock().end(committed.is_ok());
                committed?;
                Ok(StatementResult::End("COMMIT"))
            }
            TxnStatus::Failed(t) => {
                self.settings.lock().end(false);
                self.instance.service.abort(t).await;
                Ok(StatementResult::End("ROLLBACK"))
            }
        }
    }

    async fn handle_rollback(&mut self) -> StatementResult {
        self.savepoints.clear();
        if let TxnStatus::Block(t) | TxnStatus::Failed(t) =
            std::mem::replace(&mut self.txn, TxnStatus::Idle)
        {
            self.settings.lock().end(false);
            self.instance.service.abort(t).await;
        }
        StatementResult::End("ROLLBACK")
    }

    /// After a query was interrupted mid-execution: its implicit transaction (read-only) is
    /// ended; inside a block, the block fails, as after any error.
    pub async fn end_interrupted(&mut self) {
        match self.txn {
            TxnStatus::Block(t) => self.txn = TxnStatus::Failed(t),
            TxnStatus::Idle | TxnStatus::Failed(_) => {}
        }
    }

    /// Ends whatever transaction is open (connection closed).
    pub async fn close(&mut self) {
        self.instance.unregister_backend(self.backend_pid);
        if let Some(c) = self.copy.take() {
            self.instance.service.abort(c.txn).await;
        }
        self.handle_rollback().await;
    }
}

/// A short name for a statement kind, for "not supported" errors.
pub fn statement_kind(stmt: &Statement) -> String {
    let s = stmt.to_string();
    s.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}
