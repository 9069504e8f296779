//! INSERT, UPDATE and DELETE. DataFusion does not plan writes to our tables; we do:
//! - INSERT: VALUES of constants/parameters convert straight to rows; anything else is planned
//!   as a query and its output rows are coerced to the column types.
//! - UPDATE/DELETE: candidate rows come from a key lookup when the WHERE clause pins the whole
//!   primary key, else from a scan of every shard filtered by the predicate. Each candidate is
//!   then locked and re-read, and the predicate re-checked on the latest version, so concurrent
//!   writers of a row serialize like Postgres' read committed (no lost updates).

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use futures::TryStreamExt;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::{ColumnDefault, TableDef};
use orochi_common::service::{Row, ScanRequest, TxnId, WriteOp, WriteRequest};

use crate::error::df_to_db;
use crate::handler::eval::{
    Evaluator, const_datum, empty_batch, is_default_keyword, output_name, rows_to_batch,
    table_df_schema, zip_batches,
};
use crate::handler::query::bind_plan;
use crate::privilege::Privilege;
use crate::provider::OrochiTable;
use crate::session::{Params, Session, StatementResult};

const WRITE_CHUNK: usize = 10_000;

/// Splits an object name into (schema, name), case-folding unquoted parts.
pub fn object_name_parts(name: &ast::ObjectName) -> DbResult<(Option<String>, String)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p.as_ident() {
            Some(i) => Ok(normalize_ident(i)),
            None => Err(DbError::new(
                SqlState::SyntaxError,
                format!("invalid name {p}"),
            )),
        })
        .collect::<DbResult<_>>()?;
    match parts.as_slice() {
        [n] => Ok((None, n.clone())),
        [s, n] => Ok((Some(s.clone()), n.clone())),
        [_db, s, n] => Ok((Some(s.clone()), n.clone())),
        _ => Err(DbError::new(
            SqlState::SyntaxError,
            format!("improper qualified name: {name}"),
        )),
    }
}

pub fn normalize_ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

pub fn resolve_table(s: &Session, name: &ast::ObjectName) -> DbResult<Arc<TableDef>> {
    let (schema, table) = object_name_parts(name)?;
    s.planner()
        .resolve_table(schema.as_deref(), &table)
        .ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedTable,
                format!("relation \"{}\" does not exist", name),
            )
        })
}

fn column_index(def: &TableDef, name: &str) -> DbResult<usize> {
    def.column_index(name).ok_or_else(|| {
        DbError::new(
            SqlState::UndefinedColumn,
            format!(
                "column \"{name}\" of relation \"{}\" does not exist",
                def.name
            ),
        )
    })
}

fn check_not_null(def: &TableDef, row: &[Datum]) -> DbResult<()> {
    for (c, v) in def.columns.iter().zip(row) {
        if v.is_null() && !c.nullable && !c.dropped {
            return Err(DbError::new(
                SqlState::NotNullViolation,
                format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    c.name, def.name
                ),
            ));
        }
    }
    Ok(())
}

/// Computes the value of a column the statement did not provide.
pub fn default_value(s: &Session, def: &TableDef, col: usize, now_micros: i64) -> DbResult<Datum> {
    let c = &def.columns[col];
    if c.hidden {
        return Ok(Datum::Int8(
            s.instance.catalog.nextval("pg_catalog", ROWID_SEQUENCE)?,
        ));
    }
    let v = match &c.default {
        None => Datum::Null,
        Some(ColumnDefault::Const(d)) => d.clone(),
        Some(ColumnDefault::Now) => Datum::Timestamptz(now_micros),
        Some(ColumnDefault::Sequence(name)) => {
            let (schema, seq) = name.split_once('.').unwrap_or(("public", name));
            Datum::Int8(s.instance.catalog.nextval(schema, seq)?)
        }
        Some(ColumnDefault::Expr(sql)) => {
            let expr = crate::pgwire::parse::parse_expr(sql)?;
            let ev = Evaluator::plan(s, &[expr], &DFSchema::empty(), &vec![])?;
            let arrays = ev.evaluate(&empty_batch(1))?;
            Datum::from_arrow(arrays[0].as_ref(), 0, c.ty)?
        }
    };
    v.coerce_to(c.ty)
}

