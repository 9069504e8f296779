//! Plans sqlparser ASTs with DataFusion's SQL planner against our catalog.
//!
//! [`Planner`] is the [`ContextProvider`] DataFusion's `SqlToRel` asks for tables and
//! functions: tables come from [`Catalog`] (resolved through the session's `search_path`), plus
//! per-statement in-memory tables (RETURNING rows, ON CONFLICT's `excluded`), functions from the
//! DataFusion session. The AST is planned directly; it is never turned back into a string.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableFunctionArgs;
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DFSchema, TableReference};
use datafusion::datasource::{TableProvider, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner, RelationPlanner};
use datafusion::logical_expr::{
    AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, ScalarUDF, TableSource, WindowUDF,
};
use datafusion::sql::planner::{PlannerContext, SqlToRel};
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, SqlState};
use orochi_common::schema::TableDef;
use orochi_common::service::ShardService;

use crate::catalog::Catalog;
use crate::error::db_to_df;
use crate::provider::OrochiTable;

pub struct Planner<'a> {
    pub state: &'a SessionState,
    pub catalog: &'a Catalog,
    pub service: &'a Arc<dyn ShardService>,
    pub search_path: &'a [String],
    /// The session's user (what `pg_roles`/`pg_user` show besides `postgres`).
    pub user: &'a str,
    /// Statement-local tables, by bare name (checked before the catalog).
    pub extra: HashMap<String, Arc<dyn TableProvider>>,
    /// The session's parameters (`pg_settings`).
    pub settings: Option<crate::settings::SharedSettings>,
    /// Whose privileges tables are read with (SELECT is checked as each is resolved).
    pub access: crate::privilege::Access,
}

impl<'a> Planner<'a> {
    pub fn new(
        state: &'a SessionState,
        catalog: &'a Catalog,
        service: &'a Arc<dyn ShardService>,
        search_path: &'a [String],
    ) -> Self {
        Planner {
            state,
            catalog,
            service,
            search_path,
            user: "postgres",
            extra: HashMap::new(),
            settings: None,
            access: crate::privilege::Access::superuser(),
        }
    }

    /// Resolves a (possibly qualified) table name through the search path.
    pub fn resolve_table(&self, schema: Option<&str>, name: &str) -> Option<Arc<TableDef>> {
        match schema {
            Some(s) => self.catalog.table(s, name),
            None => self
                .search_path
                .iter()
                .find_map(|s| self.catalog.table(s, name)),
        }
    }

    pub fn plan_statement(&self, mut stmt: ast::Statement) -> Result<LogicalPlan> {
        crate::functions::strip_pg_catalog_qualifier(&mut stmt);
        self.wrap_scalar_subqueries(&mut stmt);
        SqlToRel::new(self).sql_statement_to_plan(stmt)
    }

    pub fn plan_query(&self, query: ast::Query) -> Result<LogicalPlan> {
        self.plan_statement(ast::Statement::Query(Box::new(query)))
    }

    /// Plans a query whose rows are used by position (`INSERT … SELECT`): output names may
    /// repeat (`SELECT v, v`), so repeated ones are planned under unique aliases.
    pub fn plan_positional_query(&self, mut query: ast::Query) -> Result<LogicalPlan> {
        if let ast::SetExpr::Select(select) = query.body.as_mut() {
            let name = |item: &ast::SelectItem| match item {
                ast::SelectItem::UnnamedExpr(e) => Some(crate::handler::eval::output_name(e)),
                ast::SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                _ => None,
            };
            let mut counts: HashMap<String, usize> = HashMap::new();
            for item in &select.projection {
                if let Some(n) = name(item) {
                    *counts.entry(n).or_default() += 1;
                }
            }
            for (i, item) in select.projection.iter_mut().enumerate() {
                let repeated = name(item).is_some_and(|n| counts.get(&n).is_some_and(|&c| c > 1));
                if !repeated {
                    continue;
                }
                let expr = match item {
                    ast::SelectItem::UnnamedExpr(e) => e.clone(),
                    ast::SelectItem::ExprWithAlias { expr, .. } => expr.clone(),
                    _ => continue,
                };
                *item = ast::SelectItem::ExprWithAlias {
                    expr,
                    alias: ast::Ident::new(format!("{OUTPUT_ALIAS_PREFIX}{i}")),
                };
            }
        }
        self.plan_query(query)
    }

