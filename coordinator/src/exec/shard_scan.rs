//! [`ShardScanExec`]: reads some shards of one table through the [`ShardService`], as Arrow
//! batches. Shards are spread over the output partitions so DataFusion scans them in parallel;
//! each partition reads shards of one worker only, so its metrics are that worker's.
//!
//! With a plan fragment (see [`crate::exec::pushdown`]) the workers run the fragment over the
//! rows they scan, and what this node outputs (and the coordinator receives) is the
//! fragment's output: filtered rows, or partial aggregate states.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use orochi_common::schema::TableDef;
use orochi_common::service::{ScanInput, ScanRequest, ShardService, TxnId};

use crate::error::db_to_df;

#[derive(Debug)]
pub struct ShardScanExec {
    table: Arc<TableDef>,
    service: Arc<dyn ShardService>,
    txn: TxnId,
    schema: SchemaRef,
    projection: Vec<usize>,
    shards: Vec<u32>,
    keys: Option<Vec<Vec<u8>>>,
    limit: Option<usize>,
    batch_rows: usize,
    /// Shards of each output partition, and the worker (node) reading them.
    partitions: Vec<(usize, Vec<u32>)>,
    /// Runs on the workers over the scanned rows; `None`: the rows themselves are shipped.
    fragment: Option<Fragment>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

/// A plan fragment pushed down to the workers: the plan (for EXPLAIN) and its encoding.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub plan: Arc<dyn ExecutionPlan>,
    pub bytes: Arc<Vec<u8>>,
    /// Tables read by the fragment's inputs 1.. (co-located with this scan's table).
    pub more_inputs: Vec<ScanInput>,
    /// Their names, for EXPLAIN.
    pub more_tables: Vec<String>,
}

/// The node of a key lookup's partition, which may read several workers.
const ANY_NODE: usize = usize::MAX;

