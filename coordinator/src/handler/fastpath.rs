//! The fast path: point statements that pin a table's full primary key run straight against
//! the shard service, with no DataFusion planning.
//!
//! Recognized shapes (everything else, and anything here that cannot be decided without the
//! planner, goes the general way):
//! - `SELECT col [AS a], … | * FROM t [alias] WHERE pk1 = v1 [AND pk2 = v2 …]`
//! - `UPDATE t SET c = v | c = c ± v [, …] WHERE pk1 = v1 [AND …]` (non-key columns only)
//!
//! where each `v` is a literal or a `$n` parameter. Values are converted to the key column's
//! type exactly (`aid = 1.5` on an integer key is not a key lookup and is left to the planner),
//! so the answer is the one the general path gives, only cheaper: one `get` by key.

use orochi_common::zone::Zone;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::TableDef;
use orochi_common::service::{TxnId, WriteOp, WriteRequest};
use orochi_common::types::SqlType;
use orochi_worker::batch::BatchBuilder;
use orochi_worker::service::encode_key_values;

use crate::handler::dml::{normalize_ident, object_name_parts};
use crate::provider::scalar_to_datum;
use crate::session::{Params, Session, StatementResult};

/// A value in the statement: a literal (as written) or a `$n` parameter (0-based index).
#[derive(Debug, Clone)]
enum Value {
    Number(String),
    String(String),
    Bool(bool),
    Param(usize),
}

#[derive(Debug, Clone)]
enum Assignment {
    Set(Value),
    /// `c = c + v` (`negate`: `c = c - v`).
    Add {
        value: Value,
        negate: bool,
    },
}

/// A recognized point statement over one table.
#[derive(Debug, Clone)]
enum Shape {
    Select {
        /// Output columns (physical indexes) and their names.
        columns: Vec<(usize, String)>,
    },
    Update {
        assignments: Vec<(usize, Assignment)>,
    },
}

#[derive(Debug, Clone)]
pub struct FastPlan {
    def: Arc<TableDef>,
    /// One value per primary-key column, in key order.
    key: Vec<Value>,
    shape: Shape,
}

/// Recognizes a point statement. `None`: not one (use the general path).
pub fn plan(s: &Session, stmt: &ast::Statement) -> Option<FastPlan> {
    match stmt {
        ast::Statement::Query(q) => plan_select(s, q),
        ast::Statement::Update(u) => plan_update(s, u),
        _ => None,
    }
}

