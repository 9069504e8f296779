//! [`OrochiTable`], the DataFusion [`TableProvider`] of a distributed table.
//! A scan becomes a [`ShardScanExec`]; equality filters that pin the whole primary key turn it
//! into key lookups on the owning shards only.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use orochi_common::datum::Datum;
use orochi_common::keycodec;
use orochi_common::schema::TableDef;
use orochi_common::service::{ShardService, TxnId};

use crate::exec::shard_scan::ShardScanExec;

/// Per-statement context stored in DataFusion's session config: which transaction reads.
#[derive(Debug, Clone, Copy)]
pub struct TxnContext {
    pub txn: TxnId,
}

#[derive(Debug)]
pub struct OrochiTable {
    pub def: Arc<TableDef>,
    service: Arc<dyn ShardService>,
    /// Visible columns, as physical indexes, in schema order.
    visible: Vec<usize>,
    schema: SchemaRef,
}

impl OrochiTable {
    pub fn new(def: Arc<TableDef>, service: Arc<dyn ShardService>) -> Self {
        let visible = def.visible_columns();
        let fields: Vec<_> = visible
            .iter()
            .map(|&i| def.columns[i].ty.arrow_field(&def.columns[i].name, true))
            .collect();
        OrochiTable {
            def,
            service,
            visible,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// Name of the primary-key column `i` if it is visible, with its key position.
    fn key_position(&self, column: &str) -> Option<usize> {
        self.def
            .primary_key
            .iter()
            .position(|&c| self.def.columns[c].is_visible() && self.def.columns[c].name == column)
    }

    /// If `filters` pin every primary-key column to constants (`=` or `IN`), the encoded keys.
    pub fn pinned_keys(&self, filters: &[&Expr]) -> Option<Vec<Vec<u8>>> {
        let n = self.def.primary_key.len();
        let mut per_column: Vec<Option<Vec<Datum>>> = vec![None; n];
        for f in filters {
            for conj in split_conjunction(f) {
                if let Some((pos, values)) = self.key_equality(conj) {
                    // several constraints on one column: keep the first (others stay as filters)
                    if per_column[pos].is_none() {
                        per_column[pos] = Some(values);
                    }
                }
            }
        }
        let columns: Vec<Vec<Datum>> = per_column.into_iter().collect::<Option<_>>()?;
        // cartesian product, bounded
        let total: usize = columns.iter().map(|c| c.len()).product();
        if total == 0 || total > 10_000 {
            return None;
        }
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for values in &columns {
            let mut next = Vec::with_capacity(keys.len() * values.len());
            for k in &keys {
                for v in values {
                    let mut k2 = k.clone();
                    keycodec::encode_datum(v, &mut k2);
                    next.push(k2);
                }
            }
            keys = next;
        }
        keys.sort();
        keys.dedup();
        Some(keys)
    }

    /// `pk_col = const` or `pk_col IN (consts)`: the key position and the values, coerced to
    /// the column type. A value that cannot be the column's type makes the filter unusable.
    fn key_equality(&self, e: &Expr) -> Option<(usize, Vec<Datum>)> {
        let (col, constants) = column_constants(e)?;
        let pos = self.key_position(&col.name)?;
        let ty = self.def.columns[self.def.primary_key[pos]].ty;
        let values = constants
            .into_iter()
            .map(|v| literal_datum(v, ty))
            .collect::<Option<Vec<_>>>()?;
        Some((pos, values))
    }

    /// If `filters` pin the distribution column to constants (`=` or `IN`), the shards that
    /// can hold matching rows (shard pruning).
    pub fn pinned_shards(&self, filters: &[&Expr]) -> Option<Vec<u32>> {
        let dist = &self.def.columns[self.def.distribution_column];
        if !dist.is_visible() {
            return None;
        }
        let values = filters
            .iter()
            .flat_map(|f| split_conjunction(f))
            .filter_map(column_constants)
            .filter(|(col, _)| col.name == dist.name)
            .find_map(|(_, constants)| {
                constants
                    .into_iter()
                    .map(|v| literal_datum(v, dist.ty))
                    .collect::<Option<Vec<_>>>()
            })?;
        let shards: BTreeSet<u32> = values.iter().map(|v| self.def.shard_of_value(v)).collect();
        Some(shards.into_iter().collect())
    }
}

/// `col = expr`, `expr = col` or `col IN (exprs)`: the column and the expressions it equals
/// (constants or not: the caller converts them).
fn column_constants(e: &Expr) -> Option<(&datafusion::common::Column, Vec<&Expr>)> {
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => match (b.left.as_ref(), b.right.as_ref()) {
            (Expr::Column(c), other) | (other, Expr::Column(c)) => Some((c, vec![other])),
            _ => None,
        },
        Expr::InList(l) if !l.negated => match l.expr.as_ref() {
            Expr::Column(c) => Some((c, l.list.iter().collect())),
            _ => None,
        },
        _ => None,
    }
}

fn split_conjunction(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::And => {
            let mut v = split_conjunction(&b.left);
            v.extend(split_conjunction(&b.right));
            v
        }
        other => vec![other],
    }
}

