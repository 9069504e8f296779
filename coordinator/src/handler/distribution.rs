//! `SELECT create_distributed_table('t', 'col' [, shard_count])` and
//! `SELECT create_reference_table('t')`: how a table is placed (DESIGN.md §3).
//!
//! - A distributed table's rows are hash-partitioned on its distribution column into
//!   `shard_count` shards; tables with the same shard count and distribution-column type are
//!   co-located (shard *i* of each on the same worker), so joins on it run on the workers.
//! - A reference table is one shard with a full copy on every worker: writes go to every copy
//!   in one (two-phase) transaction, reads to one copy.
//!
//! The distribution column must be part of the primary key: uniqueness is checked inside a
//! shard, so a key that could land in two shards could be stored twice (Citus has the same
//! rule). A table with rows is rewritten: its rows move into the shards of the new placement
//! (under a new table id) in one bulk load, and the catalog switches to it when that commits.
//! The functions return `void` in Citus; here one empty text value, which psql prints the same.

use arrow::array::StringArray;
use arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::service::TxnId;

use crate::handler::eval::{Evaluator, empty_batch};
use crate::session::{Params, Session, StatementResult};

pub const CREATE_DISTRIBUTED_TABLE: &str = "create_distributed_table";
pub const CREATE_REFERENCE_TABLE: &str = "create_reference_table";

/// The most shards a table may have.
const MAX_SHARD_COUNT: i64 = 4096;

/// A call of one of the placement functions as a whole statement: its name and arguments.
pub struct PlacementCall {
    name: &'static str,
    args: Vec<ast::FunctionArg>,
}

/// `SELECT f(…)` with `f` a placement function, nothing else in the query.
pub fn placement_call(q: &ast::Query) -> Option<PlacementCall> {
    let ast::SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    if !select.from.is_empty()
        || select.selection.is_some()
        || select.projection.len() != 1
        || q.order_by.is_some()
        || q.limit_clause.is_some()
    {
        return None;
    }
    let (ast::SelectItem::UnnamedExpr(ast::Expr::Function(f))
    | ast::SelectItem::ExprWithAlias {
        expr: ast::Expr::Function(f),
        ..
    }) = &select.projection[0]
    else {
        return None;
    };
    let name = f.name.0.last()?.as_ident()?.value.to_lowercase();
    let qualifier_ok = f.name.0.len() == 1
        || (f.name.0.len() == 2
            && f.name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog")));
    let name = match name.as_str() {
        CREATE_DISTRIBUTED_TABLE if qualifier_ok => CREATE_DISTRIBUTED_TABLE,
        CREATE_REFERENCE_TABLE if qualifier_ok => CREATE_REFERENCE_TABLE,
        _ => return None,
    };
    let ast::FunctionArguments::List(list) = &f.args else {
        return None;
    };
    Some(PlacementCall {
        name,
        args: list.args.clone(),
    })
}

pub async fn handle(
    s: &mut Session,
    call: PlacementCall,
    params: &Params,
    txn: TxnId,
) -> DbResult<StatementResult> {
    let reference = call.name == CREATE_REFERENCE_TABLE;
    let (mut positional, mut named) = (Vec::new(), Vec::new());
    for a in &call.args {
        match a {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) if named.is_empty() => {
                positional.push(e.clone())
            }
            ast::FunctionArg::Named {
                name,
                arg: ast::FunctionArgExpr::Expr(e),
                ..
            } => named.push((name.value.to_lowercase(), e.clone())),
            ast::FunctionArg::ExprNamed {
                name: ast::Expr::Identifier(name),
                arg: ast::FunctionArgExpr::Expr(e),
                ..
            } => named.push((name.value.to_lowercase(), e.clone())),
            _ => return Err(signature_error(call.name)),
        }
    }
    let wanted: &[&str] = if reference {
        &["table_name"]
    } else {
        &["table_name", "distribution_column", "shard_count"]
    };
    if positional.len() > wanted.len() {
        return Err(signature_error(call.name));
    }
    let mut args: Vec<Option<ast::Expr>> = vec![None; wanted.len()];
    for (i, e) in positional.into_iter().enumerate() {
        args[i] = Some(e);
    }
    for (n, e) in named {
        let i = wanted
            .iter()
            .position(|w| *w == n)
            .ok_or_else(|| signature_error(call.name))?;
        if args[i].replace(e).is_some() {
            return Err(signature_error(call.name));
        }
    }
    let table_name = match &args[0] {
        Some(e) => constant_text(s, e, params)?,
        None => return Err(signature_error(call.name)),
    };
    let def = crate::handler::dml::resolve_table(s, &object_name(&table_name)?)?;
    s.check_table_owner(&def)?;
    let mut new = (*def).clone();
    if reference {
        new.reference = true;
        new.shard_count = 1;
        new.distribution_column = new.primary_key[0];
    } else {
        let column = match &args[1] {
            Some(e) => constant_text(s, e, params)?,
            None => return Err(signature_error(call.name)),
        };
        let column = column.trim_matches('"').to_string();
        let c = def.column_index(&column).ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedColumn,
                format!(
                    "column \"{column}\" of relation \"{}\" does not exist",
                    def.name
                ),
            )
        })?;
        if !def.primary_key.contains(&c) {
            return Err(DbError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "cannot distribute relation \"{}\" by \"{column}\"",
                    def.name
                ),
            )
            .with_detail(
                "The distribution column must be part of the primary key: uniqueness is \
                 checked within a shard."
                    .to_string(),
            ));
        }
        let shard_count = match &args[2] {
            None => s
                .settings
                .lock()
                .get("orochi.default_shard_count")?
                .parse::<i64>()
                .map_err(|_| DbError::internal("orochi.default_shard_count is not a number"))?,
            Some(e) => constant_int(s, e, params)?,
        };
        if !(1..=MAX_SHARD_COUNT).contains(&shard_count) {
            return Err(DbError::new(
                SqlState::InvalidParameterValue,
                format!("shard_count must be between 1 and {MAX_SHARD_COUNT}"),
            ));
        }
        new.reference = false;
        new.distribution_column = c;
        new.shard_count = shard_count as u32;
    }
    if new != *def {
        new.version += 1;
        // re-created, so placed over the workers there are now
        new.workers = s.instance.service.placement_width();
        if crate::handler::ddl::table_has_rows(s, &def, txn).await? {
            // its rows move into shards of the new placement (a new table id)
            new.id = s.instance.catalog.allocate_table_id()?;
            crate::handler::ddl::rewrite_table(s, &def, &new, |_| Ok(())).await?;
        } else {
            // empty: its shards are re-created in the new placement
            s.instance.service.drop_table(def.id).await?;
            s.instance.service.create_table(&new).await?;
            s.instance.catalog.put_table(new)?;
        }
    }
    StatementResult::text_column(call.name, true, vec![String::new()], "SELECT")
}

