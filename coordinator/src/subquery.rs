//! Scalar subqueries that are not aggregated.
//!
//! Postgres accepts `(SELECT d.x FROM d WHERE d.k = o.k)` anywhere a value goes and fails at run
//! time, with 21000, only if the subquery returns more than one row. DataFusion can decorrelate a
//! correlated scalar subquery only when it is aggregated (it becomes a left join on the grouped
//! subquery), and refuses the rest at planning time — which is every such lookup psql's `\d`
//! sends, and a common idiom in applications.
//!
//! [`wrap_scalar_subqueries`] wraps the single select-list expression of a plain scalar subquery
//! in [`SINGLE_ROW`], an aggregate that keeps the value it sees and counts rows, and the
//! subquery in [`SUBQUERY_VALUE`], which returns that value, NULL for no row, and fails with
//! 21000 for a second row: Postgres' semantics, in a shape DataFusion decorrelates.
//!
//! DataFusion also pulls only `inner = outer` predicates above that aggregate. A conjunct that
//! reads only the outer row (psql's `AND a.atthasdef`) is hoisted out instead:
//! `(SELECT x FROM d WHERE p AND outer)` is `CASE WHEN outer THEN (SELECT x FROM d WHERE p) END`.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StructArray, UInt64Array, make_array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, SqlState};

use crate::error::db_to_df;

/// The aggregate a plain scalar subquery's value is wrapped in.
pub const SINGLE_ROW: &str = "__orochi_single_row";
/// The function that takes the value out of a [`SINGLE_ROW`] subquery.
pub const SUBQUERY_VALUE: &str = "__orochi_subquery_value";

