//! Evaluating SQL expressions over in-memory rows (UPDATE's SET and WHERE re-check, RETURNING,
//! ON CONFLICT DO UPDATE, INSERT values that are not plain constants). Expressions are planned
//! by DataFusion against a schema and run as physical expressions on record batches.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::TableDef;
use orochi_common::service::Row;
use orochi_worker::batch::BatchBuilder;

use crate::error::df_to_db;
use crate::session::{Params, Session};

/// Replaces `$n` placeholders with bound values.
pub fn bind_placeholders(expr: Expr, params: &Params) -> DbResult<Expr> {
    expr.transform(|e| {
        if let Expr::Placeholder(p) = &e {
            let idx: usize = p.id.trim_start_matches('$').parse().unwrap_or(0);
            let value = params.get(idx.wrapping_sub(1)).cloned().ok_or_else(|| {
                datafusion::error::DataFusionError::External(Box::new(DbError::new(
                    SqlState::UndefinedParameter,
                    format!("there is no parameter {}", p.id),
                )))
            })?;
            return Ok(Transformed::yes(Expr::Literal(value, None)));
        }
        Ok(Transformed::no(e))
    })
    .map(|t| t.data)
    .map_err(df_to_db)
}

/// Physical expressions planned over a (qualified) schema.
pub struct Evaluator {
    pub exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub names: Vec<String>,
}

impl Evaluator {
    pub fn plan(
        session: &Session,
        exprs: &[ast::Expr],
        schema: &DFSchema,
        params: &Params,
    ) -> DbResult<Self> {
        let planner = session.planner();
        // Simplifying folds constants and, like Postgres, fixes now()/CURRENT_TIMESTAMP to
        // the transaction's start time (physical now() cannot be invoked unsimplified).
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(schema.clone()))
                .with_config_options(session.state.config_options().clone())
                .with_query_execution_start_time(Some(session.txn_start))
                .build(),
        );
        let mut out = Vec::with_capacity(exprs.len());
        for e in exprs {
            let logical = planner.plan_expr(e.clone(), schema).map_err(df_to_db)?;
            let logical = bind_placeholders(logical, params)?;
            let logical = simplifier.simplify(logical).map_err(df_to_db)?;
            out.push(
                session
                    .state
                    .create_physical_expr(logical, schema)
                    .map_err(df_to_db)?,
            );
        }
        let names = exprs.iter().map(output_name).collect();
        Ok(Evaluator { exprs: out, names })
    }

    pub fn evaluate(&self, batch: &RecordBatch) -> DbResult<Vec<ArrayRef>> {
        self.exprs
            .iter()
            .map(|e| {
                e.evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .map_err(df_to_db)
            })
            .collect()
    }

    /// Evaluates a single boolean predicate: which rows pass (NULL counts as false).
    pub fn filter(&self, batch: &RecordBatch) -> DbResult<Vec<bool>> {
        let arrays = self.evaluate(batch)?;
        let a = arrays[0]
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                DbError::new(
                    SqlState::DatatypeMismatch,
                    "argument of WHERE must be type boolean",
                )
            })?;
        Ok((0..a.len()).map(|i| a.is_valid(i) && a.value(i)).collect())
    }
}

/// The column name Postgres gives an unaliased expression.
pub fn output_name(e: &ast::Expr) -> String {
    named(e).0
}

/// Postgres' `FigureColname`: a name and how strong it is (2: a column or function name, 1: a
/// type name or `case`/`array`, 0: nothing, `?column?`). A cast keeps a strong inner name and
/// otherwise takes its type's name (`2.5::numeric::int4` is `int4`, `price::text` is `price`).
fn named(e: &ast::Expr) -> (String, u8) {
    let strong = |s: &str| (s.to_string(), 2);
    match e {
        ast::Expr::Identifier(i) => (i.value.clone(), 2),
        ast::Expr::CompoundIdentifier(parts) => {
            (parts.last().map(|i| i.value.clone()).unwrap_or_default(), 2)
        }
        ast::Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .map(|p| p.to_string().to_lowercase())
                .unwrap_or_default();
            let first_arg = match &f.args {
                ast::FunctionArguments::List(l) => l.args.first(),
                _ => None,
            };
            match (crate::pgtypes::cast_function_type_name(&name), first_arg) {
                // a cast we rewrote to a function (pgtypes): named like the cast it was
                (Some(cast), Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)))) => {
                    let inner = named(e);
                    if inner.1 > 1 {
                        inner
                    } else {
                        (cast.to_string(), 1)
                    }
                }
                // sign(x), planned as DataFusion's signum (pgtypes)
                _ if name == "signum" => ("sign".to_string(), 2),
                _ => (name, 2),
            }
        }
        ast::Expr::Cast {
            expr, data_type, ..
        } => {
            let inner = named(expr);
            if inner.1 > 1 {
                return inner;
            }
            match crate::handler::ddl::sql_type(data_type) {
                Ok((t, _)) => (t.typname().to_string(), 1),
                // `x::oid`, rewritten to a 32-bit unsigned integer (pgtypes)
                Err(_) if matches!(data_type, ast::DataType::IntUnsigned(None)) => {
                    ("oid".to_string(), 1)
                }
                Err(_) => inner,
            }
        }
        ast::Expr::Nested(expr) => named(expr),
        // Postgres names a scalar subquery after its single output column
        ast::Expr::Subquery(q) => match q.body.as_ref() {
            ast::SetExpr::Select(s) => match s.projection.first() {
                Some(ast::SelectItem::ExprWithAlias { alias, .. }) => strong(&alias.value),
                Some(ast::SelectItem::UnnamedExpr(e)) => (named(e).0, 2),
                _ => ("?column?".to_string(), 0),
            },
            _ => ("?column?".to_string(), 0),
        },
        ast::Expr::Case { .. } => ("case".to_string(), 1),
        ast::Expr::Array(_) => ("array".to_string(), 1),
        ast::Expr::Exists { .. } => strong("exists"),
        ast::Expr::Extract { .. } => strong("extract"),
        ast::Expr::Substring { .. } => strong("substring"),
        ast::Expr::Position { .. } => strong("position"),
        ast::Expr::Trim { .. } => strong("btrim"),
        ast::Expr::Ceil { .. } => strong("ceil"),
        ast::Expr::Floor { .. } => strong("floor"),
        _ => ("?column?".to_string(), 0),
    }
}

