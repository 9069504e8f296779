//! The storage functions, set-returning (usable as `SELECT … FROM f() WHERE …`):
//!
//! - `orochi_storage_stats()`: `table_name, tier, shard_count, row_count, size_bytes`, one row
//!   per table and tier that holds data: `row` (the row store, sled) and `columnar`
//!   (segments). `row_count` is the live rows the tier provides (a segment row that a newer
//!   version or a delete in the row store hides is not counted); `size_bytes` is on disk.
//! - `orochi_compression_stats()`: `table_name, tier, codec, raw_bytes, compressed_bytes,
//!   compression_ratio` per table and tier: the row store is not compressed (`none`),
//!   segments are LZ4 (`lz4`); `raw_bytes` is their data decoded into memory.
//!
//! Like the cluster functions, their rows are gathered from the shard owners before planning,
//! only for statements that call them.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast;
use orochi_common::error::DbResult;

use crate::functions::cluster::{Rows, arrow_err, reads};
use crate::session::Session;

const STORAGE_STATS: &str = "orochi_storage_stats";
const COMPRESSION_STATS: &str = "orochi_compression_stats";

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Per table and tier: (table, tier, codec, shards with data, live rows, bytes on disk,
/// bytes decoded).
type TierRow = (String, &'static str, &'static str, i32, i64, i64, i64);

/// Registers the storage functions for `query` (with current numbers) if it reads one.
pub async fn prepare(s: &mut Session, query: &ast::Query) -> DbResult<()> {
    let [storage, compression] = reads(query, [STORAGE_STATS, COMPRESSION_STATS]);
    if !storage && !compression {
        return Ok(());
    }
    let mut tables = s.instance.catalog.all_tables();
    tables.sort_by_key(|t| t.qualified_name());
    let mut tiers: Vec<TierRow> = Vec::new();
    for t in &tables {
        let stats = s.instance.service.shard_stats(t.id).await?;
        let name = t.qualified_name();
        let row_shards = stats.iter().filter(|st| st.row_store_bytes > 0).count() as i32;
        let row_rows: u64 = stats.iter().map(|st| st.row_store_rows).sum();
        let row_bytes: u64 = stats.iter().map(|st| st.row_store_bytes).sum();
        // a row store entry that is not a live row of its own hides a segment row
        let seg_live: u64 = stats
            .iter()
            .map(|st| st.rows.saturating_sub(st.row_store_rows))
            .sum();
        let seg_shards = stats.iter().filter(|st| st.segments > 0).count() as i32;
        let seg_file: u64 = stats.iter().map(|st| st.segment_file_bytes).sum();
        let seg_raw: u64 = stats.iter().map(|st| st.segment_raw_bytes).sum();
        if row_bytes > 0 {
            tiers.push((
                name.clone(),
                "row",
                "none",
                row_shards,
                int(row_rows),
                int(row_bytes),
                int(row_bytes),
            ));
        }
        if seg_shards > 0 {
            tiers.push((
                name,
                "columnar",
                "lz4",
                seg_shards,
                int(seg_live),
                int(seg_file),
                int(seg_raw),
            ));
        }
    }
    let text = |f: &dyn Fn(&TierRow) -> String| -> ArrayRef {
        Arc::new(StringArray::from(tiers.iter().map(f).collect::<Vec<_>>()))
    };
    let ints = |f: &dyn Fn(&TierRow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from(tiers.iter().map(f).collect::<Vec<_>>()))
    };
    if storage {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("tier", DataType::Utf8, false),
            Field::new("shard_count", DataType::Int32, false),
            Field::new("row_count", DataType::Int64, false),
            Field::new("size_bytes", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            text(&|r| r.0.clone()),
            text(&|r| r.1.to_string()),
            Arc::new(Int32Array::from(
                tiers.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
            ints(&|r| r.4),
            ints(&|r| r.5),
        ];
        let batch = RecordBatch::try_new(schema, columns).map_err(arrow_err)?;
        s.state.register_udtf(
            STORAGE_STATS,
            Arc::new(Rows {
                name: STORAGE_STATS,
                batch,
            }),
        );
    }
    if compression {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("tier", DataType::Utf8, false),
            Field::new("codec", DataType::Utf8, false),
            Field::new("raw_bytes", DataType::Int64, false),
            Field::new("compressed_bytes", DataType::Int64, false),
            Field::new("compression_ratio", DataType::Float64, false),
        ]));
        let ratio = tiers
            .iter()
            .map(|r| {
                if r.5 == 0 {
                    1.0
                } else {
                    // two decimals, as a report prints it
                    ((r.6 as f64 / r.5 as f64) * 100.0).round() / 100.0
                }
            })
            .collect::<Vec<_>>();
        let columns: Vec<ArrayRef> = vec![
            text(&|r| r.0.clone()),
            text(&|r| r.1.to_string()),
            text(&|r| r.2.to_string()),
            ints(&|r| r.6),
            ints(&|r| r.5),
            Arc::new(Float64Array::from(ratio)),
        ];
        let batch = RecordBatch::try_new(schema, columns).map_err(arrow_err)?;
        s.state.register_udtf(
            COMPRESSION_STATS,
            Arc::new(Rows {
                name: COMPRESSION_STATS,
                batch,
            }),
        );
    }
    Ok(())
}