/// Wraps the value of every plain scalar subquery in `stmt` in [`SINGLE_ROW`]. A subquery is
/// plain when it is one `SELECT` of one expression without aggregates, window functions,
/// `GROUP BY`, `HAVING`, `DISTINCT`, `ORDER BY`, `LIMIT` or `OFFSET` — the rest is left to
/// DataFusion as written. `is_aggregate` tells aggregate function names from scalar ones.
pub fn wrap_scalar_subqueries(stmt: &mut ast::Statement, is_aggregate: &dyn Fn(&str) -> bool) {
    let _ = ast::visit_expressions_mut(stmt, |e| {
        if let Some(mapped) = array_of_unnest(e).or_else(|| array_of_subquery(e, is_aggregate)) {
            *e = mapped;
            return ControlFlow::<()>::Continue(());
        }
        if let ast::Expr::Subquery(q) = e
            && let Some(outer_only) = wrap_query(q, is_aggregate)
        {
            *e = call(SUBQUERY_VALUE, e.clone());
            if let Some(condition) = and_all(outer_only) {
                *e = ast::Expr::Case {
                    case_token: ast::helpers::attached_token::AttachedToken::empty(),
                    end_token: ast::helpers::attached_token::AttachedToken::empty(),
                    operand: None,
                    conditions: vec![ast::CaseWhen {
                        condition,
                        result: e.clone(),
                    }],
                    else_result: None,
                };
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `ARRAY(SELECT e …)` with one plain SELECT inside (no WITH, LIMIT, FETCH, GROUP BY,
/// HAVING, DISTINCT; one column): the subquery, its SELECT and `e`.
fn array_constructor(e: &ast::Expr) -> Option<(&ast::Query, &ast::Select, &ast::Expr)> {
    let ast::Expr::Function(f) = e else {
        return None;
    };
    if !f.name.to_string().eq_ignore_ascii_case("array") {
        return None;
    }
    let ast::FunctionArguments::Subquery(q) = &f.args else {
        return None;
    };
    if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return None;
    }
    let ast::SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let plain_group_by = matches!(&select.group_by, ast::GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty());
    if select.having.is_some()
        || select.distinct.is_some()
        || !plain_group_by
        || select.projection.len() != 1
    {
        return None;
    }
    let (ast::SelectItem::UnnamedExpr(element)
    | ast::SelectItem::ExprWithAlias { expr: element, .. }) = &select.projection[0]
    else {
        return None;
    };
    Some((q, select, element))
}

/// `ARRAY(SELECT e FROM … WHERE … ORDER BY …)`, which DataFusion lacks, as the aggregate
/// subquery `array_concat((SELECT array_agg(e ORDER BY …) FROM … WHERE …), [])`: the same
/// elements in the same order, an empty array for no rows, and correlated (`WHERE attrelid =
/// c.oid`, as psql writes it) as DataFusion decorrelates aggregates. `None` for shapes it does
/// not cover (several columns, GROUP BY, DISTINCT, LIMIT, set operations, aggregates inside).
fn array_of_subquery(e: &ast::Expr, is_aggregate: &dyn Fn(&str) -> bool) -> Option<ast::Expr> {
    let (q, select, element) = array_constructor(e)?;
    if aggregates_or_windows(element, is_aggregate) {
        return None;
    }
    // ORDER BY 1 names the one column
    let order: Vec<ast::OrderByExpr> = match &q.order_by {
        None => Vec::new(),
        Some(ast::OrderBy {
            kind: ast::OrderByKind::Expressions(items),
            ..
        }) => items
            .iter()
            .map(|o| {
                let mut o = o.clone();
                // the planner may have typed the literal already (`CAST(1 AS INT)`)
                let literal = match &o.expr {
                    ast::Expr::Cast { expr, .. } => expr.as_ref(),
                    e => e,
                };
                if let ast::Expr::Value(v) = literal
                    && matches!(&v.value, ast::Value::Number(n, _) if n == "1")
                {
                    o.expr = element.clone();
                }
                o
            })
            .collect(),
        Some(_) => return None,
    };
    // ordered by the element itself (`ORDER BY 1`, the common case): the aggregate sorted
    // afterwards — DataFusion's ordered array_agg merges partitions out of order at times
    let by_element = match order.as_slice() {
        [o] if o.expr == *element => Some(o.options),
        _ => None,
    };
    let aggregate = match &by_element {
        Some(options) => {
            let desc = options.asc == Some(false);
            let nulls_first = options.nulls_first.unwrap_or(desc);
            call("array_sort", call("array_agg", element.clone()))
                .with_arg(ast::Expr::value(ast::Value::SingleQuotedString(
                    if desc { "DESC" } else { "ASC" }.into(),
                )))
                .with_arg(ast::Expr::value(ast::Value::SingleQuotedString(
                    if nulls_first {
                        "NULLS FIRST"
                    } else {
                        "NULLS LAST"
                    }
                    .into(),
                )))
        }
        None => ast::Expr::Function(ast::Function {
            name: ast::ObjectName::from(vec![ast::Ident::new("array_agg")]),
            uses_odbc_syntax: false,
            parameters: ast::FunctionArguments::None,
            args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                    element.clone(),
                ))],
                clauses: if order.is_empty() {
                    Vec::new()
                } else {
                    vec![ast::FunctionArgumentClause::OrderBy(order)]
                },
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: Vec::new(),
        }),
    };
    let mut select = select.clone();
    select.projection = vec![ast::SelectItem::UnnamedExpr(aggregate)];
    let mut query = q.clone();
    query.body = Box::new(ast::SetExpr::Select(Box::new(select)));
    query.order_by = None;
    // no rows: an empty array (array_concat skips the NULL; coalesce would be expanded to a
    // CASE that evaluates the subquery twice)
    let mut empty = call("make_array", ast::Expr::value(ast::Value::Null));
    if let ast::Expr::Function(f) = &mut empty
        && let ast::FunctionArguments::List(list) = &mut f.args
    {
        list.args.clear();
    }
    Some(call("array_concat", ast::Expr::Subquery(Box::new(query))).with_arg(empty))
}

trait WithArg {
    fn with_arg(self, arg: ast::Expr) -> ast::Expr;
}

impl WithArg for ast::Expr {
    /// Appends an argument to a function call.
    fn with_arg(mut self, arg: ast::Expr) -> ast::Expr {
        if let ast::Expr::Function(f) = &mut self
            && let ast::FunctionArguments::List(list) = &mut f.args
        {
            list.args
                .push(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(arg)));
        }
        self
    }
}

/// `ARRAY(SELECT f(x) FROM unnest(a) x)` — mapping over an array, usually an outer row's (psql's
/// `\d+` lists storage options that way) — is `array_transform(a, x -> f(x))`, which needs no
/// decorrelation; an empty array when `a` is NULL, as the subquery gives. `None` for any other
/// shape (a WHERE, ORDER BY, several columns…).
fn array_of_unnest(e: &ast::Expr) -> Option<ast::Expr> {
    let (q, select, body) = array_constructor(e)?;
    if q.order_by.is_some()
        || select.selection.is_some()
        || select.from.len() != 1
        || !select.from[0].joins.is_empty()
    {
        return None;
    }
    // `unnest(a) x` parses as UNNEST, `pg_catalog.unnest(a) x` (psql) as a table function
    let (alias, array) = match &select.from[0].relation {
        ast::TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } => match array_exprs.as_slice() {
            [array] => (alias, array.clone()),
            _ => return None,
        },
        ast::TableFactor::Table {
            name,
            alias: Some(alias),
            args: Some(args),
            with_ordinality: false,
            ..
        } if name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("unnest"))
            && name.0.len() <= 2 =>
        {
            match args.args.as_slice() {
                [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array))] => {
                    (alias, array.clone())
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    let param = alias
        .columns
        .first()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| alias.name.clone());
    let lambda = ast::Expr::Lambda(ast::LambdaFunction {
        params: ast::OneOrManyWithParens::One(ast::LambdaFunctionParameter {
            name: param,
            data_type: None,
        }),
        body: Box::new(body.clone()),
        syntax: ast::LambdaSyntax::Arrow,
    });
    let arg = |e: ast::Expr| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e));
    let function = |name: &str, args: Vec<ast::Expr>| {
        ast::Expr::Function(ast::Function {
            name: ast::ObjectName::from(vec![ast::Ident::new(name)]),
            uses_odbc_syntax: false,
            parameters: ast::FunctionArguments::None,
            args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: args.into_iter().map(arg).collect(),
                clauses: vec![],
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: vec![],
        })
    };
    let mapped = function("array_transform", vec![array, lambda]);
    // NULL array: no rows, so an empty array (coalesce gives it the mapped type)
    Some(function(
        "coalesce",
        vec![mapped, function("make_array", vec![])],
    ))
}