fn plan_select(s: &Session, q: &ast::Query) -> Option<FastPlan> {
    if q.with.is_some()
        || q.order_by.is_some()
        || q.limit_clause.is_some()
        || q.fetch.is_some()
        || !q.locks.is_empty()
    {
        return None;
    }
    let ast::SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    if sel.distinct.is_some()
        || sel.top.is_some()
        || sel.into.is_some()
        || !sel.lateral_views.is_empty()
        || sel.having.is_some()
        || !sel.named_window.is_empty()
        || sel.qualify.is_some()
        || !matches!(&sel.group_by, ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        || sel.from.len() != 1
    {
        return None;
    }
    let (def, alias) = single_table(s, &sel.from[0])?;
    let key = pinned_key(&def, &alias, sel.selection.as_ref()?)?;
    let mut columns = Vec::new();
    for item in &sel.projection {
        match item {
            ast::SelectItem::Wildcard(opts) if is_plain_wildcard(opts) => {
                columns.extend(
                    def.visible_columns()
                        .into_iter()
                        .map(|i| (i, def.columns[i].name.clone())),
                );
            }
            ast::SelectItem::UnnamedExpr(e) => {
                let c = column_ref(&def, &alias, e)?;
                columns.push((c, def.columns[c].name.clone()));
            }
            ast::SelectItem::ExprWithAlias { expr, alias: a } => {
                let c = column_ref(&def, &alias, expr)?;
                columns.push((c, normalize_ident(a)));
            }
            _ => return None,
        }
    }
    Some(FastPlan {
        def,
        key,
        shape: Shape::Select { columns },
    })
}

fn plan_update(s: &Session, u: &ast::Update) -> Option<FastPlan> {
    if u.from.is_some() || u.returning.is_some() || u.or.is_some() || u.limit.is_some() {
        return None;
    }
    let (def, alias) = single_table(s, &u.table)?;
    let key = pinned_key(&def, &alias, u.selection.as_ref()?)?;
    let mut assignments = Vec::new();
    for a in &u.assignments {
        let ast::AssignmentTarget::ColumnName(n) = &a.target else {
            return None;
        };
        let [part] = n.0.as_slice() else {
            return None;
        };
        let col = def.column_index(&normalize_ident(part.as_ident()?))?;
        if def.primary_key.contains(&col) || assignments.iter().any(|(c, _)| *c == col) {
            return None;
        }
        let assignment = match &a.value {
            ast::Expr::BinaryOp { left, op, right }
                if matches!(op, ast::BinaryOperator::Plus | ast::BinaryOperator::Minus) =>
            {
                if column_ref(&def, &alias, left)? != col || !def.columns[col].ty.is_integer() {
                    return None;
                }
                Assignment::Add {
                    value: value(right)?,
                    negate: matches!(op, ast::BinaryOperator::Minus),
                }
            }
            e => Assignment::Set(value(e)?),
        };
        assignments.push((col, assignment));
    }
    Some(FastPlan {
        def,
        key,
        shape: Shape::Update { assignments },
    })
}

fn is_plain_wildcard(o: &ast::WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
}

/// The table of a plain `FROM t [alias]` (no joins, no table functions), and the name columns
/// may be qualified with.
fn single_table(s: &Session, twj: &ast::TableWithJoins) -> Option<(Arc<TableDef>, String)> {
    if !twj.joins.is_empty() {
        return None;
    }
    let ast::TableFactor::Table {
        name,
        alias,
        args: None,
        with_hints,
        version: None,
        partitions,
        ..
    } = &twj.relation
    else {
        return None;
    };
    if !with_hints.is_empty() || !partitions.is_empty() {
        return None;
    }
    let (schema, table) = object_name_parts(name).ok()?;
    let def = s.planner().resolve_table(schema.as_deref(), &table)?;
    let alias = match alias {
        Some(a) if a.columns.is_empty() => normalize_ident(&a.name),
        Some(_) => return None,
        None => def.name.clone(),
    };
    Some((def, alias))
}

/// A reference to one of the table's visible columns (`c` or `alias.c`).
fn column_ref(def: &TableDef, alias: &str, e: &ast::Expr) -> Option<usize> {
    let name = match e {
        ast::Expr::Identifier(i) => normalize_ident(i),
        ast::Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [q, c] if normalize_ident(q) == alias => normalize_ident(c),
            _ => return None,
        },
        ast::Expr::Nested(inner) => return column_ref(def, alias, inner),
        _ => return None,
    };
    def.column_index(&name)
}

fn value(e: &ast::Expr) -> Option<Value> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => Some(Value::Number(n.clone())),
            ast::Value::SingleQuotedString(s) => Some(Value::String(s.clone())),
            ast::Value::Boolean(b) => Some(Value::Bool(*b)),
            ast::Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                n.checked_sub(1).map(Value::Param)
            }
            _ => None,
        },
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => match value(expr)? {
            Value::Number(n) if !n.starts_with('-') => Some(Value::Number(format!("-{n}"))),
            _ => None,
        },
        ast::Expr::Nested(inner) => value(inner),
        _ => None,
    }
}

