//! Plan fragments: the lower part of a query plan that the coordinator runs *on the workers*
//! owning the shards it reads — filters, projections and partial aggregates — so a worker
//! ships filtered rows or one partial state per group instead of every row.
//!
//! A fragment is a DataFusion physical plan encoded with `datafusion-proto`. Its one leaf is a
//! [`ShardInputExec`]: a placeholder on the coordinator, bound on the worker to the rows of the
//! shards the scan request names (under the request's transaction, so it sees its own writes).
//! The coordinator ships only expressions and aggregates the worker resolves to the same
//! implementation ([`WorkerFunctions::can_run`]); anything else stays on the coordinator.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_expr::{
    EquivalenceProperties, Partitioning, PhysicalExpr, ScalarFunctionExpr,
};
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::TryStreamExt;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::service::BatchStream;
use parking_lot::Mutex;
use prost::Message;

use crate::dferror::{db_to_df, df_to_db};

/// A fragment's input: the projected rows of one table's scanned shards, one partition.
/// Input 0 is the scan request's table, inputs 1.. its `more_inputs` (joined tables).
pub struct ShardInputExec {
    index: usize,
    schema: SchemaRef,
    /// Bound on the worker; `None` in the coordinator's placeholder (and once executed).
    input: Mutex<Option<BatchStream>>,
    properties: Arc<PlanProperties>,
}

impl ShardInputExec {
    /// The placeholder the coordinator puts where the shard scan of input `index` was.
    pub fn placeholder(index: usize, schema: SchemaRef) -> ShardInputExec {
        Self::new(index, schema, None)
    }

    fn new(index: usize, schema: SchemaRef, input: Option<BatchStream>) -> ShardInputExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        ShardInputExec {
            index,
            schema,
            input: Mutex::new(input),
            properties,
        }
    }
}

impl fmt::Debug for ShardInputExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardInputExec")
            .field("index", &self.index)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for ShardInputExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ShardInputExec: input={}", self.index)
    }
}

impl ExecutionPlan for ShardInputExec {
    fn name(&self) -> &'static str {
        "ShardInputExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ShardInputExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ShardInputExec has no partition {partition}"
            )));
        }
        let input = self.input.lock().take().ok_or_else(|| {
            DataFusionError::Internal("a fragment's shard input can be read once".into())
        })?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            input.map_err(db_to_df),
        )))
    }
}

/// Encodes [`ShardInputExec`] (its input index, then its schema); every other node is
/// datafusion-proto's own.
struct Codec {
    /// The worker's inputs, each given to the one leaf of its index.
    inputs: Mutex<Vec<Option<BatchStream>>>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FragmentCodec")
    }
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Plan(
                "a fragment leaf has no inputs".into(),
            ));
        }
        let bad =
            |e: &dyn fmt::Display| DataFusionError::Plan(format!("decoding a fragment leaf: {e}"));
        let (index, schema) = buf
            .split_first_chunk::<4>()
            .ok_or_else(|| bad(&"too short"))?;
        let index = u32::from_le_bytes(*index) as usize;
        let proto = datafusion_proto::protobuf::Schema::decode(schema).map_err(|e| bad(&e))?;
        let schema: Schema = (&proto).try_into().map_err(|e| bad(&e))?;
        let input = self
            .inputs
            .lock()
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "a fragment reads shard input {index} once, and only inputs it was given"
                ))
            })?;
        Ok(Arc::new(ShardInputExec::new(
            index,
            Arc::new(schema),
            Some(input),
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(leaf) = (node.as_ref() as &dyn Any).downcast_ref::<ShardInputExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on a worker",
                node.name()
            )));
        };
        let proto: datafusion_proto::protobuf::Schema = leaf
            .schema
            .as_ref()
            .try_into()
            .map_err(|e| DataFusionError::Plan(format!("encoding a fragment leaf: {e}")))?;
        buf.extend_from_slice(&(leaf.index as u32).to_le_bytes());
        proto
            .encode(buf)
            .map_err(|e| DataFusionError::Plan(format!("encoding a fragment leaf: {e}")))
    }
}