/// Wraps a plain subquery's value; returns the conditions that must hold outside for it to
/// have a row, which it removed from its WHERE (`None`: not a plain subquery, unchanged).
fn wrap_query(q: &mut ast::Query, is_aggregate: &dyn Fn(&str) -> bool) -> Option<Vec<ast::Expr>> {
    if q.with.is_some()
        || q.order_by.is_some()
        || q.limit_clause.is_some()
        || q.fetch.is_some()
        || !q.locks.is_empty()
    {
        return None;
    }
    let ast::SetExpr::Select(select) = q.body.as_mut() else {
        return None;
    };
    let plain_group_by = matches!(&select.group_by, ast::GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty());
    if select.distinct.is_some()
        || select.having.is_some()
        || !plain_group_by
        || select.projection.len() != 1
        || select.top.is_some()
        || !select.named_window.is_empty()
        || select.qualify.is_some()
    {
        return None;
    }
    let (ast::SelectItem::UnnamedExpr(expr) | ast::SelectItem::ExprWithAlias { expr, .. }) =
        &mut select.projection[0]
    else {
        return None;
    };
    if aggregates_or_windows(expr, is_aggregate) {
        return None;
    }
    *expr = call(SINGLE_ROW, expr.clone());
    let Some(selection) = select.selection.take() else {
        return Some(vec![]);
    };
    let inner = relation_names(&select.from);
    let mut outer_only = Vec::new();
    let mut mixed = Vec::new();
    let mut keep = Vec::new();
    for c in conjuncts(selection) {
        let r = refs(&c, &inner);
        if r.outer && !r.inner && !r.opaque {
            outer_only.push(c);
        } else if r.outer && r.inner && !r.opaque && !pullable_equality(&c, &inner) {
            mixed.push(c);
        } else {
            keep.push(c);
        }
    }
    select.selection = and_all(keep);
    // A correlated conjunct DataFusion cannot pull up (`o.c <> t.typcollation`) is evaluated
    // outside, each inner column in it fetched by a scalar subquery of its own over the same
    // rows. Same result when at most one row passes the other conjuncts (psql's lookups pin
    // the row by oid); with more, 21000 is raised where Postgres might have found one.
    for mut c in mixed {
        let _ = ast::visit_expressions_mut(&mut c, |x| {
            if is_inner_column(x, &inner) {
                let mut lookup = q.clone();
                if let ast::SetExpr::Select(sel) = lookup.body.as_mut() {
                    sel.projection =
                        vec![ast::SelectItem::UnnamedExpr(call(SINGLE_ROW, x.clone()))];
                }
                *x = call(SUBQUERY_VALUE, ast::Expr::Subquery(Box::new(lookup)));
            }
            ControlFlow::<()>::Continue(())
        });
        outer_only.push(c);
    }
    Some(outer_only)
}