/// The sequence that numbers hidden row ids of tables without a primary key.
pub const ROWID_SEQUENCE: &str = "orochi_rowid_seq";

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn rows_result(schema: SchemaRef, batches: Vec<RecordBatch>, tag: &str) -> StatementResult {
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    StatementResult::Rows {
        schema: schema.clone(),
        stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        tag: tag.to_string(),
    }
}

/// RETURNING items evaluated over rows of `def` (visible columns, qualified by `alias`).
fn returning(
    s: &Session,
    def: &TableDef,
    alias: &str,
    items: &[ast::SelectItem],
    rows: &[Row],
    params: &Params,
    tag: &str,
) -> DbResult<StatementResult> {
    let (df_schema, _) = table_df_schema(def, alias)?;
    let mut exprs = Vec::new();
    let mut names = Vec::new();
    for item in items {
        match item {
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..) => {
                for i in def.visible_columns() {
                    let c = &def.columns[i];
                    exprs.push(ast::Expr::Identifier(ast::Ident::with_quote(
                        '"',
                        c.name.clone(),
                    )));
                    names.push(c.name.clone());
                }
            }
            ast::SelectItem::UnnamedExpr(e) => {
                exprs.push(e.clone());
                names.push(output_name(e));
            }
            ast::SelectItem::ExprWithAlias { expr, alias } => {
                exprs.push(expr.clone());
                names.push(normalize_ident(alias));
            }
            other => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("RETURNING {other} is not supported yet"),
                ));
            }
        }
    }
    let ev = Evaluator::plan(s, &exprs, &df_schema, params)?;
    let batch = rows_to_batch(def, rows)?;
    let arrays: Vec<ArrayRef> = ev.evaluate(&batch)?;
    let fields: Vec<arrow::datatypes::Field> = arrays
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (a, n))| {
            let f = arrow::datatypes::Field::new(n, a.data_type().clone(), true);
            // keep pg type metadata for plain column references
            match exprs.get(i) {
                Some(ast::Expr::Identifier(id)) => match def.column_index(&normalize_ident(id)) {
                    Some(ci) => def.columns[ci].ty.arrow_field(n, true),
                    None => f,
                },
                _ => f,
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let out = RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )
    .map_err(|e| DbError::internal(format!("RETURNING batch: {e}")))?;
    Ok(rows_result(schema, vec![out], tag))
}

async fn write_ops(
    s: &Session,
    txn: TxnId,
    def: &TableDef,
    ops: Vec<WriteOp>,
) -> DbResult<Vec<bool>> {
    let mut applied = Vec::with_capacity(ops.len());
    let mut ops = ops;
    while !ops.is_empty() {
        let rest = if ops.len() > WRITE_CHUNK {
            ops.split_off(WRITE_CHUNK)
        } else {
            Vec::new()
        };
        let resp = s
            .instance
            .service
            .write(
                txn,
                WriteRequest {
                    table: def.id,
                    ops,
                    lock_timeout: s.lock_timeout,
                },
            )
            .await?;
        applied.extend(resp.applied);
        ops = rest;
    }
    Ok(applied)
}

