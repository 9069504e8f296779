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

use datafusion::common::JoinType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::physical_expr::expressions::{Column, UnKnownColumn};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use orochi_common::service::ScanInput;
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
            || any.downcast_ref::<AggregateExec>().is_some_and(|a| {
                // an ordered aggregate (`array_agg(x ORDER BY y)`) stays here: whether its
                // input is already in order is decided for this plan, not for a fragment's
                *a.mode() == AggregateMode::Partial
                    && a.aggr_expr().iter().all(|e| e.order_bys().is_empty())
            });
        if pushable {
            return if self.functions.can_run(node.as_ref()) {
                Step::Keep
            } else {
                Step::Stop
            };
        }
        // Inside a fragment partitioning means nothing: it runs as one partition over the
        // shards of one scan partition. (What the fragment's consumer relies on is restored
        // on top, see `push`.)
        let reshapes = any.is::<CooperativeExec>()
            || any.is::<CoalescePartitionsExec>()
            || any
                .downcast_ref::<RepartitionExec>()
                .is_some_and(|r| !r.preserve_order());
        if reshapes { Step::Skip } else { Step::Stop }
    }

    /// The fragment of `node`'s subtree, over [`ShardInputExec`] placeholders for the shard
    /// scans it reads (collected in `leaves`, input `i` being `leaves[i]`), if all of it can
    /// run on the workers.
    fn build(
        &self,
        node: &Arc<dyn ExecutionPlan>,
        leaves: &mut Vec<Arc<dyn ExecutionPlan>>,
    ) -> Option<Arc<dyn ExecutionPlan>> {
        let any = node.as_ref() as &dyn Any;
        if let Some(scan) = any.downcast_ref::<ShardScanExec>() {
            if !scan.accepts_fragment() {
                return None;
            }
            leaves.push(node.clone());
            return Some(Arc::new(ShardInputExec::placeholder(
                leaves.len() - 1,
                scan.scan_schema(),
            )));
        }
        if let Some(join) = any.downcast_ref::<HashJoinExec>() {
            if !self.functions.can_run(join) || !co_located(join) {
                return None;
            }
            let left = self.build(join.left(), leaves)?;
            let right = self.build(join.right(), leaves)?;
            return replace(node, vec![left, right]);
        }
        match self.step(node) {
            Step::Keep => {
                let child = self.build(node.children()[0], leaves)?;
                replace(node, vec![child])
            }
            Step::Skip => self.build(node.children()[0], leaves),
            Step::Stop => None,
        }
    }

    /// If the subtree at `top` can run on the workers, the scan that runs it there.
    fn push(&self, top: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if !matches!(self.step(top), Step::Keep) && !(top.as_ref() as &dyn Any).is::<HashJoinExec>()
        {
            // a reshaping operator on top stays: its parent relies on it
            return None;
        }
        let mut leaves = Vec::new();
        let plan = self.build(top, &mut leaves)?;
        let scans: Vec<&ShardScanExec> = leaves
            .iter()
            .map(|l| (l.as_ref() as &dyn Any).downcast_ref::<ShardScanExec>())
            .collect::<Option<_>>()?;
        let first = scans.first()?;
        if scans.iter().any(|s| s.shards() != first.shards()) {
            return None;
        }
        // worth a fragment only if it filters, aggregates or joins
        let mut reduces = false;
        let _ = plan.apply(|n| {
            let any = n.as_ref() as &dyn Any;
            reduces |=
                any.is::<FilterExec>() || any.is::<AggregateExec>() || any.is::<HashJoinExec>();
            Ok(TreeNodeRecursion::Continue)
        });
        if !reduces {
            return None;
        }
        let bytes = match orochi_worker::fragment::encode(plan.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "plan fragment not pushed down");
                return None;
            }
        };
        let pushed: Arc<dyn ExecutionPlan> = Arc::new(
            first.with_fragment(Fragment {
                plan,
                bytes: Arc::new(bytes),
                more_inputs: scans[1..]
                    .iter()
                    .map(|s| ScanInput {
                        table: s.table().id,
                        projection: s.projection().to_vec(),
                    })
                    .collect(),
                more_tables: scans[1..]
                    .iter()
                    .map(|s| s.table().qualified_name())
                    .collect(),
            }),
        );
        // the consumer may rely on the hash partitioning the subtree had (a partitioned join
        // or aggregate above): partial results are few, repartition them here
        match top.properties().output_partitioning() {
            // (a key projected away is unknown: nothing can rely on it)
            Partitioning::Hash(exprs, n)
                if !exprs
                    .iter()
                    .any(|e| (e.as_ref() as &dyn Any).is::<UnKnownColumn>()) =>
            {
                RepartitionExec::try_new(pushed, Partitioning::Hash(exprs.clone(), *n))
                    .ok()
                    .map(|r| Arc::new(r) as Arc<dyn ExecutionPlan>)
            }
            _ => Some(pushed),
        }
    }
}