fn signature_error(name: &str) -> DbError {
    let sig = if name == CREATE_REFERENCE_TABLE {
        "create_reference_table(table_name)"
    } else {
        "create_distributed_table(table_name, distribution_column [, shard_count])"
    };
    DbError::new(
        SqlState::UndefinedFunction,
        format!("function {name} takes {sig}"),
    )
}

/// A constant argument (a literal, a cast of one, a parameter), evaluated.
fn constant(s: &Session, e: &ast::Expr, params: &Params) -> DbResult<arrow::array::ArrayRef> {
    let ev = Evaluator::plan(s, std::slice::from_ref(e), &DFSchema::empty(), params)?;
    let mut arrays = ev.evaluate(&empty_batch(1))?;
    let a = arrays.remove(0);
    if a.is_null(0) {
        return Err(DbError::new(
            SqlState::NullValueNotAllowed,
            "the arguments must not be null",
        ));
    }
    Ok(a)
}

fn constant_text(s: &Session, e: &ast::Expr, params: &Params) -> DbResult<String> {
    let a = constant(s, e, params)?;
    let a =
        arrow::compute::cast(&a, &DataType::Utf8).map_err(|e| DbError::internal(e.to_string()))?;
    let a = a
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DbError::internal("cast to text"))?;
    Ok(a.value(0).to_string())
}

fn constant_int(s: &Session, e: &ast::Expr, params: &Params) -> DbResult<i64> {
    let a = constant(s, e, params)?;
    if !a.data_type().is_integer() {
        return Err(DbError::new(
            SqlState::DatatypeMismatch,
            "shard_count must be an integer",
        ));
    }
    let a =
        arrow::compute::cast(&a, &DataType::Int64).map_err(|e| DbError::internal(e.to_string()))?;
    Ok(a.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .ok_or_else(|| DbError::internal("cast to bigint"))?
        .value(0))
}

/// `'schema.table'` or `'table'` (quoted parts keep their case) as an object name.
fn object_name(text: &str) -> DbResult<ast::ObjectName> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_object_name(false))
        .map_err(|_| {
            DbError::new(
                SqlState::InvalidName,
                format!("invalid name syntax: \"{text}\""),
            )
        })
}
