//! pgwire's handler traits, implemented per connection on top of [`Session`]. No planning
//! here: statements are parsed, then handed to the session; results are encoded.

use orochi_common::zone::Zone;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::pgwire::auth::{Authenticator, Method};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::DFSchema;
use datafusion::common::ExprSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{Sink, SinkExt, StreamExt, stream};
use orochi_common::error::{DbError, DbResult, SqlState};
use pgwire::api::auth::sasl::{SASLState, SCRAM_SHA_256_METHOD};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, METADATA_DATABASE, METADATA_USER,
    PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{Parse, ParseComplete};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::Mutex;

use crate::error::df_to_db;
use crate::handler::dml::resolve_table;
use crate::handler::eval::table_df_schema;
use crate::pgwire::encode::{
    decode_param, encode_batch, field_infos, pg_type_of_arrow, sql_type_of,
};
use crate::pgwire::error::{error_info, fatal, to_pgwire};
use crate::pgwire::parse::parse_statements;
use crate::session::{Session, StatementResult};

/// The per-connection handler set.
pub struct Connection {
    session: Arc<Mutex<Session>>,
    parser: Arc<OrochiQueryParser>,
    connections: Arc<ConnectionManager>,
    auth: Arc<AuthState>,
    statement_names: Arc<parking_lot::Mutex<BTreeSet<String>>>,
    reported: Arc<parking_lot::Mutex<Reported>>,
}

/// The server's authentication rules and this connection's place in the SCRAM exchange.
pub struct AuthState {
    authenticator: Arc<Authenticator>,
    sasl: Mutex<SASLState>,
}

impl Connection {
    pub fn new(
        session: Session,
        connections: Arc<ConnectionManager>,
        authenticator: Arc<Authenticator>,
    ) -> Arc<Connection> {
        let session = Arc::new(Mutex::new(session));
        Arc::new(Connection {
            parser: Arc::new(OrochiQueryParser {
                session: session.clone(),
            }),
            session,
            connections,
            auth: Arc::new(AuthState {
                authenticator,
                sasl: Mutex::new(SASLState::Initial),
            }),
            statement_names: Default::default(),
            reported: Default::default(),
        })
    }

    pub fn session(&self) -> Arc<Mutex<Session>> {
        self.session.clone()
    }
}

impl Connection {
    /// The one handler object behind every pgwire handler trait, with its concrete type.
    pub fn handler(&self) -> Arc<Handler> {
        Arc::new(Handler {
            session: self.session.clone(),
            parser: self.parser.clone(),
            connections: self.connections.clone(),
            auth: self.auth.clone(),
            statement_names: self.statement_names.clone(),
            reported: self.reported.clone(),
        })
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.handler()
    }
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.connections.clone()))
    }
    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.handler()
    }
}

pub struct Handler {
    session: Arc<Mutex<Session>>,
    parser: Arc<OrochiQueryParser>,
    connections: Arc<ConnectionManager>,
    auth: Arc<AuthState>,
    /// Names of the protocol-level prepared statements (Parse), for `DEALLOCATE ALL`.
    statement_names: Arc<parking_lot::Mutex<BTreeSet<String>>>,
    /// What the client was last told of the reported parameters (ParameterStatus).
    reported: Arc<parking_lot::Mutex<Reported>>,
}

/// The reportable parameters' values the client knows, and the session state they were read
/// at (settings generation, session user, current role).
#[derive(Default)]
pub struct Reported {
    at: Option<(u64, String, String)>,
    values: std::collections::BTreeMap<&'static str, String>,
}

/// Parameters Postgres reports to the client whenever they change (GUC_REPORT).
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// A parsed statement with its parameter types and result schema (for Describe).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub stmt: Statement,
    pub param_types: Vec<Type>,
    pub schema: Option<SchemaRef>,
}

pub struct OrochiQueryParser {
    session: Arc<Mutex<Session>>,
}

#[async_trait]
impl QueryParser for OrochiQueryParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts = parse_statements(sql).map_err(|e| to_pgwire(&e.error, e.position))?;
        if stmts.len() > 1 {
            return Err(to_pgwire(
                &DbError::new(
                    orochi_common::error::SqlState::SyntaxError,
                    "cannot insert multiple commands into a prepared statement",
                ),
                None,
            ));
        }
        let Some(stmt) = stmts.pop() else {
            return Ok(None);
        };
        let mut session = self.session.lock().await;
        if let Statement::Query(q) = &stmt {
            // functions whose rows are gathered before planning (see their modules)
            crate::functions::sizes::prepare(&mut session, q)
                .await
                .map_err(|e| to_pgwire(&e, None))?;
            crate::functions::cluster::prepare(&mut session, q)
                .await
                .map_err(|e| to_pgwire(&e, None))?;
            crate::functions::storage::prepare(&mut session, q)
                .await
                .map_err(|e| to_pgwire(&e, None))?;
        }
        let (inferred, schema) = describe(&session, &stmt).map_err(|e| to_pgwire(&e, None))?;
        let n = inferred.len().max(types.len());
        let param_types = (0..n)
            .map(|i| {
                types
                    .get(i)
                    .cloned()
                    .flatten()
                    .or_else(|| inferred.get(i).cloned().flatten())
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        Ok(Some(Prepared {
            stmt,
            param_types,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(s) => field_infos(s, |i| {
                format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text)
            }),
            None => vec![],
        })
    }
}