fn replace(
    node: &Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Option<Arc<dyn ExecutionPlan>> {
    node.clone()
        .replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
        .ok()
}

/// Whether a join's equality keys include the distribution columns of co-located tables on
/// either side: then every match lies in shards of the same index, on the same worker.
fn co_located(join: &HashJoinExec) -> bool {
    join.on().iter().any(|(l, r)| {
        let (Some(l), Some(r)) = (
            (l.as_ref() as &dyn Any).downcast_ref::<Column>(),
            (r.as_ref() as &dyn Any).downcast_ref::<Column>(),
        ) else {
            return false;
        };
        let (Some((a, ca)), Some((b, cb))) = (
            source_column(join.left(), l.index()),
            source_column(join.right(), r.index()),
        ) else {
            return false;
        };
        let (a, b) = (a.table(), b.table());
        ca == a.distribution_column
            && cb == b.distribution_column
            && a.shard_count == b.shard_count
            && a.workers == b.workers
            && a.columns[ca].ty == b.columns[cb].ty
    })
}

/// The shard scan and physical table column that output column `index` of `node` is, if it
/// is one unchanged.
fn source_column(node: &Arc<dyn ExecutionPlan>, index: usize) -> Option<(&ShardScanExec, usize)> {
    let any = node.as_ref() as &dyn Any;
    if let Some(scan) = any.downcast_ref::<ShardScanExec>() {
        if !scan.accepts_fragment() {
            return None;
        }
        return scan.projection().get(index).map(|&c| (scan, c));
    }
    if let Some(p) = any.downcast_ref::<ProjectionExec>() {
        let e = p.expr().get(index)?;
        let c = (e.expr.as_ref() as &dyn Any).downcast_ref::<Column>()?;
        return source_column(p.input(), c.index());
    }
    if let Some(f) = any.downcast_ref::<FilterExec>() {
        let i = match f.projection() {
            Some(p) => *p.get(index)?,
            None => index,
        };
        return source_column(f.input(), i);
    }
    if let Some(j) = any.downcast_ref::<HashJoinExec>() {
        let i = match &j.projection {
            Some(p) => *p.get(index)?,
            None => index,
        };
        let left = j.left().schema().fields().len();
        return match j.join_type() {
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                if i < left {
                    source_column(j.left(), i)
                } else {
                    source_column(j.right(), i - left)
                }
            }
            JoinType::LeftSemi | JoinType::LeftAnti => source_column(j.left(), i),
            JoinType::RightSemi | JoinType::RightAnti => source_column(j.right(), i),
            _ => None,
        };
    }
    if matches!(node.children().len(), 1)
        && (any.is::<CooperativeExec>()
            || any.is::<CoalescePartitionsExec>()
            || any.is::<RepartitionExec>())
    {
        return source_column(node.children()[0], index);
    }
    None
}

/// A fragment that keeps the scanned rows (of `input`'s schema) passing `predicate` and
/// returns their columns `output`, if the workers can evaluate `predicate` (multi-shard
/// UPDATE and DELETE find their rows this way).
pub fn filter_fragment(
    input: arrow::datatypes::SchemaRef,
    predicate: Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    output: Vec<usize>,
) -> Option<Fragment> {
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(ShardInputExec::placeholder(0, input));
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
        more_inputs: Vec::new(),
        more_tables: Vec::new(),
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