/// Encodes a fragment whose leaves are [`ShardInputExec`] placeholders.
pub fn encode(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    let codec = Codec {
        inputs: Mutex::new(Vec::new()),
    };
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &codec)?
            .to_vec(),
    )
}

/// Runs an encoded fragment over `inputs` (the rows of the scanned shards of each table it
/// reads).
pub fn execute(
    bytes: &[u8],
    inputs: Vec<BatchStream>,
    ctx: Arc<TaskContext>,
) -> DbResult<BatchStream> {
    let codec = Codec {
        inputs: Mutex::new(inputs.into_iter().map(Some).collect()),
    };
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, &ctx, &codec)
            .map_err(|e| {
                DbError::new(
                    SqlState::ProtocolViolation,
                    format!("undecodable plan fragment: {e}"),
                )
            })?;
    if codec.inputs.lock().iter().any(Option::is_some) {
        return Err(DbError::new(
            SqlState::ProtocolViolation,
            "a plan fragment must read every shard input it is given",
        ));
    }
    let partitions = plan.properties().output_partitioning().partition_count();
    if partitions != 1 {
        return Err(DbError::new(
            SqlState::ProtocolViolation,
            format!("a plan fragment has one output partition, not {partitions}"),
        ));
    }
    let stream = plan.execute(0, ctx).map_err(df_to_db)?;
    Ok(Box::pin(stream.map_err(df_to_db)))
}

/// The execution context fragments run in: DataFusion's built-in functions, the session
/// options the coordinator plans with, and the given runtime (its memory pool bounds the
/// partial aggregates).
pub fn task_context(runtime: Arc<RuntimeEnv>) -> Arc<TaskContext> {
    datafusion::execution::SessionStateBuilder::new()
        .with_config(session_config())
        .with_runtime_env(runtime)
        .with_default_features()
        .build()
        .task_ctx()
}

/// The DataFusion options of a coordinator session that matter to execution.
pub fn session_config() -> datafusion::prelude::SessionConfig {
    let mut config = datafusion::prelude::SessionConfig::new().with_batch_size(8192);
    config.options_mut().execution.time_zone = Some("+00:00".to_string());
    config
}

/// The functions a worker resolves, by name, when it decodes a fragment.
#[derive(Debug, Clone)]
pub struct WorkerFunctions {
    scalar: HashMap<String, Arc<ScalarUDF>>,
    aggregate: HashMap<String, Arc<AggregateUDF>>,
}

impl Default for WorkerFunctions {
    fn default() -> Self {
        let ctx = task_context(Arc::new(RuntimeEnv::default()));
        WorkerFunctions {
            scalar: ctx.scalar_functions().clone(),
            aggregate: ctx.aggregate_functions().clone(),
        }
    }
}

