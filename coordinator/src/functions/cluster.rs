//! The cluster functions, set-returning (usable as `SELECT … FROM f() WHERE …`):
//!
//! - `orochi_cluster_status()`: `node_id, role, address, state, shard_count, last_heartbeat`;
//!   node 0 is this coordinator, then the shard owners (standalone: the embedded worker).
//! - `orochi_shard_distribution()`: `table_name, shard_id, hash_min, hash_max, worker,
//!   row_count, size_bytes`, one row per shard of every table.
//! - `orochi_raft_status()`: `node_id, role, term, leader_id, commit_index, applied_index,
//!   members`: this coordinator's view of the catalog's Raft group (`members`: the voters,
//!   `id=raft address`, comma-separated; a one-member group's address is `local`).
//!
//! Like the size functions, their rows are gathered before planning, only for statements
//! that call them (a worker is asked whether it is up; shard statistics walk every shard).

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, plan_err};
use datafusion::datasource::MemTable;
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, DbResult};
use orochi_common::hash::shard_hash_range;

use crate::session::Session;

const CLUSTER_STATUS: &str = "orochi_cluster_status";
const SHARD_DISTRIBUTION: &str = "orochi_shard_distribution";
const RAFT_STATUS: &str = "orochi_raft_status";

/// A table function returning rows gathered for this statement.
#[derive(Debug)]
pub(crate) struct Rows {
    pub name: &'static str,
    pub batch: RecordBatch,
}

impl TableFunctionImpl for Rows {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("function {}() takes no arguments", self.name);
        }
        Ok(Arc::new(MemTable::try_new(
            self.batch.schema(),
            vec![vec![self.batch.clone()]],
        )?))
    }
}

/// Which of the table functions `names` `query` reads from, in that order.
pub(crate) fn reads<const N: usize>(query: &ast::Query, names: [&str; N]) -> [bool; N] {
    let mut found = [false; N];
    let _ = ast::visit_relations(query, |name| {
        if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
            for (f, n) in found.iter_mut().zip(names) {
                *f |= last.value.eq_ignore_ascii_case(n);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

pub(crate) fn arrow_err(e: arrow::error::ArrowError) -> DbError {
    DbError::internal(format!("building a result: {e}"))
}

/// Registers the cluster functions for `query` (with current rows) if it reads one.
pub async fn prepare(s: &mut Session, query: &ast::Query) -> DbResult<()> {
    let [status, distribution, raft] =
        reads(query, [CLUSTER_STATUS, SHARD_DISTRIBUTION, RAFT_STATUS]);
    if raft {
        register_raft_status(s)?;
    }
    if !status && !distribution {
        return Ok(());
    }
    let service = s.instance.service.clone();
    let tables = s.instance.catalog.all_tables();
    let nodes = service.nodes().await;
    let address_of = |i: usize| nodes.get(i).map_or("unknown", |n| n.address.as_str());
    if status {
        let shard_count = |node: usize| -> i32 {
            tables
                .iter()
                .map(|t| {
                    (0..t.shard_count)
                        .filter(|&sh| service.owner_of(t, sh) == node)
                        .count() as i32
                })
                .sum()
        };
        let now = chrono::Utc::now().timestamp_micros();
        let mut ids = vec![0];
        let mut roles = vec!["coordinator".to_string()];
        let mut addresses = vec![s.instance.options.listen.clone()];
        let mut states = vec!["up".to_string()];
        let mut shards = vec![0];
        let mut heartbeats = vec![Some(now)];
        for (i, n) in nodes.iter().enumerate() {
            ids.push(i as i32 + 1);
            roles.push("worker".into());
            addresses.push(n.address.clone());
            states.push(if n.up { "up" } else { "down" }.into());
            shards.push(shard_count(i));
            heartbeats.push(n.last_contact_micros);
        }
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("node_id", DataType::Int32, false),
            Field::new("role", DataType::Utf8, false),
            Field::new("address", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("shard_count", DataType::Int32, false),
            Field::new(
                "last_heartbeat",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(roles)),
            Arc::new(StringArray::from(addresses)),
            Arc::new(StringArray::from(states)),
            Arc::new(Int32Array::from(shards)),
            Arc::new(TimestampMicrosecondArray::from(heartbeats).with_timezone("+00:00")),
        ];
        let batch = RecordBatch::try_new(schema, columns).map_err(arrow_err)?;
        s.state.register_udtf(
            CLUSTER_STATUS,
            Arc::new(Rows {
                name: CLUSTER_STATUS,
                batch,
            }),
        );
    }
    if distribution {
        let mut names = Vec::new();
        let mut ids = Vec::new();
        let mut mins = Vec::new();
        let mut maxs = Vec::new();
        let mut workers = Vec::new();
        let mut rows = Vec::new();
        let mut bytes = Vec::new();
        let mut sorted = tables.clone();
        sorted.sort_by_key(|t| t.qualified_name());
        for t in &sorted {
            let stats = service.shard_stats(t.id).await?;
            for st in stats {
                let (shard, n, b) = (st.shard, st.rows, st.bytes());
                let (lo, hi) = shard_hash_range(shard, t.shard_count);
                names.push(t.qualified_name());
                ids.push(shard as i32);
                mins.push(lo as i64);
                maxs.push(hi as i64);
                workers.push(address_of(service.owner_of(t, shard)).to_string());
                rows.push(i64::try_from(n).unwrap_or(i64::MAX));
                bytes.push(i64::try_from(b).unwrap_or(i64::MAX));
            }
        }
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("shard_id", DataType::Int32, false),
            Field::new("hash_min", DataType::Int64, false),
            Field::new("hash_max", DataType::Int64, false),
            Field::new("worker", DataType::Utf8, false),
            Field::new("row_count", DataType::Int64, false),
            Field::new("size_bytes", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(Int32Array::from(ids)),
            Arc::new(Int64Array::from(mins)),
            Arc::new(Int64Array::from(maxs)),
            Arc::new(StringArray::from(workers)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(bytes)),
        ];
        let batch = RecordBatch::try_new(schema, columns).map_err(arrow_err)?;
        s.state.register_udtf(
            SHARD_DISTRIBUTION,
            Arc::new(Rows {
                name: SHARD_DISTRIBUTION,
                batch,
            }),
        );
    }
    Ok(())
}

fn register_raft_status(s: &mut Session) -> DbResult<()> {
    let r = s.instance.catalog.raft_status();
    let members = r
        .members
        .iter()
        .map(|(id, addr)| {
            let addr = if addr.is_empty() { "local" } else { addr };
            format!("{id}={addr}")
        })
        .collect::<Vec<_>>()
        .join(",");
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("node_id", DataType::Int64, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("term", DataType::Int64, false),
        Field::new("leader_id", DataType::Int64, true),
        Field::new("commit_index", DataType::Int64, false),
        Field::new("applied_index", DataType::Int64, false),
        Field::new("members", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![int(r.node_id)])),
        Arc::new(StringArray::from(vec![r.role])),
        Arc::new(Int64Array::from(vec![int(r.term)])),
        Arc::new(Int64Array::from(vec![r.leader_id.map(int)])),
        Arc::new(Int64Array::from(vec![int(r.commit_index)])),
        Arc::new(Int64Array::from(vec![int(r.applied_index)])),
        Arc::new(StringArray::from(vec![members])),
    ];
    let batch = RecordBatch::try_new(schema, columns).map_err(arrow_err)?;
    s.state.register_udtf(
        RAFT_STATUS,
        Arc::new(Rows {
            name: RAFT_STATUS,
            batch,
        }),
    );
    Ok(())
}
