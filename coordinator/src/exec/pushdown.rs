//! [`PushDownToWorkers`]: the physical optimizer rule that moves the per-partition operators
//! above a shard scan — filters, projections and the partial phase of a two-phase aggregate —
//! into the scan as a plan fragment the workers run over their own shards
//! (`orochi_worker::fragment`). The coordinator keeps what needs rows of several shards: the
//! final aggregate, sorts, joins, limits.
//!
//! A scan's partitions each read shards of one worker; the fragment runs per partition, so a
//! filter ships matching rows only and a partial aggregate ships one state per group per
//! partition: O(partitions × groups) rows, not O(table rows).
//!
//! Only what means the same on a worker is pushed: operators datafusion-proto encodes, and
//! functions the worker resolves to the same implementation (DataFusion's built-ins, not the
//! coordinator's session functions such as `current_setting`). Anything else stays here.

use std::any::Any;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use orochi_worker::fragment::{ShardInputExec, WorkerFunctions};

use crate::exec::shard_scan::{Fragment, ShardScanExec};

#[derive(Debug, Default)]
pub struct PushDownToWorkers {
    functions: WorkerFunctions,
}

/// The rule, shared by every session (knowing the worker's functions takes building a
/// DataFusion session state once).
pub fn rule() -> Arc<PushDownToWorkers> {
    static RULE: std::sync::LazyLock<Arc<PushDownToWorkers>> =
        std::sync::LazyLock::new(Default::default);
    RULE.clone()
}

/// What an operator above a scan is, for pushdown.
enum Step {
    /// Runs on the worker and is part of the fragment.
    Keep,
    /// Only reshapes partitions or batches; dropped from the fragment (a fragment has one
    /// partition per scan partition).
    Skip,
    /// Stops the fragment here.
    Stop,
}

impl PushDownToWorkers {
    fn step(&self, node: &Arc<dyn ExecutionPlan>) -> Step {
        let any = node.as_ref() as &dyn Any;
        if node.children().len() != 1 {
            return Step::Stop;
        }
        let pushable = any.is::<FilterExec>()
            || any.is::<ProjectionExec>()
            || any
                .downcast_ref::<AggregateExec>()
                .is_some_and(|a| *a.mode() == AggregateMode::Partial);
        if pushable {
            return if self.functions.can_run(node.as_ref()) {
                Step::Keep
            } else {
                Step::Stop
            };
        }
        let reshapes = any.is::<CooperativeExec>()
            || any.downcast_ref::<RepartitionExec>().is_some_and(|r| {
                matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) && !r.preserve_order()
            });
        if reshapes { Step::Skip } else { Step::Stop }
    }

    /// If `top` starts a chain of pushable operators ending at a shard scan, the scan with
    /// the chain inside.
    fn push(&self, top: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        let mut kept: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let mut node = top.clone();
        loop {
            let any = node.as_ref() as &dyn Any;
            if let Some(scan) = any.downcast_ref::<ShardScanExec>() {
                return self.rebuild(scan, &kept);
            }
            match self.step(&node) {
                Step::Keep => kept.push(node.clone()),
                // a reshaping operator on top stays: its parent relies on it
                Step::Skip if kept.is_empty() => return None,
                Step::Skip => {}
                Step::Stop => return None,
            }
            node = node.children()[0].clone();
        }
    }

    fn rebuild(
        &self,
        scan: &ShardScanExec,
        kept: &[Arc<dyn ExecutionPlan>],
    ) -> Option<Arc<dyn ExecutionPlan>> {
        if !scan.accepts_fragment() {
            return None;
        }
        // worth a fragment only if it filters or aggregates
        let reduces = kept.iter().any(|n| {
            let any = n.as_ref() as &dyn Any;
            any.is::<FilterExec>() || any.is::<AggregateExec>()
        });
        if !reduces {
            return None;
        }
        let mut plan: Arc<dyn ExecutionPlan> =
            Arc::new(ShardInputExec::placeholder(scan.scan_schema()));
        for n in kept.iter().rev() {
            plan = n
                .clone()
                .replace_children(
                    vec![plan],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )
                .ok()?;
        }
        let bytes = match orochi_worker::fragment::encode(plan.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "plan fragment not pushed down");
                return None;
            }
        };
        Some(Arc::new(scan.with_fragment(Fragment {
            plan,
            bytes: Arc::new(bytes),
        })))
    }
}

/// A fragment that keeps the scanned rows (of `input`'s schema) passing `predicate` and
/// returns their columns `output`, if the workers can evaluate `predicate` (multi-shard
/// UPDATE and DELETE find their rows this way).
pub fn filter_fragment(
    input: arrow::datatypes::SchemaRef,
    predicate: Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    output: Vec<usize>,
) -> Option<Fragment> {
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(ShardInputExec::placeholder(input));
    let filter = FilterExecBuilder::new(predicate, leaf)
        .apply_projection(Some(output))
        .and_then(FilterExecBuilder::build)
        .ok()?;
    if !rule().functions.can_run(&filter) {
        return None;
    }
    let plan: Arc<dyn ExecutionPlan> = Arc::new(filter);
    let bytes = orochi_worker::fragment::encode(plan.clone()).ok()?;
    Some(Fragment {
        plan,
        bytes: Arc::new(bytes),
    })
}

impl PhysicalOptimizerRule for PushDownToWorkers {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            Ok(match self.push(&node) {
                // the longest chain from the top: nothing below it is looked at again
                Some(pushed) => Transformed::new(pushed, true, TreeNodeRecursion::Jump),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "push_down_to_workers"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