    /// Plans a query whose rows go to a client. Unaliased select-list expressions get the
    /// column names Postgres gives them (`count`, `?column?`, the column under a cast), which
    /// may repeat — DataFusion requires unique names, so they are planned under internal
    /// aliases and renamed only in the returned client-facing schema.
    pub fn plan_client_query(&self, query: ast::Query) -> Result<(LogicalPlan, SchemaRef)> {
        // Postgres spellings were normalized at parse time (`pgwire::parse`)
        let mut query = query;
        let names = assign_output_aliases(&mut query);
        crate::system::prune_selects_over_empty_tables(&mut query, &|name| {
            self.state.aggregate_functions().contains_key(name)
        });
        type_integer_literals(&mut query);
        let mut stmt = ast::Statement::Query(Box::new(query));
        self.wrap_scalar_subqueries(&mut stmt);
        let plan = SqlToRel::new(self).sql_statement_to_plan(stmt)?;
        let schema = plan.schema().inner().clone();
        // A cast's result is of the target type, but DataFusion carries the source column's
        // field metadata (our SQL type) through it: drop it there.
        let casts: Vec<bool> = match &plan {
            LogicalPlan::Projection(p) => p
                .expr
                .iter()
                .map(|e| {
                    matches!(
                        e.clone().unalias_nested().data,
                        Expr::Cast(_) | Expr::TryCast(_)
                    )
                })
                .collect(),
            _ => vec![],
        };
        if names.is_empty() && !casts.contains(&true) {
            return Ok((plan, schema));
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = if casts.get(i).copied().unwrap_or(false) {
                    Arc::new(f.as_ref().clone().with_metadata(Default::default()))
                } else {
                    f.clone()
                };
                let pg = f
                    .name()
                    .strip_prefix(OUTPUT_ALIAS_PREFIX)
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| names.get(i));
                match pg {
                    Some(n) => f.as_ref().clone().with_name(n.clone()),
                    None => f.as_ref().clone(),
                }
            })
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        Ok((plan, schema))
    }

    /// See [`crate::subquery`].
    fn wrap_scalar_subqueries(&self, stmt: &mut ast::Statement) {
        let is_aggregate = |name: &str| self.state.aggregate_functions().contains_key(name);
        crate::system::prune_subqueries_over_empty_tables(stmt, &is_aggregate);
        crate::subquery::wrap_scalar_subqueries(stmt, &is_aggregate);
    }

    /// Plans a scalar expression over `schema` (columns may be qualified by `schema`'s tables).
    pub fn plan_expr(&self, expr: ast::Expr, schema: &DFSchema) -> Result<Expr> {
        SqlToRel::new(self).sql_to_expr(expr, schema, &mut PlannerContext::new())
    }
}