pub async fn handle_insert(
    s: &mut Session,
    ins: &ast::Insert,
    params: &Params,
    txn: TxnId,
) -> DbResult<StatementResult> {
    let ast::TableObject::TableName(name) = &ins.table else {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "INSERT into a table function is not supported",
        ));
    };
    let def = resolve_table(s, name)?;
    s.check_table(&def, Privilege::Insert)?;
    if ins.returning.is_some() {
        s.check_table(&def, Privilege::Select)?;
    }
    if let Some(ast::OnInsert::OnConflict(oc)) = &ins.on
        && matches!(oc.action, ast::OnConflictAction::DoUpdate(_))
    {
        s.check_table(&def, Privilege::Update)?;
    }
    let targets = insert_targets(&def, &ins.columns)?;
    let values = insert_source_rows(
        s,
        &def,
        &targets,
        ins.columns.is_empty(),
        ins.source.as_deref(),
        params,
    )
    .await?;
    let now = now_micros();
    let mut rows: Vec<Row> = Vec::with_capacity(values.len());
    for v in values {
        let mut row: Row = vec![Datum::Null; def.columns.len()];
        let mut given = vec![false; def.columns.len()];
        for (&col, val) in targets.iter().zip(v) {
            if let Some(val) = val {
                check_identity_assignment(&def, col, false)?;
                row[col] = val;
                given[col] = true;
            }
        }
        for (i, c) in def.columns.iter().enumerate() {
            if !given[i] && !c.dropped {
                row[i] = default_value(s, &def, i, now)?;
            }
        }
        check_not_null(&def, &row)?;
        rows.push(row);
    }
    let on_conflict = match &ins.on {
        None => None,
        Some(ast::OnInsert::OnConflict(oc)) => {
            check_conflict_target(&def, oc.conflict_target.as_ref())?;
            Some(&oc.action)
        }
        Some(other) => {
            return Err(DbError::new(
                SqlState::FeatureNotSupported,
                format!("{other} is not supported"),
            ));
        }
    };
    let alias = ins
        .table_alias
        .as_ref()
        .map(|a| normalize_ident(&a.alias))
        .unwrap_or_else(|| def.name.clone());
    let (count, affected) = match on_conflict {
        None => {
            let ops = rows
                .iter()
                .map(|r| WriteOp::Insert { row: r.clone() })
                .collect();
            write_ops(s, txn, &def, ops).await?;
            (rows.len(), rows)
        }
        Some(ast::OnConflictAction::DoNothing) => {
            let ops = rows
                .iter()
                .map(|r| WriteOp::InsertIgnore { row: r.clone() })
                .collect();
            let applied = write_ops(s, txn, &def, ops).await?;
            let affected: Vec<Row> = rows
                .into_iter()
                .zip(applied)
                .filter(|(_, a)| *a)
                .map(|(r, _)| r)
                .collect();
            (affected.len(), affected)
        }
        Some(ast::OnConflictAction::DoUpdate(du)) => {
            on_conflict_do_update(s, &def, &alias, rows, du, params, txn).await?
        }
    };
    match &ins.returning {
        Some(items) => returning(s, &def, &alias, items, &affected, params, "INSERT 0"),
        None => Ok(StatementResult::Command(format!("INSERT 0 {count}"))),
    }
}

/// Physical indexes of an INSERT's target columns (all visible columns when none are named).
pub fn insert_targets(def: &TableDef, columns: &[ast::ObjectName]) -> DbResult<Vec<usize>> {
    if columns.is_empty() {
        return Ok(def.visible_columns());
    }
    columns
        .iter()
        .map(|c| {
            let id =
                c.0.last()
                    .and_then(|p| p.as_ident())
                    .map(normalize_ident)
                    .unwrap_or_default();
            column_index(def, &id)
        })
        .collect()
}