/// Whether `e` calls an aggregate or window function (nested subqueries included, which only
/// makes the check conservative).
fn aggregates_or_windows(e: &ast::Expr, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    ast::visit_expressions(e, |x| match x {
        ast::Expr::Function(f)
            if f.over.is_some()
                || f.name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .is_some_and(|i| is_aggregate(&i.value.to_lowercase())) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn and_all(conjuncts: Vec<ast::Expr>) -> Option<ast::Expr> {
    conjuncts.into_iter().reduce(|a, b| ast::Expr::BinaryOp {
        left: Box::new(a),
        op: ast::BinaryOperator::And,
        right: Box::new(b),
    })
}

fn conjuncts(e: ast::Expr) -> Vec<ast::Expr> {
    match e {
        ast::Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(*left);
            v.extend(conjuncts(*right));
            v
        }
        ast::Expr::Nested(inner)
            if matches!(
                *inner,
                ast::Expr::BinaryOp {
                    op: ast::BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// The names the FROM clause's relations are referred to by (alias, else table name).
fn relation_names(from: &[ast::TableWithJoins]) -> Vec<String> {
    fn of(t: &ast::TableFactor, out: &mut Vec<String>) {
        match t {
            ast::TableFactor::Table { name, alias, .. } => out.push(match alias {
                Some(a) => a.name.value.to_lowercase(),
                None => name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_lowercase())
                    .unwrap_or_default(),
            }),
            other => {
                // a derived table, function, nested join…: named by its alias, if any
                if let ast::TableFactor::NestedJoin {
                    table_with_joins, ..
                } = other
                {
                    of(&table_with_joins.relation, out);
                    for j in &table_with_joins.joins {
                        of(&j.relation, out);
                    }
                }
                if let Some(a) = table_factor_alias(other) {
                    out.push(a.name.value.to_lowercase());
                }
            }
        }
    }
    let mut out = Vec::new();
    for t in from {
        of(&t.relation, &mut out);
        for j in &t.joins {
            of(&j.relation, &mut out);
        }
    }
    out
}

fn table_factor_alias(t: &ast::TableFactor) -> Option<&ast::TableAlias> {
    match t {
        ast::TableFactor::Derived { alias, .. }
        | ast::TableFactor::TableFunction { alias, .. }
        | ast::TableFactor::Function { alias, .. }
        | ast::TableFactor::UNNEST { alias, .. }
        | ast::TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
        _ => None,
    }
}

/// What an expression of a subquery's WHERE reads.
#[derive(Default)]
struct Refs {
    /// a column qualified by a relation that is not the subquery's (an enclosing query's)
    outer: bool,
    /// a column of the subquery's own relations (qualified by one, or unqualified)
    inner: bool,
    /// a nested subquery, not looked into
    opaque: bool,
}

fn refs(e: &ast::Expr, inner: &[String]) -> Refs {
    let mut r = Refs::default();
    let _ = ast::visit_expressions(e, |x| {
        match x {
            ast::Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                if inner.contains(&parts[parts.len() - 2].value.to_lowercase()) {
                    r.inner = true;
                } else {
                    r.outer = true;
                }
            }
            ast::Expr::Identifier(_) => r.inner = true,
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => {
                r.opaque = true
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    r
}

fn is_inner_column(e: &ast::Expr, inner: &[String]) -> bool {
    match e {
        ast::Expr::Identifier(_) => true,
        ast::Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            inner.contains(&parts[parts.len() - 2].value.to_lowercase())
        }
        _ => false,
    }
}

/// `inner_column = outer expression` (either way round, the column possibly cast): the shape
/// DataFusion turns into a join key.
fn pullable_equality(e: &ast::Expr, inner: &[String]) -> bool {
    fn bare_column(e: &ast::Expr) -> &ast::Expr {
        match e {
            ast::Expr::Cast { expr, .. } | ast::Expr::Nested(expr) => bare_column(expr),
            other => other,
        }
    }
    let ast::Expr::BinaryOp {
        left,
        op: ast::BinaryOperator::Eq,
        right,
    } = e
    else {
        return false;
    };
    let outer_only = |x: &ast::Expr| {
        let r = refs(x, inner);
        r.outer && !r.inner && !r.opaque
    };
    (is_inner_column(bare_column(left), inner) && outer_only(right))
        || (is_inner_column(bare_column(right), inner) && outer_only(left))
}

fn call(function: &str, e: ast::Expr) -> ast::Expr {
    ast::Expr::Function(ast::Function {
        name: ast::ObjectName::from(vec![ast::Ident::new(function)]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e))],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// A group's only value and its number of rows, as a struct `{value, rows}`. It does not fail
/// for a second row itself: the decorrelated subquery is aggregated for every group of the inner
/// table, also those no outer row asks for (Postgres never evaluates those). [`SUBQUERY_VALUE`],
/// evaluated only for the rows that use the subquery, raises 21000.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SingleRow {
    signature: Signature,
}

impl Default for SingleRow {
    fn default() -> Self {
        SingleRow {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

fn single_row_fields(value: &Field) -> Fields {
    Fields::from(vec![
        // keep the value's metadata: it carries our SQL type (e.g. numeric(10,2))
        value.clone().with_name("value").with_nullable(true),
        Field::new("rows", DataType::UInt64, false),
    ])
}

impl AggregateUDFImpl for SingleRow {
    fn name(&self) -> &str {
        SINGLE_ROW
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(single_row_fields(&Field::new(
            "value",
            arg_types[0].clone(),
            true,
        ))))
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(single_row_fields(&arg_fields[0])),
            true,
        )))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let DataType::Struct(fields) = args.return_field.data_type() else {
            return Err(crate::planner::internal(
                "single-row aggregate without struct type",
            ));
        };
        Ok(Box::new(SingleRowAccumulator {
            fields: fields.clone(),
            value: ScalarValue::try_from(fields[0].data_type())?,
            rows: 0,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let DataType::Struct(fields) = args.return_type() else {
            return Err(crate::planner::internal(
                "single-row aggregate without struct type",
            ));
        };
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "value"),
                fields[0].data_type().clone(),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "rows"),
                DataType::UInt64,
                false,
            )),
        ])
    }
}

#[derive(Debug)]
struct SingleRowAccumulator {
    fields: Fields,
    value: ScalarValue,
    rows: u64,
}

impl SingleRowAccumulator {
    fn add(&mut self, rows: u64, value: impl FnOnce() -> Result<ScalarValue>) -> Result<()> {
        if rows > 0 && self.rows == 0 {
            self.value = value()?;
        }
        self.rows = self.rows.saturating_add(rows);
        Ok(())
    }
}

impl Accumulator for SingleRowAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let a = &values[0];
        self.add(a.len() as u64, || ScalarValue::try_from_array(a, 0))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (values, rows) = (&states[0], &states[1]);
        let rows = datafusion::arrow::array::cast::as_primitive_array::<
            datafusion::arrow::datatypes::UInt64Type,
        >(rows);
        for i in 0..rows.len() {
            self.add(rows.value(i), || ScalarValue::try_from_array(values, i))?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            self.value.clone(),
            ScalarValue::UInt64(Some(self.rows)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let columns: Vec<ArrayRef> = vec![
            self.value.to_array()?,
            Arc::new(UInt64Array::from(vec![self.rows])),
        ];
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
            self.fields.clone(),
            columns,
            None,
        )?)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.size() - std::mem::size_of_val(&self.value)
    }
}

/// The value of a [`SINGLE_ROW`] struct: NULL for no row, 21000 for more than one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SubqueryValue {
    signature: Signature,
}

