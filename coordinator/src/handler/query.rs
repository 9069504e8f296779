//! SELECT (and anything else DataFusion plans as a query).

use arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::sql::sqlparser::ast;
use orochi_common::error::DbResult;

use crate::error::df_to_db;
use crate::session::{Params, Session, StatementResult};

pub async fn handle_query(
    s: &mut Session,
    q: &ast::Query,
    params: &Params,
) -> DbResult<StatementResult> {
    crate::functions::sizes::prepare(s, q).await?;
    crate::functions::cluster::prepare(s, q).await?;
    crate::functions::storage::prepare(s, q).await?;
    let mut q = q.clone();
    crate::functions::bind_table_function_args(&mut q, Some(params));
    let (plan, schema) = s.planner().plan_client_query(q).map_err(df_to_db)?;
    let plan = bind_plan(plan, params)?;
    run_plan(s, plan, schema, "SELECT").await
}

pub fn bind_plan(plan: LogicalPlan, params: &Params) -> DbResult<LogicalPlan> {
    if params.is_empty() {
        return Ok(plan);
    }
    plan.with_param_values(ParamValues::List(
        params.iter().cloned().map(Into::into).collect(),
    ))
    .map_err(df_to_db)
}

/// Executes a plan; `schema` is the client-facing schema (names may differ from the plan's).
pub async fn run_plan(
    s: &Session,
    plan: LogicalPlan,
    schema: SchemaRef,
    tag: &str,
) -> DbResult<StatementResult> {
    let physical = s
        .state
        .create_physical_plan(&plan)
        .await
        .map_err(df_to_db)?;
    let stream = execute_stream(physical, s.state.task_ctx()).map_err(df_to_db)?;
    Ok(StatementResult::Rows {
        schema,
        stream,
        tag: tag.to_string(),
    })
}