fn check_conflict_target(def: &TableDef, target: Option<&ast::ConflictTarget>) -> DbResult<()> {
    let ok = match target {
        None => true,
        Some(ast::ConflictTarget::Columns(cols)) => {
            let mut names: Vec<String> = cols.iter().map(normalize_ident).collect();
            let mut pk: Vec<String> = def
                .primary_key
                .iter()
                .map(|&i| def.columns[i].name.clone())
                .collect();
            names.sort();
            pk.sort();
            names == pk && !def.hidden_rowid
        }
        Some(ast::ConflictTarget::OnConstraint(name)) => {
            name.to_string().trim_matches('"') == format!("{}_pkey", def.name)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(DbError::new(
            SqlState::InvalidColumnReference,
            "there is no unique or exclusion constraint matching the ON CONFLICT specification",
        ))
    }
}

async fn on_conflict_do_update(
    s: &Session,
    def: &TableDef,
    alias: &str,
    rows: Vec<Row>,
    du: &ast::DoUpdate,
    params: &Params,
    txn: TxnId,
) -> DbResult<(usize, Vec<Row>)> {
    let ops = rows
        .iter()
        .map(|r| WriteOp::InsertIgnore { row: r.clone() })
        .collect();
    let applied = write_ops(s, txn, def, ops).await?;
    let mut affected = Vec::new();
    let mut conflicting = Vec::new();
    for (r, a) in rows.into_iter().zip(applied) {
        if a {
            affected.push(r)
        } else {
            conflicting.push(r)
        }
    }
    if conflicting.is_empty() {
        return Ok((affected.len(), affected));
    }
    // evaluate SET/WHERE over (existing row as `alias`, proposed row as `excluded`)
    let (t_schema, t_arrow) = table_df_schema(def, alias)?;
    let (ex_schema, ex_arrow) = table_df_schema(def, "excluded")?;
    let combined = t_schema.join(&ex_schema).map_err(df_to_db)?;
    let mut fields: Vec<_> = t_arrow.fields().iter().cloned().collect();
    fields.extend(ex_arrow.fields().iter().cloned());
    let combined_arrow = Arc::new(Schema::new(fields));
    let (targets, exprs) = assignments(def, &du.assignments)?;
    let set_ev = Evaluator::plan(s, &exprs, &combined, params)?;
    let where_ev = match &du.selection {
        Some(w) => Some(Evaluator::plan(
            s,
            std::slice::from_ref(w),
            &combined,
            params,
        )?),
        None => None,
    };
    let keys: Vec<Vec<u8>> = conflicting.iter().map(|r| def.encode_key(r)).collect();
    let existing = s
        .instance
        .service
        .get(txn, def.id, &keys, true, s.lock_timeout)
        .await?;
    let mut pairs = Vec::new();
    for (proposed, ex) in conflicting.into_iter().zip(existing) {
        if let Some(ex) = ex {
            pairs.push((ex, proposed));
        }
    }
    let (old_rows, proposed): (Vec<Row>, Vec<Row>) = pairs.into_iter().unzip();
    let batch = zip_batches(
        combined_arrow,
        &rows_to_batch(def, &old_rows)?,
        &rows_to_batch(def, &proposed)?,
    )?;
    let pass = match &where_ev {
        Some(ev) => ev.filter(&batch)?,
        None => vec![true; batch.num_rows()],
    };
    let new_values = set_ev.evaluate(&batch)?;
    let mut ops = Vec::new();
    for (i, old) in old_rows.iter().enumerate() {
        if !pass[i] {
            continue;
        }
        let row = apply_assignments(def, old, &targets, &new_values, i)?;
        ops.push(WriteOp::Update {
            old_key: def.encode_key(old),
            row: row.clone(),
        });
        affected.push(row);
    }
    write_ops(s, txn, def, ops).await?;
    Ok((affected.len(), affected))
}

/// A value given for a `GENERATED ALWAYS AS IDENTITY` column: refused (428C9), on INSERT
/// as on UPDATE (`update`), as Postgres does.
fn check_identity_assignment(def: &TableDef, col: usize, update: bool) -> DbResult<()> {
    let c = &def.columns[col];
    if c.identity != Some(orochi_common::schema::Identity::Always) {
        return Ok(());
    }
    Err(if update {
        DbError::new(
            SqlState::GeneratedAlways,
            format!("column \"{}\" can only be updated to DEFAULT", c.name),
        )
        .with_detail(format!(
            "Column \"{}\" is an identity column defined as GENERATED ALWAYS.",
            c.name
        ))
    } else {
        DbError::new(
            SqlState::GeneratedAlways,
            format!(
                "cannot insert a non-DEFAULT value into column \"{}\"",
                c.name
            ),
        )
        .with_detail(format!(
            "Column \"{}\" is an identity column defined as GENERATED ALWAYS.",
            c.name
        ))
    })
}

/// Target column indexes and value expressions of SET assignments.
fn assignments(def: &TableDef, list: &[ast::Assignment]) -> DbResult<(Vec<usize>, Vec<ast::Expr>)> {
    let mut targets = Vec::new();
    let mut exprs = Vec::new();
    for a in list {
        match &a.target {
            ast::AssignmentTarget::ColumnName(name) => {
                let col = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(normalize_ident)
                    .unwrap_or_default();
                let index = column_index(def, &col)?;
                if !is_default_keyword(&a.value) {
                    check_identity_assignment(def, index, true)?;
                }
                targets.push(index);
                exprs.push(a.value.clone());
            }
            ast::AssignmentTarget::Tuple(_) => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    "multi-column assignment is not supported yet",
                ));
            }
        }
    }
    Ok((targets, exprs))
}