/// `pk1 = v1 AND pk2 = v2 …` covering every key column exactly once, nothing else.
fn pinned_key(def: &TableDef, alias: &str, selection: &ast::Expr) -> Option<Vec<Value>> {
    let mut key: Vec<Option<Value>> = vec![None; def.primary_key.len()];
    let mut conjuncts = vec![selection];
    while let Some(e) = conjuncts.pop() {
        match e {
            ast::Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::And,
                right,
            } => {
                conjuncts.push(left);
                conjuncts.push(right);
            }
            ast::Expr::Nested(inner) => conjuncts.push(inner),
            ast::Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Eq,
                right,
            } => {
                let (col, v) = match (column_ref(def, alias, left), column_ref(def, alias, right)) {
                    (Some(c), None) => (c, value(right)?),
                    (None, Some(c)) => (c, value(left)?),
                    _ => return None,
                };
                let pos = def.primary_key.iter().position(|&k| k == col)?;
                if key[pos].replace(v).is_some() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    key.into_iter().collect()
}

/// A statement value as a datum of `ty`, exactly; `None` when the conversion is not exact
/// (the general path then decides what the comparison means, or reports the error).
fn datum(v: &Value, ty: SqlType, params: &Params, zone: &Zone) -> Option<Datum> {
    match v {
        Value::Number(n) => {
            if ty.is_integer() && !n.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                return None;
            }
            Datum::parse(ty, n).ok()
        }
        Value::String(s) => Datum::parse_in(ty, s, zone).ok(),
        Value::Bool(b) => (ty == SqlType::Bool).then_some(Datum::Bool(*b)),
        Value::Param(i) => {
            let d = scalar_to_datum(params.get(*i)?, ty)?;
            if d == Datum::Null { None } else { Some(d) }
        }
    }
}

/// Key types whose literal spelling maps to exactly one stored key (no `1.5` = `1.50`, no
/// `-0` = `0`, no padding rules): only these take the fast path.
fn exact_key_type(ty: SqlType) -> bool {
    matches!(
        ty,
        SqlType::Int2
            | SqlType::Int4
            | SqlType::Int8
            | SqlType::Text
            | SqlType::Varchar(_)
            | SqlType::Uuid
            | SqlType::Date
            | SqlType::Bool
    )
}

/// Runs a fast plan. `Ok(None)`: the values do not allow the fast path after all (nothing was
/// done; run the general path).
pub async fn execute(
    s: &Session,
    plan: &FastPlan,
    params: &Params,
    txn: TxnId,
) -> DbResult<Option<StatementResult>> {
    let def = &plan.def;
    if !def
        .primary_key
        .iter()
        .all(|&c| exact_key_type(def.columns[c].ty))
    {
        return Ok(None);
    }
    let mut key_values = Vec::with_capacity(plan.key.len());
    for (v, &col) in plan.key.iter().zip(&def.primary_key) {
        match datum(v, def.columns[col].ty, params, &s.zone) {
            Some(d) => key_values.push(d),
            None => return Ok(None),
        }
    }
    let key = encode_key_values(&key_values);
    s.check_table(def, crate::privilege::Privilege::Select)?;
    if matches!(plan.shape, Shape::Update { .. }) {
        s.check_table(def, crate::privilege::Privilege::Update)?;
    }
    match &plan.shape {
        Shape::Select { columns } => {
            let rows = s
                .instance
                .service
                .get(txn, def.id, std::slice::from_ref(&key), false, None)
                .await?;
            let projection: Vec<usize> = columns.iter().map(|(c, _)| *c).collect();
            let mut builder = BatchBuilder::new(def, &projection, 1);
            for row in rows.iter().flatten() {
                builder.push(projection.iter().map(|&c| &row[c]))?;
            }
            let built = builder.finish()?;
            let schema: SchemaRef = Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|(c, name)| def.columns[*c].ty.arrow_field(name, true))
                    .collect::<Vec<Field>>(),
            ));
            let batch = RecordBatch::try_new(schema.clone(), built.columns().to_vec())
                .map_err(|e| DbError::internal(format!("point select batch: {e}")))?;
            let stream = RecordBatchStreamAdapter::new(
                schema.clone(),
                futures::stream::once(async move { Ok(batch) }),
            );
            Ok(Some(StatementResult::Rows {
                schema,
                stream: Box::pin(stream),
                tag: "SELECT".to_string(),
            }))
        }
        Shape::Update { assignments } => {
            // convert every value before taking the lock, so a fallback has done nothing
            let mut values = Vec::with_capacity(assignments.len());
            for (col, a) in assignments {
                let ty = def.columns[*col].ty;
                let v = match a {
                    Assignment::Set(v) | Assignment::Add { value: v, .. } => v,
                };
                match datum(v, ty, params, &s.zone) {
                    Some(d) => values.push(d),
                    None => return Ok(None),
                }
            }
            let rows = s
                .instance
                .service
                .get(
                    txn,
                    def.id,
                    std::slice::from_ref(&key),
                    true,
                    s.lock_timeout,
                )
                .await?;
            let Some(Some(old)) = rows.into_iter().next() else {
                return Ok(Some(StatementResult::Command("UPDATE 0".into())));
            };
            let mut row = old;
            for ((col, a), v) in assignments.iter().zip(values) {
                row[*col] = match a {
                    Assignment::Set(_) => v,
                    Assignment::Add { negate, .. } => {
                        add_integers(&row[*col], &v, *negate, def.columns[*col].ty)?
                    }
                };
            }
            s.instance
                .service
                .write(
                    txn,
                    WriteRequest {
                        table: def.id,
                        ops: vec![WriteOp::Update { old_key: key, row }],
                        lock_timeout: s.lock_timeout,
                    },
                )
                .await?;
            Ok(Some(StatementResult::Command("UPDATE 1".into())))
        }
    }
}

