//! EXPLAIN: DataFusion's physical plan for queries (our `ShardScanExec` shows the shards and key
//! lookups); for UPDATE/DELETE, the route we take.

use std::sync::Arc;

use datafusion::common::DFSchema;
use datafusion::physical_plan::{displayable, execute_stream};
use datafusion::sql::sqlparser::ast;
use futures::TryStreamExt;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::TableDef;

use crate::error::df_to_db;
use crate::handler::dml::{delete_target, dml_target, pinned_keys, resolve_table};
use crate::handler::query::bind_plan;
use crate::session::{Params, Session, StatementResult};

pub async fn handle_explain(
    s: &mut Session,
    stmt: &ast::Statement,
    analyze: bool,
    verbose: bool,
    params: &Params,
) -> DbResult<StatementResult> {
    let lines: Vec<String> = match stmt {
        ast::Statement::Query(q) => {
            let mut q = (**q).clone();
            crate::functions::bind_table_function_args(&mut q, Some(params));
            let plan = s.planner().plan_query(q).map_err(df_to_db)?;
            let plan = bind_plan(plan, params)?;
            let physical = s
                .state
                .create_physical_plan(&plan)
                .await
                .map_err(df_to_db)?;
            if analyze {
                let stream =
                    execute_stream(physical.clone(), s.state.task_ctx()).map_err(df_to_db)?;
                let _: Vec<_> = stream.try_collect().await.map_err(df_to_db)?;
                let text = displayable(physical.as_ref()).indent(verbose).to_string();
                let mut out: Vec<String> = text.lines().map(str::to_string).collect();
                for (worker, (rows, bytes)) in crate::exec::shard_scan::shipped(&physical) {
                    out.push(format!("Shipped from {worker}: rows={rows}, bytes={bytes}"));
                }
                if let Some(m) = physical.metrics() {
                    out.push(format!("Output rows: {}", m.output_rows().unwrap_or(0)));
                }
                out
            } else {
                displayable(physical.as_ref())
                    .indent(verbose)
                    .to_string()
                    .lines()
                    .map(str::to_string)
                    .collect()
            }
        }
        ast::Statement::Update(u) => {
            let (def, alias) = dml_target(s, &u.table)?;
            route(s, "Update", &def, &alias, u.selection.as_ref(), params)?
        }
        ast::Statement::Delete(d) => {
            let (def, alias) = dml_target(s, delete_target(d)?)?;
            route(s, "Delete", &def, &alias, d.selection.as_ref(), params)?
        }
        ast::Statement::Insert(i) => {
            let ast::TableObject::TableName(name) = &i.table else {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    "EXPLAIN of this INSERT is not supported",
                ));
            };
            let def = resolve_table(s, name)?;
            vec![format!(
                "Insert on {}: rows routed to their shards by hash of {}",
                def.qualified_name(),
                def.columns[def.distribution_column].name
            )]
        }
        other => {
            return Err(DbError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "EXPLAIN {} is not supported",
                    crate::session::statement_kind(other)
                ),
            ));
        }
    };
    StatementResult::text_column("QUERY PLAN", false, lines, "EXPLAIN")
}

fn route(
    s: &Session,
    verb: &str,
    def: &Arc<TableDef>,
    alias: &str,
    selection: Option<&ast::Expr>,
    params: &Params,
) -> DbResult<Vec<String>> {
    let (df_schema, _): (DFSchema, _) = crate::handler::eval::table_df_schema(def, alias)?;
    let pinned = pinned_keys(s, def, &df_schema, selection, params)?;
    let mut out = vec![format!("{verb} on {}", def.qualified_name())];
    match pinned {
        Some(keys) => {
            let key_types = def.key_types();
            let pos = def.distribution_key_position();
            let mut shards: Vec<u32> = keys
                .iter()
                .filter_map(|k| orochi_common::keycodec::decode_key(&key_types, k).ok())
                .map(|v| def.shard_of_value(&v[pos]))
                .collect();
            shards.sort();
            shards.dedup();
            out.push(format!(
                "  -> KeyLookup: shards={}/{} {:?}, keys={}",
                shards.len(),
                def.shard_count,
                shards,
                keys.len()
            ));
        }
        None => {
            out.push(format!(
                "  -> ShardScan: shards={}/{}",
                def.shard_count, def.shard_count
            ));
            if let Some(w) = selection {
                out.push(format!("        Filter: {w}"));
            }
        }
    }
    Ok(out)
}