fn apply_assignments(
    def: &TableDef,
    old: &Row,
    targets: &[usize],
    values: &[ArrayRef],
    i: usize,
) -> DbResult<Row> {
    let mut row = old.clone();
    for (&col, arr) in targets.iter().zip(values) {
        row[col] = Datum::from_arrow(arr.as_ref(), i, def.columns[col].ty)?;
    }
    check_not_null(def, &row)?;
    Ok(row)
}

/// Rows of target-column values (`None` = DEFAULT) produced by an INSERT's source.
async fn insert_source_rows(
    s: &Session,
    def: &TableDef,
    targets: &[usize],
    implicit_columns: bool,
    source: Option<&ast::Query>,
    params: &Params,
) -> DbResult<Vec<Vec<Option<Datum>>>> {
    let Some(q) = source else {
        return Ok(vec![vec![None; targets.len()]]); // DEFAULT VALUES
    };
    let types: Vec<_> = targets.iter().map(|&i| def.columns[i].ty).collect();
    if let ast::SetExpr::Values(values) = q.body.as_ref()
        && q.with.is_none()
        && q.order_by.is_none()
        && q.limit_clause.is_none()
    {
        let mut out = Vec::with_capacity(values.rows.len());
        for row in &values.rows {
            if row.len() > targets.len() {
                return Err(DbError::new(
                    SqlState::SyntaxError,
                    "INSERT has more expressions than target columns",
                ));
            }
            if row.len() < targets.len() && !implicit_columns {
                return Err(DbError::new(
                    SqlState::SyntaxError,
                    "INSERT has more target columns than expressions",
                ));
            }
            let mut vals = Vec::with_capacity(row.len());
            for (k, e) in row.iter().enumerate() {
                if is_default_keyword(e) {
                    vals.push(None);
                    continue;
                }
                let v = match const_datum(e, types[k], params, &s.zone) {
                    Some(v) => v?,
                    None => {
                        let ev = Evaluator::plan(
                            s,
                            std::slice::from_ref(e),
                            &DFSchema::empty(),
                            params,
                        )?;
                        let arrays = ev.evaluate(&empty_batch(1))?;
                        Datum::from_arrow(arrays[0].as_ref(), 0, types[k])?
                    }
                };
                vals.push(Some(v));
            }
            out.push(vals);
        }
        return Ok(out);
    }
    // general case: plan the source as a query
    let mut q = q.clone();
    crate::functions::bind_table_function_args(&mut q, Some(params));
    let plan = s.planner().plan_positional_query(q).map_err(df_to_db)?;
    let plan = bind_plan(plan, params)?;
    let produced = plan.schema().fields().len();
    if produced > targets.len() || (produced < targets.len() && !implicit_columns) {
        return Err(DbError::new(
            SqlState::SyntaxError,
            if produced > targets.len() {
                "INSERT has more expressions than target columns"
            } else {
                "INSERT has more target columns than expressions"
            },
        ));
    }
    let physical = s
        .state
        .create_physical_plan(&plan)
        .await
        .map_err(df_to_db)?;
    let batches: Vec<RecordBatch> =
        datafusion::physical_plan::collect(physical, s.state.task_ctx())
            .await
            .map_err(df_to_db)?;
    let mut out = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let mut vals = Vec::with_capacity(targets.len());
            for (k, col) in b.columns().iter().enumerate() {
                vals.push(Some(Datum::from_arrow(col.as_ref(), r, types[k])?));
            }
            out.push(vals);
        }
    }
    Ok(out)
}