/// `a ± b` for integer columns with Postgres' overflow errors; NULL stays NULL.
fn add_integers(a: &Datum, b: &Datum, negate: bool, ty: SqlType) -> DbResult<Datum> {
    let as_i128 = |d: &Datum| match d {
        Datum::Int2(v) => Some(*v as i128),
        Datum::Int4(v) => Some(*v as i128),
        Datum::Int8(v) => Some(*v as i128),
        _ => None,
    };
    let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) else {
        return Ok(Datum::Null);
    };
    let r = if negate { x - y } else { x + y };
    let out_of_range = |name: &str| {
        DbError::new(
            SqlState::NumericValueOutOfRange,
            format!("{name} out of range"),
        )
    };
    Ok(match ty {
        SqlType::Int2 => Datum::Int2(i16::try_from(r).map_err(|_| out_of_range("smallint"))?),
        SqlType::Int4 => Datum::Int4(i32::try_from(r).map_err(|_| out_of_range("integer"))?),
        _ => Datum::Int8(i64::try_from(r).map_err(|_| out_of_range("bigint"))?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_addition_overflows_like_postgres() {
        let e = add_integers(
            &Datum::Int4(i32::MAX),
            &Datum::Int4(1),
            false,
            SqlType::Int4,
        )
        .unwrap_err();
        assert_eq!(e.state, SqlState::NumericValueOutOfRange);
        assert_eq!(e.message, "integer out of range");
        assert_eq!(
            add_integers(&Datum::Int4(5), &Datum::Int4(7), true, SqlType::Int4).unwrap(),
            Datum::Int4(-2)
        );
        assert_eq!(
            add_integers(&Datum::Null, &Datum::Int4(7), false, SqlType::Int4).unwrap(),
            Datum::Null
        );
    }

    #[test]
    fn exact_values_only() {
        let p = vec![];
        assert_eq!(
            datum(&Value::Number("7".into()), SqlType::Int4, &p, &Zone::UTC),
            Some(Datum::Int4(7))
        );
        assert_eq!(
            datum(&Value::Number("1.5".into()), SqlType::Int4, &p, &Zone::UTC),
            None
        );
        assert_eq!(
            datum(&Value::Number("1e3".into()), SqlType::Int8, &p, &Zone::UTC),
            None
        );
        assert_eq!(datum(&Value::Param(0), SqlType::Int4, &p, &Zone::UTC), None);
    }
}