impl ShardScanExec {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: Arc<TableDef>,
        service: Arc<dyn ShardService>,
        txn: TxnId,
        schema: SchemaRef,
        projection: Vec<usize>,
        shards: Vec<u32>,
        keys: Option<Vec<Vec<u8>>>,
        limit: Option<usize>,
        batch_rows: usize,
        target_partitions: usize,
    ) -> Self {
        let partitions = if keys.is_some() {
            vec![(ANY_NODE, shards.clone())]
        } else {
            // each worker's shards over its share of the partitions
            let mut by_node: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            for &s in &shards {
                by_node
                    .entry(service.owner_of(&table, s))
                    .or_default()
                    .push(s);
            }
            let share = (target_partitions / by_node.len().max(1)).max(1);
            let mut partitions = Vec::new();
            for (node, list) in by_node {
                let n = share.min(list.len());
                let first = partitions.len();
                partitions.extend((0..n).map(|_| (node, Vec::new())));
                for (i, s) in list.into_iter().enumerate() {
                    partitions[first + i % n].1.push(s);
                }
            }
            if partitions.is_empty() {
                partitions.push((ANY_NODE, Vec::new()));
            }
            partitions
        };
        let properties = Self::properties_for(&schema, partitions.len());
        ShardScanExec {
            table,
            service,
            txn,
            schema,
            projection,
            shards,
            keys,
            limit,
            batch_rows,
            partitions,
            fragment: None,
            metrics: ExecutionPlanMetricsSet::new(),
            properties,
        }
    }

    fn properties_for(schema: &SchemaRef, partitions: usize) -> Arc<PlanProperties> {
        Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ))
    }

    pub fn table(&self) -> &Arc<TableDef> {
        &self.table
    }

    /// The physical columns read, in output order.
    pub fn projection(&self) -> &[usize] {
        &self.projection
    }

    pub fn shards(&self) -> &[u32] {
        &self.shards
    }

    /// The schema of the rows read from the shards (before any fragment).
    pub fn scan_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Whether a fragment may be pushed into this scan: a full scan without one yet (key
    /// lookups are left alone: they read a handful of rows).
    pub fn accepts_fragment(&self) -> bool {
        self.fragment.is_none() && self.keys.is_none()
    }

    /// This scan with `fragment` run on the workers; its output is the fragment's.
    pub fn with_fragment(&self, fragment: Fragment) -> ShardScanExec {
        let schema = fragment.plan.schema();
        ShardScanExec {
            table: self.table.clone(),
            service: self.service.clone(),
            txn: self.txn,
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            shards: self.shards.clone(),
            keys: self.keys.clone(),
            limit: self.limit,
            batch_rows: self.batch_rows,
            partitions: self.partitions.clone(),
            properties: Self::properties_for(&schema, self.partitions.len()),
            fragment: Some(fragment),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn output_schema(&self) -> SchemaRef {
        self.properties.eq_properties.schema().clone()
    }

    fn node_name(&self, node: usize) -> String {
        if node == ANY_NODE {
            "any".to_string()
        } else {
            self.service.node_address(node)
        }
    }
}

/// A fragment on one line, top first: `A <- B` (B feeds A), `J <- (L | R)` for a join.
fn fragment_text(plan: &Arc<dyn ExecutionPlan>) -> String {
    let children = plan.children();
    let me = datafusion::physical_plan::displayable(plan.as_ref())
        .one_line()
        .to_string()
        .trim_end()
        .to_string();
    match children.as_slice() {
        [] => me,
        [only] if only.children().is_empty() => me,
        [only] => format!("{me} <- {}", fragment_text(only)),
        many => format!(
            "{me} <- ({})",
            many.iter()
                .map(|c| fragment_text(c))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

/// Metric name prefixes of what a partition received from its worker: `rows_from[addr]`.
const ROWS_FROM: &str = "rows_from[";
const BYTES_FROM: &str = "bytes_from[";

/// Rows and bytes each worker sent the shard scans of an executed plan (the `rows_from[…]`
/// and `bytes_from[…]` metrics of `ShardScanExec`), by worker address.
pub fn shipped(plan: &Arc<dyn ExecutionPlan>) -> BTreeMap<String, (usize, usize)> {
    use datafusion::common::tree_node::TreeNode;
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let _ = plan.apply(|node| {
        for m in node.metrics().iter().flat_map(|m| m.iter()) {
            let (name, n) = (m.value().name(), m.value().as_usize());
            if let Some(worker) = name.strip_prefix(ROWS_FROM) {
                out.entry(worker.trim_end_matches(']').to_string())
                    .or_default()
                    .0 += n;
            } else if let Some(worker) = name.strip_prefix(BYTES_FROM) {
                out.entry(worker.trim_end_matches(']').to_string())
                    .or_default()
                    .1 += n;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Bytes of a batch's buffers as sent (the slices, not the allocations behind them).
fn shipped_bytes(b: &arrow::record_batch::RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

impl DisplayAs for ShardScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardScanExec: table={}, shards={}/{}",
            self.table.qualified_name(),
            self.shards.len(),
            self.table.shard_count
        )?;
        if self.shards.len() <= 4 {
            write!(f, " {:?}", self.shards)?;
        }
        if let Some(keys) = &self.keys {
            write!(f, ", key_lookup={}", keys.len())?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        // where it runs: the workers owning the shards it reads
        let mut nodes: Vec<usize> = self
            .shards
            .iter()
            .map(|&s| self.service.owner_of(&self.table, s))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let names: Vec<String> = nodes
            .iter()
            .map(|&n| self.service.node_address(n))
            .collect();
        write!(f, ", on=[{}]", names.join(", "))?;
        if let Some(fragment) = &self.fragment {
            if !fragment.more_tables.is_empty() {
                write!(f, ", joined=[{}]", fragment.more_tables.join(", "))?;
            }
            write!(f, ", on_workers=[{}]", fragment_text(&fragment.plan))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShardScanExec {
    fn name(&self) -> &'static str {
        "ShardScanExec"
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

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let (node, shards) = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("ShardScanExec has no partition {partition}"))
        })?;
        let req = ScanRequest {
            table: self.table.id,
            shards,
            projection: self.projection.clone(),
            keys: self.keys.clone(),
            batch_rows: self.batch_rows,
            limit: self.limit,
            fragment: self.fragment.as_ref().map(|f| f.bytes.as_ref().clone()),
            more_inputs: self
                .fragment
                .as_ref()
                .map(|f| f.more_inputs.clone())
                .unwrap_or_default(),
        };
        // what this partition receives from its worker (EXPLAIN ANALYZE)
        let name = self.node_name(node);
        let rows: Count =
            MetricBuilder::new(&self.metrics).counter(format!("{ROWS_FROM}{name}]"), partition);
        let bytes: Count =
            MetricBuilder::new(&self.metrics).counter(format!("{BYTES_FROM}{name}]"), partition);
        let service = self.service.clone();
        let txn = self.txn;
        let schema = self.output_schema();
        let out_schema = schema.clone();
        // nothing happens until the stream is polled
        let stream = futures::stream::once(async move { service.scan(txn, req).await })
            .map_err(db_to_df)
            .map_ok(move |batches| {
                let schema = schema.clone();
                let (rows, bytes) = (rows.clone(), bytes.clone());
                batches.map(move |b| {
                    b.map_err(db_to_df).and_then(|b| {
                        rows.add(b.num_rows());
                        bytes.add(shipped_bytes(&b));
                        // the worker's field metadata matches ours; rebind to our schema object
                        arrow::record_batch::RecordBatch::try_new_with_options(
                            schema.clone(),
                            b.columns().to_vec(),
                            &arrow::record_batch::RecordBatchOptions::new()
                                .with_row_count(Some(b.num_rows())),
                        )
                        .map_err(DataFusionError::from)
                    })
                })
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}