impl Default for SubqueryValue {
    fn default() -> Self {
        SubqueryValue {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SubqueryValue {
    fn name(&self) -> &str {
        SUBQUERY_VALUE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[0] {
            DataType::Struct(f) if f.len() == 2 => Ok(f[0].data_type().clone()),
            other => Err(crate::planner::internal(format!(
                "{SUBQUERY_VALUE} of {other}"
            ))),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        match args.arg_fields[0].data_type() {
            DataType::Struct(f) if f.len() == 2 => {
                Ok(Arc::new(f[0].as_ref().clone().with_name(self.name())))
            }
            other => Err(crate::planner::internal(format!(
                "{SUBQUERY_VALUE} of {other}"
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let array = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let s = datafusion::arrow::array::cast::as_struct_array(&array);
        let rows = datafusion::arrow::array::cast::as_primitive_array::<
            datafusion::arrow::datatypes::UInt64Type,
        >(s.column(1));
        if (0..s.len()).any(|i| s.is_valid(i) && rows.value(i) > 1) {
            return Err(db_to_df(DbError::new(
                SqlState::CardinalityViolation,
                "more than one row returned by a subquery used as an expression",
            )));
        }
        let value = s.column(0);
        let nulls = NullBuffer::union(s.nulls(), value.nulls());
        let out = make_array(value.to_data().into_builder().nulls(nulls).build()?);
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut stmts = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            sql,
        )
        .unwrap();
        wrap_scalar_subqueries(&mut stmts[0], &|n| n == "count" || n == "max");
        stmts[0].to_string()
    }

    #[test]
    fn wraps_only_plain_scalar_subqueries() {
        assert_eq!(
            rewritten("SELECT (SELECT d.x FROM d WHERE d.k = o.k) FROM o"),
            "SELECT __orochi_subquery_value((SELECT __orochi_single_row(d.x) FROM d WHERE d.k = o.k)) FROM o"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT d.x FROM d WHERE d.k = o.k AND o.flag AND (o.a > 1 OR o.b)) FROM o"
            ),
            "SELECT CASE WHEN o.flag AND (o.a > 1 OR o.b) THEN __orochi_subquery_value(\
             (SELECT __orochi_single_row(d.x) FROM d WHERE d.k = o.k)) END FROM o"
        );
        assert_eq!(
            rewritten("SELECT (SELECT x FROM d AS e WHERE e.k = o.k AND flag) FROM o"),
            "SELECT __orochi_subquery_value((SELECT __orochi_single_row(x) FROM d AS e \
             WHERE e.k = o.k AND flag)) FROM o"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT c.n FROM c, t WHERE c.oid = a.c AND t.oid = a.t AND a.c <> t.tc) FROM a"
            ),
            "SELECT CASE WHEN a.c <> __orochi_subquery_value((SELECT __orochi_single_row(t.tc) \
             FROM c, t WHERE c.oid = a.c AND t.oid = a.t)) THEN __orochi_subquery_value((SELECT \
             __orochi_single_row(c.n) FROM c, t WHERE c.oid = a.c AND t.oid = a.t)) END FROM a"
        );
        assert_eq!(
            rewritten("SELECT (SELECT label FROM c1) AS l"),
            "SELECT __orochi_subquery_value((SELECT __orochi_single_row(label) FROM c1)) AS l"
        );
        for unchanged in [
            "SELECT (SELECT count(*) FROM d WHERE d.k = o.k) FROM o",
            "SELECT (SELECT max(x) + 1 FROM d) FROM o",
            "SELECT (SELECT x FROM d ORDER BY x LIMIT 1) FROM o",
            "SELECT (SELECT DISTINCT x FROM d) FROM o",
            "SELECT (SELECT x FROM d GROUP BY x) FROM o",
            "SELECT (SELECT row_number() OVER () FROM d) FROM o",
            "SELECT * FROM o WHERE k IN (SELECT k FROM d)",
            "SELECT * FROM o WHERE EXISTS (SELECT k FROM d WHERE d.k = o.k)",
        ] {
            assert_eq!(rewritten(unchanged), unchanged);
        }
    }
}