impl ContextProvider for Planner<'_> {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        let (schema, table) = match &name {
            TableReference::Bare { table } => {
                if let Some(t) = self.extra.get(table.as_ref()) {
                    return Ok(provider_as_source(t.clone()));
                }
                (None, table.as_ref())
            }
            TableReference::Partial { schema, table } => (Some(schema.as_ref()), table.as_ref()),
            TableReference::Full { schema, table, .. } => (Some(schema.as_ref()), table.as_ref()),
        };
        // pg_catalog is searched first (implicitly, as in Postgres)
        let system = match schema {
            Some("pg_catalog") => true,
            None => !self.search_path.iter().any(|s| s == "pg_catalog"),
            Some(_) => false,
        };
        if schema == Some("information_schema")
            && let Some(t) = crate::infoschema::table(self.catalog, table, &self.access)
        {
            return Ok(provider_as_source(t));
        }
        if system
            && table == "pg_settings"
            && let Some(settings) = &self.settings
        {
            return Ok(provider_as_source(crate::system::pg_settings(
                &settings.lock(),
            )));
        }
        if system && table == "pg_authid" && !self.access.superuser {
            return Err(db_to_df(crate::privilege::permission_denied(
                crate::privilege::ObjectKind::Table,
                table,
            )));
        }
        if system && table == "pg_proc" {
            return Ok(provider_as_source(crate::procs::pg_proc(self.state)));
        }
        if system
            && (crate::system::TABLES.contains(&table) || crate::system::is_empty_table(table))
            && let Some(t) = crate::system::table(self.catalog, table, self.user)
        {
            return Ok(provider_as_source(t));
        }
        match self.resolve_table(schema, table) {
            Some(def) => {
                crate::privilege::check_table(
                    self.catalog,
                    &self.access,
                    &def,
                    crate::privilege::Privilege::Select,
                )
                .map_err(db_to_df)?;
                Ok(provider_as_source(Arc::new(OrochiTable::new(
                    def,
                    self.service.clone(),
                ))))
            }
            None => Err(db_to_df(DbError::new(
                SqlState::UndefinedTable,
                format!("relation \"{}\" does not exist", name),
            ))),
        }
    }

    fn get_table_function_source(
        &self,
        name: &str,
        args: Vec<Expr>,
    ) -> Result<Arc<dyn TableSource>> {
        let f = self
            .state
            .table_functions()
            .get(name)
            .cloned()
            .ok_or_else(|| {
                db_to_df(DbError::new(
                    SqlState::UndefinedFunction,
                    format!("function {name} does not exist"),
                ))
            })?;
        let provider =
            f.create_table_provider_with_args(TableFunctionArgs::new(&args, self.state))?;
        Ok(provider_as_source(provider))
    }

    fn create_cte_work_table(&self, name: &str, schema: SchemaRef) -> Result<Arc<dyn TableSource>> {
        Ok(provider_as_source(Arc::new(
            datafusion::datasource::cte_worktable::CteWorkTable::new(name, schema),
        )))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_relation_planners(&self) -> &[Arc<dyn RelationPlanner>] {
        self.state.relation_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}

/// Integer literals that fit in 32 bits are `integer` (int4) in Postgres; DataFusion makes
/// every integer literal Int64. In select lists (of the query, its set operations, CTEs and
/// derived tables) such literals get an explicit `::int4`, so `SELECT 1` and `int4col + 1` are
/// int4 as in Postgres (and overflow as int4). Only select lists: a literal in ORDER BY/GROUP BY
/// is a column position, and LIMIT/OFFSET want plain constants.
fn type_integer_literals(query: &mut ast::Query) {
    fn in_query(q: &mut ast::Query) {
        if let Some(with) = q.with.as_mut() {
            for cte in with.cte_tables.iter_mut() {
                in_query(&mut cte.query);
            }
        }
        in_set_expr(&mut q.body);
    }
    fn in_set_expr(body: &mut ast::SetExpr) {
        match body {
            ast::SetExpr::Select(select) => {
                for item in select.projection.iter_mut() {
                    match item {
                        ast::SelectItem::UnnamedExpr(e)
                        | ast::SelectItem::ExprWithAlias { expr: e, .. } => in_expr(e),
                        _ => {}
                    }
                }
                // GROUP BY must see the select list's expressions as they are now typed
                // (`GROUP BY g * 10` matching `SELECT g * 10`); a bare number is a position
                if let ast::GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
                    for e in exprs.iter_mut() {
                        if !matches!(e, ast::Expr::Value(_)) {
                            in_expr(e);
                        }
                    }
                }
                if let Some(h) = select.having.as_mut() {
                    in_expr(h);
                }
                for twj in select.from.iter_mut() {
                    in_table_factor(&mut twj.relation);
                    for j in twj.joins.iter_mut() {
                        in_table_factor(&mut j.relation);
                    }
                }
            }
            ast::SetExpr::SetOperation { left, right, .. } => {
                in_set_expr(left);
                in_set_expr(right);
            }
            ast::SetExpr::Query(q) => in_query(q),
            _ => {}
        }
    }
    fn in_table_factor(t: &mut ast::TableFactor) {
        if let ast::TableFactor::Derived { subquery, .. } = t {
            in_query(subquery);
        }
    }
    fn in_expr(e: &mut ast::Expr) {
        let _ = ast::visit_expressions_mut(e, |x| {
            if let ast::Expr::Value(v) = x
                && let ast::Value::Number(n, false) = &v.value
                && n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<i32>().is_ok()
            {
                *x = ast::Expr::Cast {
                    kind: ast::CastKind::DoubleColon,
                    expr: Box::new(x.clone()),
                    data_type: ast::DataType::Int4(None),
                    array: false,
                    format: None,
                };
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    in_query(query);
}

const OUTPUT_ALIAS_PREFIX: &str = "__orochi_out_";

/// Gives each unaliased expression in the query's (leftmost) select list an internal alias
/// `__orochi_out_<i>`; returns the Postgres names, indexed by `i`.
fn assign_output_aliases(query: &mut ast::Query) -> Vec<String> {
    fn leftmost(body: &mut ast::SetExpr) -> Option<&mut ast::Select> {
        match body {
            ast::SetExpr::Select(s) => Some(s),
            ast::SetExpr::SetOperation { left, .. } => leftmost(left),
            _ => None,
        }
    }
    let mut names = Vec::new();
    let Some(select) = leftmost(&mut query.body) else {
        return names;
    };
    // how often each output name occurs: a repeated plain column (`SELECT id, id`) needs an
    // alias too, DataFusion refusing two projections of one name
    let mut counts: HashMap<String, usize> = HashMap::new();
    for item in &select.projection {
        if let ast::SelectItem::UnnamedExpr(e) = item {
            *counts
                .entry(crate::handler::eval::output_name(e))
                .or_default() += 1;
        }
    }
    for item in select.projection.iter_mut() {
        if let ast::SelectItem::UnnamedExpr(e) = item {
            // plain column references keep DataFusion's (identical) naming unless repeated
            if matches!(
                e,
                ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_)
            ) && counts
                .get(&crate::handler::eval::output_name(e))
                .is_some_and(|&n| n < 2)
            {
                continue;
            }
            let alias = ast::Ident::new(format!("{OUTPUT_ALIAS_PREFIX}{}", names.len()));
            names.push(crate::handler::eval::output_name(e));
            *item = ast::SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias,
            };
        }
    }
    names
}

/// Unused-import guard for error conversions used by callers.
pub fn internal(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(msg.into())
}