/// Parameter types (`$1` first) and result schema of a statement, without executing it.
/// Every `$n` the statement mentions is counted, typed or not (a driver binds exactly that
/// many), also where inference could not plan the statement.
fn describe(s: &Session, stmt: &Statement) -> DbResult<(Vec<Option<Type>>, Option<SchemaRef>)> {
    let (mut params, schema) = describe_typed(s, stmt)?;
    let index = |p: &str| {
        p.trim_start_matches('$')
            .parse::<usize>()
            .ok()
            .filter(|&i| i >= 1)
    };
    let _ = ast::visit_expressions(stmt, |e| {
        if let ast::Expr::Value(v) = e
            && let ast::Value::Placeholder(p) = &v.value
            && let Some(i) = index(p)
            && params.len() < i
        {
            params.resize(i, None);
        }
        // `$n::type` where planning could not tell: the cast's type
        if let ast::Expr::Cast {
            expr, data_type, ..
        } = e
            && let ast::Expr::Value(v) = expr.as_ref()
            && let ast::Value::Placeholder(p) = &v.value
            && let Some(i) = index(p)
            && let Ok((t, _)) = crate::handler::ddl::sql_type(data_type)
        {
            if params.len() < i {
                params.resize(i, None);
            }
            if params[i - 1].is_none() {
                params[i - 1] = Type::from_oid(t.pg_oid());
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok((params, schema))
}

fn describe_typed(
    s: &Session,
    stmt: &Statement,
) -> DbResult<(Vec<Option<Type>>, Option<SchemaRef>)> {
    let mut params: Vec<Option<Type>> = Vec::new();
    let mut set_param = |id: &str, t: Option<Type>| {
        if let Ok(i) = id.trim_start_matches('$').parse::<usize>()
            && i >= 1
        {
            if params.len() < i {
                params.resize(i, None);
            }
            if params[i - 1].is_none() {
                params[i - 1] = t;
            }
        }
    };
    match stmt {
        Statement::Query(q) => {
            let (plan, schema) = match s.planner().plan_client_query((**q).clone()) {
                Ok(planned) => planned,
                // table functions evaluate their arguments while planning: without values
                // for the parameters there, plan with NULLs (the columns are the same)
                Err(e) => {
                    let mut nulls = (**q).clone();
                    crate::functions::bind_table_function_args(&mut nulls, None);
                    s.planner()
                        .plan_client_query(nulls)
                        .map_err(|_| df_to_db(e))?
                }
            };
            // `col = $n`: the parameter has the column's SQL type (uuid, json, varchar…),
            // which DataFusion's Arrow-level inference cannot tell apart from text
            let _ = plan.apply(|node| {
                let inputs = node.inputs();
                node.apply_expressions(|e| {
                    for input in &inputs {
                        placeholder_column_types(e, input.schema(), &mut set_param);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
                Ok(TreeNodeRecursion::Continue)
            });
            for (id, t) in plan.get_parameter_types().map_err(df_to_db)? {
                set_param(&id, t.as_ref().map(pg_type_of_arrow));
            }
            return Ok((params, Some(schema)));
        }
        Statement::Insert(ins) => {
            let ast::TableObject::TableName(name) = &ins.table else {
                return Ok((params, None));
            };
            let def = resolve_table(s, name)?;
            let targets = crate::handler::dml::insert_targets(&def, &ins.columns)?;
            if let Some(q) = &ins.source {
                if let ast::SetExpr::Values(v) = q.body.as_ref() {
                    for row in &v.rows {
                        for (k, e) in row.iter().enumerate() {
                            if let ast::Expr::Value(val) = e
                                && let ast::Value::Placeholder(p) = &val.value
                                && let Some(&col) = targets.get(k)
                            {
                                set_param(p, Type::from_oid(def.columns[col].ty.pg_oid()));
                            }
                        }
                    }
                }
                // anything else (expressions, INSERT ... SELECT): ask the planner
                if let Ok(plan) = s.planner().plan_query((**q).clone()) {
                    for (id, t) in plan.get_parameter_types().unwrap_or_default() {
                        set_param(&id, t.as_ref().map(pg_type_of_arrow));
                    }
                }
            }
            let alias = def.name.clone();
            let schema = match &ins.returning {
                Some(items) => Some(returning_schema(s, &def, &alias, items, &mut set_param)?),
                None => None,
            };
            return Ok((params, schema));
        }
        Statement::Update(u) => {
            let (def, alias) = crate::handler::dml::dml_target(s, &u.table)?;
            let (df, _) = table_df_schema(&def, &alias)?;
            for a in &u.assignments {
                if let ast::AssignmentTarget::ColumnName(n) = &a.target {
                    let col =
                        n.0.last()
                            .and_then(|p| p.as_ident())
                            .map(crate::handler::dml::normalize_ident)
                            .unwrap_or_default();
                    if let (ast::Expr::Value(v), Some(ci)) = (&a.value, def.column_index(&col))
                        && let ast::Value::Placeholder(p) = &v.value
                    {
                        set_param(p, Type::from_oid(def.columns[ci].ty.pg_oid()));
                    }
                }
                infer_expr_params(s, &a.value, &df, &mut set_param);
            }
            if let Some(w) = &u.selection {
                infer_expr_params(s, w, &df, &mut set_param);
            }
            let schema = match &u.returning {
                Some(items) => Some(returning_schema(s, &def, &alias, items, &mut set_param)?),
                None => None,
            };
            return Ok((params, schema));
        }
        Statement::Delete(d) => {
            let twj = crate::handler::dml::delete_target(d)?;
            let (def, alias) = crate::handler::dml::dml_target(s, twj)?;
            let (df, _) = table_df_schema(&def, &alias)?;
            if let Some(w) = &d.selection {
                infer_expr_params(s, w, &df, &mut set_param);
            }
            let schema = match &d.returning {
                Some(items) => Some(returning_schema(s, &def, &alias, items, &mut set_param)?),
                None => None,
            };
            return Ok((params, schema));
        }
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.to_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            if name == "all" {
                return Ok((
                    params,
                    Some(Arc::new(Schema::new(vec![
                        Field::new("name", DataType::Utf8, false),
                        Field::new("setting", DataType::Utf8, false),
                        Field::new("description", DataType::Utf8, false),
                    ]))),
                ));
            }
            return Ok((
                params,
                Some(Arc::new(Schema::new(vec![Field::new(
                    name,
                    DataType::Utf8,
                    false,
                )]))),
            ));
        }
        Statement::Explain { .. } => {
            return Ok((
                params,
                Some(Arc::new(Schema::new(vec![Field::new(
                    "QUERY PLAN",
                    DataType::Utf8,
                    false,
                )]))),
            ));
        }
        _ => {}
    }
    Ok((params, None))
}

/// The Postgres type of a function's `i`th parameter: ours whose signature takes any type
/// but Postgres declares one, else what an exact signature says.
fn function_parameter_type(f: &datafusion::logical_expr::ScalarUDF, i: usize) -> Option<Type> {
    use datafusion::logical_expr::TypeSignature;
    let declared: &[Type] = match f.name() {
        "pg_cancel_backend" | "pg_terminate_backend" => &[Type::INT4],
        "current_setting" => &[Type::TEXT, Type::BOOL],
        "set_config" => &[Type::TEXT, Type::TEXT, Type::BOOL],
        _ => &[],
    };
    if let Some(t) = declared.get(i) {
        return Some(t.clone());
    }
    match &f.signature().type_signature {
        TypeSignature::Exact(types) => types.get(i).map(pg_type_of_arrow),
        _ => None,
    }
}

/// Parameters compared with a column (`col = $1`, `$1 <> col`, through casts): typed as the
/// column's SQL type; a parameter under a cast (`$1::int4`) has the cast's type.
fn placeholder_column_types(
    e: &Expr,
    schema: &DFSchema,
    set_param: &mut impl FnMut(&str, Option<Type>),
) {
    let _ = e.apply(|x| {
        // `f($1)`: the type of f's parameter, as Postgres describes it
        if let Expr::ScalarFunction(f) = x {
            for (i, arg) in f.args.iter().enumerate() {
                if let Expr::Placeholder(p) = arg
                    && let Some(t) = function_parameter_type(f.func.as_ref(), i)
                {
                    set_param(&p.id, Some(t));
                }
            }
        }
        // `$1::int4`: the cast's target type
        if let Expr::Cast(c) = x
            && let Expr::Placeholder(p) = c.expr.as_ref()
        {
            set_param(&p.id, Some(pg_type_of_arrow(c.field.data_type())));
        }
        if let Expr::BinaryExpr(b) = x
            && b.op.supports_propagation()
        {
            let strip = |e: &Expr| -> Expr {
                match e {
                    Expr::Cast(c) => (*c.expr).clone(),
                    Expr::TryCast(c) => (*c.expr).clone(),
                    other => other.clone(),
                }
            };
            let (l, r) = (strip(&b.left), strip(&b.right));
            let pair = match (&l, &r) {
                (Expr::Column(c), Expr::Placeholder(p))
                | (Expr::Placeholder(p), Expr::Column(c)) => Some((c, p)),
                _ => None,
            };
            if let Some((c, p)) = pair
                && let Ok(field) = schema.field_from_column(c)
                && let Some(t) = sql_type_of(field)
            {
                set_param(&p.id, Type::from_oid(t.pg_oid()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

fn infer_expr_params(
    s: &Session,
    e: &ast::Expr,
    df: &DFSchema,
    set_param: &mut impl FnMut(&str, Option<Type>),
) {
    let Ok(expr) = s.planner().plan_expr(e.clone(), df) else {
        return;
    };
    placeholder_column_types(&expr, df, set_param);
    let Ok((expr, _)) = expr.infer_placeholder_types(df) else {
        return;
    };
    let _ = expr.apply(|x| {
        if let Expr::Placeholder(p) = x {
            set_param(
                &p.id,
                p.field.as_ref().map(|f| pg_type_of_arrow(f.data_type())),
            );
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
}

fn returning_schema(
    s: &Session,
    def: &orochi_common::schema::TableDef,
    alias: &str,
    items: &[ast::SelectItem],
    set_param: &mut impl FnMut(&str, Option<Type>),
) -> DbResult<SchemaRef> {
    let (df, arrow_schema) = table_df_schema(def, alias)?;
    let mut fields = Vec::new();
    for item in items {
        let (e, name) = match item {
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..) => {
                fields.extend(arrow_schema.fields().iter().map(|f| f.as_ref().clone()));
                continue;
            }
            ast::SelectItem::UnnamedExpr(e) => (e, crate::handler::eval::output_name(e)),
            ast::SelectItem::ExprWithAlias { expr, alias } => {
                (expr, crate::handler::dml::normalize_ident(alias))
            }
            _ => continue,
        };
        infer_expr_params(s, e, &df, set_param);
        let expr = s.planner().plan_expr(e.clone(), &df).map_err(df_to_db)?;
        let dt = expr.get_type(&df).map_err(df_to_db)?;
        let field = match e {
            ast::Expr::Identifier(id) => {
                match def.column_index(&crate::handler::dml::normalize_ident(id)) {
                    Some(ci) => def.columns[ci].ty.arrow_field(&name, true),
                    None => Field::new(name, dt, true),
                }
            }
            _ => Field::new(name, dt, true),
        };
        fields.push(field);
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Why a statement was stopped before it finished.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancel,
    Timeout,
}

impl Stop {
    fn error(self) -> DbError {
        DbError::new(
            orochi_common::error::SqlState::QueryCanceled,
            match self {
                Stop::Cancel => "canceling statement due to user request",
                Stop::Timeout => "canceling statement due to statement timeout",
            },
        )
    }
}

/// This connection's registration for CancelRequests.
struct CancelHandle(Arc<pgwire::api::ConnectionHandle>);

/// Resolves when the running statement must stop: a CancelRequest for this connection, or
/// `statement_timeout` elapsed. Never resolves otherwise.
type StopSignal = Shared<BoxFuture<'static, Stop>>;

async fn stop_signal<C: ClientInfo>(client: &C, timeout: Option<Duration>) -> StopSignal {
    let cancelled = match client.session_extensions().get::<CancelHandle>() {
        Some(handle) => Some(handle.0.start_query().await),
        None => None,
    };
    async move {
        let cancel = async {
            if let Some(rx) = cancelled
                && rx.await.is_ok()
            {
                return Stop::Cancel;
            }
            // no handle, or the next statement replaced this one's
            futures::future::pending().await
        };
        let timer = async {
            match timeout {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    Stop::Timeout
                }
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            s = cancel => s,
            s = timer => s,
        }
    }
    .boxed()
    .shared()
}

/// Runs a statement under the stop signal. Only queries are interrupted while they execute
/// (dropping a running write would leave its transaction half done); every statement's
/// result rows are interrupted while they stream.
async fn execute_stoppable(
    session: &mut Session,
    stmt: &Statement,
    params: &crate::session::Params,
    stop: &StopSignal,
) -> DbResult<StatementResult> {
    if matches!(stmt, Statement::Query(_)) {
        tokio::select! {
            r = session.execute(stmt, params) => r,
            reason = stop.clone() => {
                // the query's implicit transaction only read; end it
                session.end_interrupted().await;
                Err(reason.error())
            }
        }
    } else {
        session.execute(stmt, params).await
    }
}

/// Turns a session result into a pgwire response. `materialize` collects rows up front (needed
/// when later statements of the same message could change what a lazy scan would read).
/// `failed` is raised if the rows end in an error (they stream after the statement returned).
async fn to_response(
    result: StatementResult,
    formats: impl Fn(usize) -> FieldFormat,
    materialize: bool,
    stop: StopSignal,
    failed: Arc<AtomicBool>,
    zone: Zone,
) -> PgWireResult<Response> {
    Ok(match result {
        StatementResult::Command(tag) => Response::Execution(Tag::new(&tag)),
        StatementResult::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        StatementResult::End(tag) => Response::TransactionEnd(Tag::new(tag)),
        StatementResult::CopyIn { columns, binary } => Response::CopyIn(CopyResponse::new(
            i8::from(binary),
            columns,
            stream::empty(),
        )),
        StatementResult::CopyOut {
            schema,
            stream,
            options,
        } => copy_out_response(schema, stream, options, stop, failed, zone),
        StatementResult::Rows {
            schema,
            stream,
            tag,
        } => {
            let fields = Arc::new(field_infos(&schema, formats));
            let f2 = fields.clone();
            let rows = stream.map(move |batch| -> Vec<PgWireResult<DataRow>> {
                match batch {
                    Ok(b) => {
                        let mut out = Vec::with_capacity(b.num_rows());
                        match encode_batch(&b, &f2, &schema, &zone, &mut out) {
                            Ok(()) => out.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(to_pgwire(&e, None))],
                        }
                    }
                    Err(e) => vec![Err(to_pgwire(&df_to_db(e), None))],
                }
            });
            let peek = stop.clone();
            let rows = rows
                .flat_map(stream::iter)
                .take_until(stop)
                .chain(
                    stream::once(async move { peek.peek().copied() }).filter_map(
                        |stopped| async move { stopped.map(|s| Err(to_pgwire(&s.error(), None))) },
                    ),
                )
                .inspect(move |r| {
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                });
            let mut resp = if materialize {
                let collected: Vec<PgWireResult<DataRow>> = rows.collect().await;
                if let Some(Err(_)) = collected.iter().find(|r| r.is_err()) {
                    let e = collected
                        .into_iter()
                        .find_map(|r| r.err())
                        .expect("found above");
                    return Err(e);
                }
                QueryResponse::new(fields, stream::iter(collected))
            } else {
                QueryResponse::new(fields, rows)
            };
            resp.set_command_tag(&tag);
            Response::Query(resp)
        }
    })
}

/// The CopyData messages of a `COPY … TO STDOUT`: one per row, the preamble (binary signature,
/// CSV header) riding on the first one (or alone, for no rows); no binary trailer. `rows`
/// counts the rows encoded.
fn copy_out_data(
    schema: SchemaRef,
    batches: datafusion::execution::SendableRecordBatchStream,
    options: crate::handler::copy::CopyOptions,
    stop: StopSignal,
    failed: Arc<AtomicBool>,
    zone: Zone,
    rows: Arc<std::sync::atomic::AtomicUsize>,
) -> impl futures::Stream<Item = PgWireResult<CopyData>> + Send + 'static {
    let pending = crate::pgwire::encode::copy_preamble(&schema, &options);
    let preamble = Arc::new(std::sync::Mutex::new(
        (!pending.is_empty()).then_some(pending),
    ));
    let unsent = preamble.clone();
    let encoded = batches.map(move |batch| -> Vec<PgWireResult<CopyData>> {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return vec![Err(to_pgwire(&df_to_db(e), None))],
        };
        let mut out = Vec::with_capacity(batch.num_rows());
        if let Err(e) =
            crate::pgwire::encode::encode_copy_rows(&batch, &schema, &options, &zone, &mut out)
        {
            return vec![Err(to_pgwire(&e, None))];
        }
        rows.fetch_add(out.len(), Ordering::Relaxed);
        if let Some(first) = out.first_mut()
            && let Some(pre) = preamble.lock().expect("preamble lock").take()
        {
            let mut with = bytes::BytesMut::from(&pre[..]);
            with.extend_from_slice(first);
            *first = with;
        }
        out.into_iter()
            .map(|b| Ok(CopyData::new(b.freeze())))
            .collect()
    });
    let peek = stop.clone();
    encoded
        .flat_map(stream::iter)
        .take_until(stop)
        // no rows at all: the preamble still goes out
        .chain(
            stream::once(async move {
                let pre = unsent.lock().expect("preamble lock").take();
                pre.map(|p| Ok(CopyData::new(bytes::Bytes::from(p))))
            })
            .filter_map(|p| async move { p }),
        )
        .chain(
            stream::once(async move { peek.peek().copied() }).filter_map(|stopped| async move {
                stopped.map(|s| Err(to_pgwire(&s.error(), None)))
            }),
        )
        .inspect(move |r| {
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
        })
}

/// `COPY … TO STDOUT` as a pgwire response, which pgwire sends (and to which it adds the binary
/// trailer). Its row count is the number of CopyData messages, so an empty copy with a
/// preamble says `COPY 1`: used only where [`send_copy_out`] cannot be (a COPY after other
/// results of the same simple query, which go out after it).
fn copy_out_response(
    schema: SchemaRef,
    batches: datafusion::execution::SendableRecordBatchStream,
    options: crate::handler::copy::CopyOptions,
    stop: StopSignal,
    failed: Arc<AtomicBool>,
    zone: Zone,
) -> Response {
    let binary = options.format == crate::handler::copy::CopyFormat::Binary;
    let columns = schema.fields().len();
    let rows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let data = copy_out_data(schema, batches, options, stop, failed, zone, rows);
    Response::CopyOut(CopyResponse::new(i8::from(binary), columns, data))
}

/// `COPY … TO STDOUT` sent here, as Postgres sends it: CopyOutResponse, the data, the binary
/// trailer, CopyDone; then the `COPY n` the caller's response completes it with counts the
/// rows, not the messages. An error in the rows ends it with that error.
async fn send_copy_out<C>(
    client: &mut C,
    schema: SchemaRef,
    batches: datafusion::execution::SendableRecordBatchStream,
    options: crate::handler::copy::CopyOptions,
    stop: StopSignal,
    failed: Arc<AtomicBool>,
    zone: Zone,
) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use pgwire::messages::copy::CopyOutResponse;
    let binary = options.format == crate::handler::copy::CopyFormat::Binary;
    let columns = schema.fields().len();
    let rows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let data = copy_out_data(schema, batches, options, stop, failed, zone, rows.clone());
    futures::pin_mut!(data);
    let format = i8::from(binary);
    client
        .feed(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            format,
            columns as i16,
            vec![format as i16; columns],
        )))
        .await?;
    while let Some(d) = data.next().await {
        client.feed(PgWireBackendMessage::CopyData(d?)).await?;
    }
    if binary {
        client
            .feed(PgWireBackendMessage::CopyData(CopyData::new(
                bytes::Bytes::from_static(&[0xFF, 0xFF]),
            )))
            .await?;
    }
    client
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(Response::Execution(
        Tag::new("COPY").with_rows(rows.load(Ordering::Relaxed)),
    ))
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmts = match parse_statements(query) {
            Ok(s) => s,
            Err(e) => {
                return Ok(vec![Response::Error(Box::new(error_info(
                    &e.error, e.position,
                )))]);
            }
        };
        let many = stmts.len() > 1;
        let mut session = self.session.lock().await;
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in &stmts {
            if let Statement::Deallocate { name, .. } = stmt {
                match self.deallocate(_client, name) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        out.push(Response::Error(Box::new(error_info(&e, None))));
                        break;
                    }
                }
                continue;
            }
            let timeout = session.settings.lock().statement_timeout();
            let stop = stop_signal(_client, timeout).await;
            match execute_stoppable(&mut session, stmt, &vec![], &stop).await {
                Ok(StatementResult::CopyOut {
                    schema,
                    stream,
                    options,
                }) if out.is_empty() => {
                    // nothing is waiting to go out before it: sent from here
                    let failed = session.stream_failed.clone();
                    session.sync_settings();
                    let zone = session.zone;
                    match send_copy_out(_client, schema, stream, options, stop, failed, zone).await
                    {
                        Ok(resp) => out.push(resp),
                        Err(PgWireError::UserError(info)) => {
                            out.push(Response::Error(info));
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(r) => {
                    let copy = matches!(r, StatementResult::CopyIn { .. });
                    let failed = session.stream_failed.clone();
                    session.sync_settings();
                    let zone = session.zone;
                    match to_response(r, |_| FieldFormat::Text, many, stop, failed, zone).await {
                        Ok(resp) => out.push(resp),
                        Err(PgWireError::UserError(info)) => {
                            out.push(Response::Error(info));
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                    if copy {
                        break; // the COPY sub-protocol takes over
                    }
                }
                Err(e) => {
                    out.push(Response::Error(Box::new(error_info(&e, None))));
                    break;
                }
            }
        }
        self.report_changes(_client, &session).await?;
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = OrochiQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// pgwire's Parse handling, plus remembering the statement's name for `DEALLOCATE ALL`.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let name = message.name.clone().unwrap_or_default();
        match StoredStatement::parse(client, &message, self.parser.clone()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if !name.is_empty() {
            self.statement_names.lock().insert(name);
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let p = &target.statement;
        let fields = self.parser.get_result_schema(p, None)?;
        Ok(DescribeStatementResponse::new(
            p.param_types.clone(),
            fields,
        ))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        target: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.parser.get_result_schema(
            &target.statement.statement,
            Some(&target.result_column_format),
        )?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        if let Statement::Deallocate { name, .. } = &prepared.stmt {
            return self
                .deallocate(_client, name)
                .map_err(|e| to_pgwire(&e, None));
        }
        let mut session = self.session.lock().await;
        session.sync_settings();
        let mut params = Vec::with_capacity(portal.parameters.len());
        for (i, p) in portal.parameters.iter().enumerate() {
            let t = prepared.param_types.get(i).cloned().unwrap_or(Type::TEXT);
            let binary = portal.parameter_format.is_binary(i);
            let v = decode_param(p.as_deref(), binary, &t, &session.zone)
                .map_err(|e| to_pgwire(&e, None))?;
            params.push(v);
        }
        let timeout = session.settings.lock().statement_timeout();
        let stop = stop_signal(_client, timeout).await;
        let result = execute_stoppable(&mut session, &prepared.stmt, &params, &stop).await;
        self.report_changes(_client, &session).await?;
        let result = result.map_err(|e| to_pgwire(&e, None))?;
        let fmt = portal.result_column_format.clone();
        let failed = session.stream_failed.clone();
        session.sync_settings();
        let zone = session.zone;
        if let StatementResult::CopyOut {
            schema,
            stream,
            options,
        } = result
        {
            return send_copy_out(_client, schema, stream, options, stop, failed, zone).await;
        }
        to_response(
            result,
            move |i| fmt.format_for(i),
            false,
            stop,
            failed,
            zone,
        )
        .await
    }
}

#[async_trait]
impl StartupHandler for Handler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let (user, database) = login_names(client);
                let ip = client.socket_addr().ip();
                let encryption = if client.is_secure() {
                    "SSL encryption"
                } else {
                    "no encryption"
                };
                let rules = &self.auth.authenticator.rules;
                match rules.method(ip, client.is_secure(), &database, &user) {
                    None => Err(fatal(
                        SqlState::InvalidAuthorizationSpecification,
                        format!(
                            "no pg_hba.conf entry for host \"{ip}\", user \"{user}\", \
                             database \"{database}\", {encryption}"
                        ),
                    )),
                    Some(Method::Reject) => Err(fatal(
                        SqlState::InvalidAuthorizationSpecification,
                        format!(
                            "pg_hba.conf rejects connection for host \"{ip}\", user \"{user}\", \
                             database \"{database}\", {encryption}"
                        ),
                    )),
                    Some(Method::Scram) => {
                        *self.auth.sasl.lock().await = SASLState::ScramClientFirstReceived;
                        client.set_state(PgWireConnectionState::AuthenticationInProgress);
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                                vec![SCRAM_SHA_256_METHOD.to_string()],
                            )))
                            .await?;
                        Ok(())
                    }
                    Some(Method::Trust) => self.start_session(client).await,
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let mut state = self.auth.sasl.lock().await;
                if matches!(*state, SASLState::Initial | SASLState::Finished) {
                    return Err(PgWireError::NoAuthenticationInProgress);
                }
                let scram = &self.auth.authenticator.scram;
                let (reply, next, _) = scram
                    .process_scram_message(client, msg, &state)
                    .await
                    .map_err(|e| match e {
                        // Postgres' wording, with the login's user name (SCRAM's own user
                        // field is empty: Postgres clients send it in the startup packet)
                        PgWireError::InvalidPassword(_) => fatal(
                            SqlState::InvalidPassword,
                            format!(
                                "password authentication failed for user \"{}\"",
                                client
                                    .metadata()
                                    .get(METADATA_USER)
                                    .map(String::as_str)
                                    .unwrap_or_default()
                            ),
                        ),
                        other => other,
                    })?;
                let finished = matches!(next, SASLState::Finished);
                *state = next;
                drop(state);
                client
                    .send(PgWireBackendMessage::Authentication(reply))
                    .await?;
                if finished {
                    self.start_session(client).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Handler {
    /// Sends ParameterStatus for each reported parameter whose value changed since the
    /// client last heard (a SET, RESET, rollback, SET ROLE …), as Postgres does.
    async fn report_changes<C>(&self, client: &mut C, session: &Session) -> PgWireResult<()>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let generation = session.settings.lock().generation();
        let changed: Vec<(&'static str, String)> = {
            let mut reported = self.reported.lock();
            if reported.at.as_ref().is_some_and(|(g, user, role)| {
                *g == generation && *user == session.user && *role == session.role
            }) {
                return Ok(());
            }
            let at = (generation, session.user.clone(), session.role.clone());
            // the first call (right after start-up) only records what the client was told
            let first = reported.at.is_none();
            reported.at = Some(at);
            let mut now: Vec<(&'static str, String)> = {
                let settings = session.settings.lock();
                REPORTED
                    .iter()
                    .filter_map(|&n| settings.get(n).ok().map(|v| (n, v)))
                    .collect()
            };
            now.push(("session_authorization", session.user.clone()));
            let superuser = session.access().superuser;
            now.push(("is_superuser", if superuser { "on" } else { "off" }.into()));
            let mut changed = Vec::new();
            for (name, value) in now {
                if reported.values.get(name) != Some(&value) {
                    reported.values.insert(name, value.clone());
                    // the start-up already told the client the initial values
                    if !first {
                        changed.push((name, value));
                    }
                }
            }
            changed
        };
        for (name, value) in changed {
            client
                .send(PgWireBackendMessage::ParameterStatus(
                    pgwire::messages::startup::ParameterStatus::new(name.to_string(), value),
                ))
                .await?;
        }
        Ok(())
    }

    /// `DEALLOCATE [PREPARE] name | ALL`: forgets protocol-level prepared statements.
    fn deallocate<C>(&self, client: &mut C, name: &ast::Ident) -> DbResult<Response>
    where
        C: ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        let store = client.portal_store();
        if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
            for n in std::mem::take(&mut *self.statement_names.lock()) {
                store.rm_statement(&n);
            }
            return Ok(Response::Execution(Tag::new("DEALLOCATE ALL")));
        }
        if !self.statement_names.lock().remove(&name.value) {
            return Err(DbError::new(
                SqlState::InvalidSqlStatementName,
                format!("prepared statement \"{}\" does not exist", name.value),
            ));
        }
        store.rm_statement(&name.value);
        Ok(Response::Execution(Tag::new("DEALLOCATE")))
    }

    /// How long the session may sit idle before it is ended, and the FATAL error it gets:
    /// `idle_in_transaction_session_timeout` inside a block, `idle_session_timeout` outside.
    /// `None`: no limit (or a statement holds the session).
    pub fn idle_timeout(&self) -> Option<(Duration, DbError)> {
        let mut session = self.session.try_lock().ok()?;
        // the statement that just ran may have changed them
        session.sync_settings();
        let (idle, in_block) = session.idle_timeouts;
        if matches!(session.txn, crate::session::TxnStatus::Idle) {
            idle.map(|d| {
                let e = DbError::new(
                    SqlState::IdleSessionTimeout,
                    "terminating connection due to idle-session timeout",
                );
                (d, e)
            })
        } else {
            in_block.map(|d| {
                let e = DbError::new(
                    SqlState::IdleInTransactionSessionTimeout,
                    "terminating connection due to idle-in-transaction timeout",
                );
                (d, e)
            })
        }
    }

    /// The session's transaction state as ReadyForQuery reports it; `None` while a statement
    /// holds the session.
    pub fn transaction_status(&self) -> Option<pgwire::messages::response::TransactionStatus> {
        use pgwire::messages::response::TransactionStatus as S;
        let mut session = self.session.try_lock().ok()?;
        session.settle_stream_failure();
        Some(match session.txn {
            crate::session::TxnStatus::Idle => S::Idle,
            crate::session::TxnStatus::Block(_) => S::Transaction,
            crate::session::TxnStatus::Failed(_) => S::Error,
        })
    }

    /// After authentication: registers the connection for cancel requests, fills in the
    /// session's user and database, and sends AuthenticationOk, the ParameterStatus values
    /// and ReadyForQuery.
    async fn start_session<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (user, _) = login_names(client);
        let role = {
            let s = self.session.lock().await;
            s.instance.catalog.role(&user)
        };
        let Some(role) = role else {
            return Err(fatal(
                SqlState::InvalidAuthorizationSpecification,
                format!("role \"{user}\" does not exist"),
            ));
        };
        if !role.login {
            return Err(fatal(
                SqlState::InvalidAuthorizationSpecification,
                format!("role \"{user}\" is not permitted to log in"),
            ));
        }
        let pid = next_backend_pid();
        let secret = pgwire::messages::startup::SecretKey::I32(rand_secret());
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.connections.register(pid, secret);
        let for_sql = handle.clone();
        // kept under our own type: pgwire would otherwise race every statement against it
        // and drop the statement's future on cancel, even halfway through a write
        client
            .session_extensions()
            .insert::<CancelHandle>(CancelHandle(handle));
        client
            .session_extensions()
            .insert::<pgwire::api::ConnectionGuard>(guard);
        {
            let mut s = self.session.lock().await;
            s.set_session_user(&role.name);
            s.database = login_names(client).1;
            if let Some(app) = client.metadata().get("application_name").cloned() {
                let _ = s.settings.lock().set("application_name", &app, false);
            }
            s.backend_pid = pid;
            s.instance.register_backend(
                pid,
                Arc::new(move || {
                    let h = for_sql.clone();
                    tokio::spawn(async move { h.cancel().await });
                }),
            );
            s.refresh_functions();
        }
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = format!(
            "{} (OrochiDB {})",
            crate::handler::utility::SERVER_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        params.time_zone = "UTC".into();
        params.date_style = "ISO, MDY".into();
        params.is_superuser = role.superuser;
        finish_authentication(client, &params).await?;
        let session = self.session.lock().await;
        self.report_changes(client, &session).await
    }
}

/// The user and database a client logs in as (the database defaults to the user's name).
fn login_names<C: ClientInfo>(client: &C) -> (String, String) {
    let user = client
        .metadata()
        .get(METADATA_USER)
        .cloned()
        .unwrap_or_else(|| crate::privilege::BOOTSTRAP_SUPERUSER.into());
    let database = client
        .metadata()
        .get(METADATA_DATABASE)
        .cloned()
        .unwrap_or_else(|| user.clone());
    (user, database)
}

fn next_backend_pid() -> i32 {
    static NEXT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(10_000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn rand_secret() -> i32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as i32
}

#[async_trait]
impl CopyHandler for Handler {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut s = self.session.lock().await;
        crate::handler::copy::copy_data(&mut s, &copy_data.data)
            .await
            .map_err(|e| to_pgwire(&e, None))
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let mut s = self.session.lock().await;
        match crate::handler::copy::copy_done(&mut s).await {
            Ok(tag) => {
                client
                    .send(PgWireBackendMessage::CommandComplete(Tag::new(&tag).into()))
                    .await?;
                Ok(())
            }
            Err(e) => {
                if let crate::session::TxnStatus::Failed(_) = s.txn {
                    client.set_transaction_status(
                        pgwire::messages::response::TransactionStatus::Error,
                    );
                }
                Err(to_pgwire(&e, None))
            }
        }
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut s = self.session.lock().await;
        let e = crate::handler::copy::copy_fail(&mut s, &fail.message).await;
        to_pgwire(&e, None)
    }
}