/// The table and its alias (the table name when none is given) of an UPDATE/DELETE target.
pub fn dml_target(s: &Session, twj: &ast::TableWithJoins) -> DbResult<(Arc<TableDef>, String)> {
    if !twj.joins.is_empty() {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "UPDATE/DELETE with joins is not supported yet",
        ));
    }
    let ast::TableFactor::Table { name, alias, .. } = &twj.relation else {
        return Err(DbError::new(
            SqlState::SyntaxError,
            "UPDATE/DELETE target must be a table",
        ));
    };
    let def = resolve_table(s, name)?;
    let alias = alias
        .as_ref()
        .map(|a| normalize_ident(&a.name))
        .unwrap_or_else(|| def.name.clone());
    Ok((def, alias))
}

/// The encoded keys to look up when `selection` pins the whole primary key, else `None`
/// (the statement has to scan every shard).
pub fn pinned_keys(
    s: &Session,
    def: &Arc<TableDef>,
    df_schema: &DFSchema,
    selection: Option<&ast::Expr>,
    params: &Params,
) -> DbResult<Option<Vec<Vec<u8>>>> {
    let Some(w) = selection else { return Ok(None) };
    let logical = s
        .planner()
        .plan_expr(w.clone(), df_schema)
        .map_err(df_to_db)?;
    let logical = crate::handler::eval::bind_placeholders(logical, params)?;
    Ok(OrochiTable::new(def.clone(), s.instance.service.clone()).pinned_keys(&[&logical]))
}

/// The single target of a DELETE.
pub fn delete_target(del: &ast::Delete) -> DbResult<&ast::TableWithJoins> {
    let tables = match &del.from {
        ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
    };
    match tables.as_slice() {
        [twj] => Ok(twj),
        _ => Err(DbError::new(
            SqlState::FeatureNotSupported,
            "DELETE from several tables is not supported",
        )),
    }
}

/// Finds and locks the rows a WHERE clause selects, returning the current version of each.
async fn locked_matches(
    s: &Session,
    def: &Arc<TableDef>,
    alias: &str,
    selection: Option<&ast::Expr>,
    params: &Params,
    txn: TxnId,
) -> DbResult<(Vec<Row>, DFSchema)> {
    let (df_schema, _) = table_df_schema(def, alias)?;
    let where_ev = match selection {
        Some(w) => Some(Evaluator::plan(
            s,
            std::slice::from_ref(w),
            &df_schema,
            params,
        )?),
        None => None,
    };
    let pinned = pinned_keys(s, def, &df_schema, selection, params)?;
    let candidates: Vec<Vec<u8>> = match pinned {
        Some(keys) => keys,
        None => {
            let visible_pos: Vec<usize> = def.visible_columns();
            // the workers evaluate the WHERE clause where they can and send back only the
            // keys of the rows that pass; otherwise every row comes here to be checked
            let mut projection = visible_pos.clone();
            for &c in &def.primary_key {
                if !projection.contains(&c) {
                    projection.push(c);
                }
            }
            let key_at: Vec<usize> = def
                .primary_key
                .iter()
                .map(|c| projection.iter().position(|p| p == c).expect("added above"))
                .collect();
            let fragment = where_ev.as_ref().and_then(|ev| {
                let fields: Vec<_> = projection
                    .iter()
                    .map(|&i| def.columns[i].ty.arrow_field(&def.columns[i].name, true))
                    .collect();
                crate::exec::pushdown::filter_fragment(
                    Arc::new(arrow::datatypes::Schema::new(fields)),
                    ev.exprs[0].clone(),
                    key_at.clone(),
                )
            });
            let pushed = fragment.is_some();
            let mut stream = s
                .instance
                .service
                .scan(
                    txn,
                    ScanRequest {
                        fragment: fragment.map(|f| f.bytes.as_ref().clone()),
                        ..ScanRequest::full(def, projection, 8192)
                    },
                )
                .await?;
            // a fragment returns the key columns of matching rows; else the key is in the row
            let key_cols: Vec<usize> = if pushed {
                (0..key_at.len()).collect()
            } else {
                key_at
            };
            let visible_cols: Vec<usize> = (0..visible_pos.len()).collect();
            let mut keys = Vec::new();
            while let Some(batch) = stream.try_next().await? {
                let pass = match &where_ev {
                    Some(ev) if !pushed => {
                        let visible = batch
                            .project(&visible_cols)
                            .map_err(|e| DbError::internal(e.to_string()))?;
                        ev.filter(&visible)?
                    }
                    _ => vec![true; batch.num_rows()],
                };
                for (r, p) in pass.iter().enumerate() {
                    if *p {
                        let key_vals: Vec<Datum> = def
                            .primary_key
                            .iter()
                            .zip(&key_cols)
                            .map(|(&c, &at)| {
                                Datum::from_arrow(batch.column(at).as_ref(), r, def.columns[c].ty)
                            })
                            .collect::<DbResult<_>>()?;
                        keys.push(orochi_worker::service::encode_key_values(&key_vals));
                    }
                }
            }
            keys
        }
    };
    // lock, re-read, re-check
    let mut out = Vec::new();
    for chunk in candidates.chunks(1000) {
        let rows: Vec<Row> = s
            .instance
            .service
            .get(txn, def.id, chunk, true, s.lock_timeout)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if rows.is_empty() {
            continue;
        }
        let pass = match &where_ev {
            Some(ev) => ev.filter(&rows_to_batch(def, &rows)?)?,
            None => vec![true; rows.len()],
        };
        out.extend(
            rows.into_iter()
                .zip(pass)
                .filter(|(_, p)| *p)
                .map(|(r, _)| r),
        );
    }
    Ok((out, df_schema))
}

