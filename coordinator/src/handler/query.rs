//! SELECT (and anything else DataFusion plans as a query).

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
    let plan = s.planner().plan_query(q.clone()).map_err(df_to_db)?;
    let plan = bind_plan(plan, params)?;
    run_plan(s, plan, "SELECT").await
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

pub async fn run_plan(s: &Session, plan: LogicalPlan, tag: &str) -> DbResult<StatementResult> {
    let physical = s
        .state
        .create_physical_plan(&plan)
        .await
        .map_err(df_to_db)?;
    let stream = execute_stream(physical, s.state.task_ctx()).map_err(df_to_db)?;
    // keep the logical names (DataFusion may rename physical columns)
    let schema = plan.schema().inner().clone();
    Ok(StatementResult::Rows {
        schema,
        stream,
        tag: tag.to_string(),
    })
}