impl WorkerFunctions {
    /// Whether `node`'s expressions and aggregates mean the same on a worker: every function
    /// is one the worker resolves to the same implementation (not one of the coordinator's
    /// session functions, and not a runtime-updated dynamic filter or a subquery's result).
    pub fn can_run(&self, node: &dyn ExecutionPlan) -> bool {
        if let Some(agg) = (node as &dyn Any).downcast_ref::<AggregateExec>() {
            for a in agg.aggr_expr() {
                let f = a.fun();
                if self.aggregate.get(f.name()).is_none_or(|w| **w != *f) {
                    return false;
                }
            }
        }
        let mut ok = true;
        let mut check = |root: &Arc<dyn PhysicalExpr>| {
            root.apply(|e| {
                let any = e.as_ref() as &dyn Any;
                if any.is::<DynamicFilterPhysicalExpr>() || any.is::<ScalarSubqueryExpr>() {
                    ok = false;
                } else if let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() {
                    let fun = f.fun();
                    if self.scalar.get(fun.name()).is_none_or(|w| **w != *fun) {
                        ok = false;
                    }
                }
                Ok(if ok {
                    TreeNodeRecursion::Continue
                } else {
                    TreeNodeRecursion::Stop
                })
            })
        };
        if let Some(join) = (node as &dyn Any).downcast_ref::<HashJoinExec>() {
            // its keys and filter; the dynamic filter a join produces for its probe side is
            // its own business (the worker's join builds its own)
            for (l, r) in join.on() {
                let _ = check(l);
                let _ = check(r);
            }
            if let Some(f) = join.filter() {
                let _ = check(f.expression());
            }
        } else {
            let _ = node.apply_expressions(&mut check);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field};
    use arrow::record_batch::RecordBatch;
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::{ColumnarValue, Volatility, col, create_udf, lit};
    use datafusion::physical_expr::create_physical_expr;
    use datafusion::physical_plan::filter::FilterExec;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]))
    }

    fn input(values: Vec<Vec<i64>>) -> BatchStream {
        let batches: Vec<DbResult<RecordBatch>> = values
            .into_iter()
            .map(|v| {
                Ok(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(v))]).unwrap())
            })
            .collect();
        Box::pin(futures::stream::iter(batches))
    }

    fn predicate(e: datafusion::logical_expr::Expr) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(schema().as_ref().clone()).unwrap();
        create_physical_expr(&e, &df, &Default::default(), &Default::default()).unwrap()
    }

    #[tokio::test]
    async fn a_filter_runs_over_the_shard_input_after_a_round_trip() {
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(ShardInputExec::placeholder(0, schema()));
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(FilterExec::try_new(predicate(col("a").gt(lit(2i64))), leaf).unwrap());
        assert!(WorkerFunctions::default().can_run(plan.as_ref()));
        let bytes = encode(plan).unwrap();
        let ctx = task_context(Arc::new(RuntimeEnv::default()));
        let out: Vec<RecordBatch> = execute(&bytes, vec![input(vec![vec![1, 2, 3], vec![4]])], ctx)
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let got: Vec<i64> = out
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, vec![3, 4]);
    }

    #[test]
    fn a_function_the_worker_does_not_know_is_not_shipped() {
        let coordinator_only = create_udf(
            "coordinator_only",
            vec![DataType::Int64],
            DataType::Boolean,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| Ok(args[0].clone())),
        );
        // a built-in name with another implementation does not count as the built-in either
        let shadowing = create_udf(
            "abs",
            vec![DataType::Int64],
            DataType::Int64,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| Ok(args[0].clone())),
        );
        let functions = WorkerFunctions::default();
        for e in [
            coordinator_only.call(vec![col("a")]),
            shadowing.call(vec![col("a")]).gt(lit(1i64)),
        ] {
            let leaf: Arc<dyn ExecutionPlan> = Arc::new(ShardInputExec::placeholder(0, schema()));
            let plan = FilterExec::try_new(predicate(e), leaf).unwrap();
            assert!(!functions.can_run(&plan));
        }
        // while the real built-in is
        let abs = datafusion::functions::math::abs();
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(ShardInputExec::placeholder(0, schema()));
        let plan =
            FilterExec::try_new(predicate(abs.call(vec![col("a")]).gt(lit(1i64))), leaf).unwrap();
        assert!(functions.can_run(&plan));
    }

    #[tokio::test]
    async fn a_fragment_without_its_shard_input_is_refused() {
        // a plan of built-in nodes only: nothing would read the shards
        let empty: Arc<dyn ExecutionPlan> =
            Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema()));
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes(empty).unwrap();
        let ctx = task_context(Arc::new(RuntimeEnv::default()));
        let Err(e) = execute(&bytes, vec![input(vec![vec![1]])], ctx) else {
            panic!("accepted");
        };
        assert_eq!(e.state, SqlState::ProtocolViolation);
    }
}
