//! [`ShardScanExec`]: reads some shards of one table through the [`ShardService`], as Arrow
//! batches. Shards are spread over the output partitions so DataFusion scans them in parallel.

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
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use orochi_common::schema::TableDef;
use orochi_common::service::{ScanRequest, ShardService, TxnId};

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
    /// Shards of each output partition.
    partitions: Vec<Vec<u32>>,
    properties: Arc<PlanProperties>,
}

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
        let n = if keys.is_some() {
            1
        } else {
            target_partitions.clamp(1, shards.len().max(1))
        };
        let mut partitions = vec![Vec::new(); n];
        for (i, s) in shards.iter().enumerate() {
            partitions[i % n].push(*s);
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
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
            properties,
        }
    }
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
            .map(|&s| self.service.owner_of(s))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let names: Vec<String> = nodes
            .iter()
            .map(|&n| self.service.node_address(n))
            .collect();
        write!(f, ", on=[{}]", names.join(", "))?;
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

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let shards = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("ShardScanExec has no partition {partition}"))
        })?;
        let req = ScanRequest {
            table: self.table.id,
            shards,
            projection: self.projection.clone(),
            keys: self.keys.clone(),
            batch_rows: self.batch_rows,
            limit: self.limit,
        };
        let service = self.service.clone();
        let txn = self.txn;
        let schema = self.schema.clone();
        let out_schema = schema.clone();
        // nothing happens until the stream is polled
        let stream = futures::stream::once(async move { service.scan(txn, req).await })
            .map_err(db_to_df)
            .map_ok(move |batches| {
                let schema = schema.clone();
                batches.map(move |b| {
                    b.map_err(db_to_df).and_then(|b| {
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