/// A schema of the table's visible columns qualified by `alias`.
pub fn table_df_schema(def: &TableDef, alias: &str) -> DbResult<(DFSchema, SchemaRef)> {
    let visible = def.visible_columns();
    let fields: Vec<Field> = visible
        .iter()
        .map(|&i| def.columns[i].ty.arrow_field(&def.columns[i].name, true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let df = DFSchema::try_from_qualified_schema(alias, &schema).map_err(df_to_db)?;
    Ok((df, schema))
}

/// Rows (full physical) as a batch of the visible columns.
pub fn rows_to_batch(def: &TableDef, rows: &[Row]) -> DbResult<RecordBatch> {
    let visible = def.visible_columns();
    let mut b = BatchBuilder::new(def, &visible, rows.len());
    for r in rows {
        b.push(visible.iter().map(|&i| &r[i]))?;
    }
    b.finish()
}

/// A batch with no columns and `rows` rows, for evaluating constant expressions.
pub fn empty_batch(rows: usize) -> RecordBatch {
    RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .expect("an empty batch is valid")
}

/// Concatenates two batches' columns (same row count) under `schema`.
pub fn zip_batches(schema: SchemaRef, a: &RecordBatch, b: &RecordBatch) -> DbResult<RecordBatch> {
    let mut cols = a.columns().to_vec();
    cols.extend(b.columns().iter().cloned());
    RecordBatch::try_new_with_options(
        schema,
        cols,
        &RecordBatchOptions::new().with_row_count(Some(a.num_rows())),
    )
    .map_err(|e| DbError::internal(format!("combining batches: {e}")))
}

/// A literal or parameter in a VALUES list converted straight to a column value, without
/// planning; `None` when the expression needs evaluation.
/// Strings for a `timestamptz` without an offset are read in `zone`.
pub fn const_datum(
    e: &ast::Expr,
    ty: orochi_common::types::SqlType,
    params: &Params,
    zone: &orochi_common::zone::Zone,
) -> Option<DbResult<Datum>> {
    use ast::{Expr as E, Value as V};
    match e {
        E::Value(v) => match &v.value {
            V::Number(n, _) => Some(number_datum(ty, n)),
            V::SingleQuotedString(s) => Some(Datum::parse_in(ty, s, zone)),
            V::Boolean(b) => Some(Datum::Bool(*b).coerce_to(ty)),
            V::Null => Some(Ok(Datum::Null)),
            V::Placeholder(p) => {
                let idx: usize = p.trim_start_matches('$').parse().ok()?;
                let v = params.get(idx.checked_sub(1)?)?;
                if v.is_null() {
                    return Some(Ok(Datum::Null));
                }
                Some(scalar_datum(v, ty))
            }
            _ => None,
        },
        E::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            E::Value(v) => match &v.value {
                V::Number(n, _) => Some(number_datum(ty, &format!("-{n}"))),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// A numeric literal as a value of `ty`. Into an integer a fraction rounds half away from
/// zero, as Postgres' numeric → integer assignment does (`2.5` → 3).
fn number_datum(ty: orochi_common::types::SqlType, n: &str) -> DbResult<Datum> {
    if ty.is_integer() && !n.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        let whole = orochi_common::datum::parse_numeric(n, 38, 0)?;
        return Datum::parse(ty, &whole.to_string());
    }
    Datum::parse(ty, n)
}

/// A bound parameter value as a column value.
pub fn scalar_datum(v: &ScalarValue, ty: orochi_common::types::SqlType) -> DbResult<Datum> {
    let arr = v.to_array().map_err(df_to_db)?;
    Datum::from_arrow(arr.as_ref(), 0, ty)
}

/// Whether `e` is the `DEFAULT` keyword in a VALUES list.
pub fn is_default_keyword(e: &ast::Expr) -> bool {
    matches!(e, ast::Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}