/// A constant expression (possibly under casts) as a value of column type `ty`.
fn literal_datum(e: &Expr, ty: orochi_common::types::SqlType) -> Option<Datum> {
    let scalar = match e {
        Expr::Literal(s, _) => s.clone(),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(s, _) => s.cast_to(c.field.data_type()).ok()?,
            _ => return None,
        },
        Expr::TryCast(c) => match c.expr.as_ref() {
            Expr::Literal(s, _) => s.cast_to(c.field.data_type()).ok()?,
            _ => return None,
        },
        _ => return None,
    };
    if scalar.is_null() {
        return None;
    }
    scalar_to_datum(&scalar, ty)
}

pub fn scalar_to_datum(s: &ScalarValue, ty: orochi_common::types::SqlType) -> Option<Datum> {
    let array = s.to_array().ok()?;
    let d = Datum::from_arrow(array.as_ref(), 0, ty).ok()?;
    // a lossy conversion (1.5 for an integer key) must not become a key lookup
    match (s, &d) {
        (ScalarValue::Float64(Some(f)), Datum::Int2(_) | Datum::Int4(_) | Datum::Int8(_))
            if f.fract() != 0.0 =>
        {
            None
        }
        _ => Some(d),
    }
}

#[async_trait]
impl TableProvider for OrochiTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // we use key equalities for lookups but DataFusion still re-checks every filter
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let txn = state
            .config()
            .get_extension::<TxnContext>()
            .map(|t| t.txn)
            .ok_or_else(|| DataFusionError::Internal("scan outside of a transaction".into()))?;
        let physical: Vec<usize> = match projection {
            Some(p) => p.iter().map(|&i| self.visible[i]).collect(),
            None => self.visible.clone(),
        };
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let filter_refs: Vec<&Expr> = filters.iter().collect();
        let keys = self.pinned_keys(&filter_refs);
        let shards: Vec<u32> = match &keys {
            Some(keys) => {
                let key_types = self.def.key_types();
                let dist_pos = self.def.distribution_key_position();
                let mut s: BTreeSet<u32> = BTreeSet::new();
                for k in keys {
                    let values = keycodec::decode_key(&key_types, k)
                        .map_err(|e| DataFusionError::Internal(e.message))?;
                    s.insert(self.def.shard_of_value(&values[dist_pos]));
                }
                s.into_iter().collect()
            }
            // filters still apply to every row read: pruning only skips shards that cannot match
            None => self
                .pinned_shards(&filter_refs)
                .unwrap_or_else(|| (0..self.def.shard_count).collect()),
        };
        let batch_rows = state.config().batch_size();
        Ok(Arc::new(ShardScanExec::new(
            self.def.clone(),
            self.service.clone(),
            txn,
            schema,
            physical,
            shards,
            keys,
            limit,
            batch_rows,
            state.config().target_partitions(),
        )))
    }
}