pub async fn handle_update(
    s: &mut Session,
    upd: &ast::Update,
    params: &Params,
    txn: TxnId,
) -> DbResult<StatementResult> {
    if upd.from.is_some() {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "UPDATE ... FROM is not supported yet",
        ));
    }
    let (def, alias) = dml_target(s, &upd.table)?;
    s.check_table(&def, Privilege::Update)?;
    // reading the rows (a WHERE, RETURNING) needs SELECT too, as in Postgres
    if upd.selection.is_some() || upd.returning.is_some() {
        s.check_table(&def, Privilege::Select)?;
    }
    let (targets, exprs) = assignments(&def, &upd.assignments)?;
    let (old_rows, df_schema) =
        locked_matches(s, &def, &alias, upd.selection.as_ref(), params, txn).await?;
    let set_ev = Evaluator::plan(s, &exprs, &df_schema, params)?;
    let mut new_rows = Vec::with_capacity(old_rows.len());
    let mut ops = Vec::with_capacity(old_rows.len());
    for chunk in old_rows.chunks(8192) {
        let values = set_ev.evaluate(&rows_to_batch(&def, chunk)?)?;
        for (i, old) in chunk.iter().enumerate() {
            let row = apply_assignments(&def, old, &targets, &values, i)?;
            ops.push(WriteOp::Update {
                old_key: def.encode_key(old),
                row: row.clone(),
            });
            new_rows.push(row);
        }
    }
    write_ops(s, txn, &def, ops).await?;
    match &upd.returning {
        Some(items) => returning(s, &def, &alias, items, &new_rows, params, "UPDATE"),
        None => Ok(StatementResult::Command(format!(
            "UPDATE {}",
            new_rows.len()
        ))),
    }
}

pub async fn handle_delete(
    s: &mut Session,
    del: &ast::Delete,
    params: &Params,
    txn: TxnId,
) -> DbResult<StatementResult> {
    if del.using.is_some() {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "DELETE ... USING is not supported yet",
        ));
    }
    let twj = delete_target(del)?;
    let (def, alias) = dml_target(s, twj)?;
    s.check_table(&def, Privilege::Delete)?;
    if del.selection.is_some() || del.returning.is_some() {
        s.check_table(&def, Privilege::Select)?;
    }
    let (old_rows, _) =
        locked_matches(s, &def, &alias, del.selection.as_ref(), params, txn).await?;
    let ops = old_rows
        .iter()
        .map(|r| WriteOp::Delete {
            key: def.encode_key(r),
        })
        .collect();
    write_ops(s, txn, &def, ops).await?;
    match &del.returning {
        Some(items) => returning(s, &def, &alias, items, &old_rows, params, "DELETE"),
        None => Ok(StatementResult::Command(format!(
            "DELETE {}",
            old_rows.len()
        ))),
    }
}
