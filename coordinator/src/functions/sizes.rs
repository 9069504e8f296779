//! `pg_table_size`, `pg_relation_size`, `pg_total_relation_size`, `pg_indexes_size` and
//! `pg_database_size`: bytes of row-store keys and rows, from the shard owners'
//! [`ShardService::shard_stats`](orochi_common::service::ShardService::shard_stats).
//!
//! The row store is index-organized (rows are stored in primary-key order), so a table's
//! primary-key "index" has no size of its own: `pg_indexes_size` is 0 and a `_pkey` relation
//! measures 0 bytes. Sizes are gathered before planning, only for statements that call one of
//! these functions (the stats walk every shard of every table).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast;
use orochi_common::error::DbResult;

use crate::session::Session;

const NAMES: &[&str] = &[
    "pg_table_size",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_indexes_size",
    "pg_database_size",
];

#[derive(Debug)]
struct SizeOf {
    name: &'static str,
    /// Bytes by relation oid.
    sizes: Arc<HashMap<u32, i64>>,
    signature: Signature,
}

impl PartialEq for SizeOf {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && Arc::ptr_eq(&self.sizes, &o.sizes)
    }
}
impl Eq for SizeOf {}
impl std::hash::Hash for SizeOf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for SizeOf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.name == "pg_database_size" {
            // one database: whatever names it (by name or oid) measures all tables
            let total: i64 = self.sizes.values().sum();
            return Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(total))));
        }
        super::map_oids(&args, |oid| {
            ScalarValue::Int64(Some(if self.name == "pg_indexes_size" {
                0
            } else {
                // an unknown oid (or an index) measures nothing; Postgres gives NULL for a
                // relation that does not exist
                self.sizes.get(&oid).copied().unwrap_or(0)
            }))
        })
    }
}

/// Whether `query` calls one of the size functions.
fn uses_sizes(query: &ast::Query) -> bool {
    ast::visit_expressions(query, |e| match e {
        ast::Expr::Function(f)
            if f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| NAMES.iter().any(|n| i.value.eq_ignore_ascii_case(n))) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Registers the size functions for `query` (with current sizes) if it calls one.
pub async fn prepare(s: &mut Session, query: &ast::Query) -> DbResult<()> {
    if !uses_sizes(query) {
        return Ok(());
    }
    let mut sizes = HashMap::new();
    for def in s.instance.catalog.all_tables() {
        let stats = s.instance.service.shard_stats(def.id).await?;
        let bytes: u64 = stats.iter().map(|s| s.bytes()).sum();
        sizes.insert(def.id as u32, i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    let sizes = Arc::new(sizes);
    use datafusion::execution::FunctionRegistry;
    for &name in NAMES {
        let f = ScalarUDF::new_from_impl(SizeOf {
            name,
            sizes: sizes.clone(),
            signature: Signature::any(1, Volatility::Volatile),
        });
        s.state
            .register_udf(Arc::new(f))
            .map_err(crate::error::df_to_db)?;
    }
    Ok(())
}
