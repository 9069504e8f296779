//! Rows → Arrow record batches.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use orochi_common::datum::{Datum, format_uuid};
use orochi_common::error::{DbError, DbResult};
use orochi_common::schema::TableDef;
use orochi_common::types::SqlType;

/// The Arrow schema of a projection of a table's physical columns.
pub fn projected_schema(table: &TableDef, projection: &[usize]) -> SchemaRef {
    let fields: Vec<_> = projection
        .iter()
        .map(|&i| {
            let c = &table.columns[i];
            c.ty.arrow_field(&c.name, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Accumulates projected rows and emits record batches.
pub struct BatchBuilder {
    schema: SchemaRef,
    types: Vec<SqlType>,
    builders: Vec<Box<dyn ArrayBuilder>>,
    rows: usize,
}

impl BatchBuilder {
    pub fn new(table: &TableDef, projection: &[usize], capacity: usize) -> Self {
        let types: Vec<SqlType> = projection.iter().map(|&i| table.columns[i].ty).collect();
        let builders = types.iter().map(|t| new_builder(*t, capacity)).collect();
        BatchBuilder {
            schema: projected_schema(table, projection),
            types,
            builders,
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one row given as the projected values, in projection order.
    pub fn push<'a>(&mut self, values: impl Iterator<Item = &'a Datum>) -> DbResult<()> {
        for ((b, ty), v) in self.builders.iter_mut().zip(&self.types).zip(values) {
            append(b.as_mut(), *ty, v)?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> DbResult<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let rows = self.rows;
        self.rows = 0;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| DbError::internal(format!("building record batch: {e}")))
    }
}

fn new_builder(ty: SqlType, cap: usize) -> Box<dyn ArrayBuilder> {
    match ty {
        SqlType::Bool => Box::new(BooleanBuilder::with_capacity(cap)),
        SqlType::Int2 => Box::new(Int16Builder::with_capacity(cap)),
        SqlType::Int4 => Box::new(Int32Builder::with_capacity(cap)),
        SqlType::Int8 => Box::new(Int64Builder::with_capacity(cap)),
        SqlType::Float4 => Box::new(Float32Builder::with_capacity(cap)),
        SqlType::Float8 => Box::new(Float64Builder::with_capacity(cap)),
        SqlType::Numeric(_) => {
            let arrow::datatypes::DataType::Decimal128(p, s) = ty.arrow_type() else {
                unreachable!("numeric maps to Decimal128")
            };
            Box::new(
                Decimal128Builder::with_capacity(cap)
                    .with_precision_and_scale(p, s)
                    .expect("valid decimal precision"),
            )
        }
        SqlType::Text
        | SqlType::Varchar(_)
        | SqlType::Char(_)
        | SqlType::Uuid
        | SqlType::Json
        | SqlType::Jsonb => Box::new(StringBuilder::with_capacity(cap, cap * 16)),
        SqlType::Bytea => Box::new(BinaryBuilder::with_capacity(cap, cap * 16)),
        SqlType::Date => Box::new(Date32Builder::with_capacity(cap)),
        SqlType::Timestamp => Box::new(TimestampMicrosecondBuilder::with_capacity(cap)),
        SqlType::Timestamptz => {
            Box::new(TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("+00:00"))
        }
        SqlType::Interval => Box::new(arrow::array::IntervalMonthDayNanoBuilder::with_capacity(
            cap,
        )),
    }
}

fn mismatch(ty: SqlType, v: &Datum) -> DbError {
    DbError::internal(format!(
        "stored value {v:?} does not match column type {ty}"
    ))
}

fn downcast<T: 'static>(b: &mut dyn ArrayBuilder) -> &mut T {
    b.as_any_mut()
        .downcast_mut::<T>()
        .expect("builder matches its column type")
}

fn append(b: &mut dyn ArrayBuilder, ty: SqlType, v: &Datum) -> DbResult<()> {
    macro_rules! put {
        ($builder:ty, $pat:pat => $val:expr) => {{
            let b = downcast::<$builder>(b);
            match v {
                Datum::Null => b.append_null(),
                $pat => b.append_value($val),
                other => return Err(mismatch(ty, other)),
            }
        }};
    }
    match ty {
        SqlType::Bool => put!(BooleanBuilder, Datum::Bool(x) => *x),
        SqlType::Int2 => put!(Int16Builder, Datum::Int2(x) => *x),
        SqlType::Int4 => put!(Int32Builder, Datum::Int4(x) => *x),
        SqlType::Int8 => put!(Int64Builder, Datum::Int8(x) => *x),
        SqlType::Float4 => put!(Float32Builder, Datum::Float4(x) => *x),
        SqlType::Float8 => put!(Float64Builder, Datum::Float8(x) => *x),
        SqlType::Numeric(_) => {
            put!(Decimal128Builder, Datum::Numeric { unscaled, .. } => *unscaled)
        }
        SqlType::Uuid => put!(StringBuilder, Datum::Uuid(u) => format_uuid(u)),
        SqlType::Text | SqlType::Varchar(_) | SqlType::Char(_) | SqlType::Json | SqlType::Jsonb => {
            put!(StringBuilder, Datum::Text(s) | Datum::Json(s) => s)
        }
        SqlType::Bytea => put!(BinaryBuilder, Datum::Bytea(x) => x),
        SqlType::Date => put!(Date32Builder, Datum::Date(x) => *x),
        SqlType::Timestamp => put!(TimestampMicrosecondBuilder, Datum::Timestamp(x) => *x),
        SqlType::Timestamptz => put!(TimestampMicrosecondBuilder, Datum::Timestamptz(x) => *x),
        SqlType::Interval => put!(
            arrow::array::IntervalMonthDayNanoBuilder,
            Datum::Interval { months, days, micros } => arrow::datatypes::IntervalMonthDayNano::new(
                *months,
                *days,
                micros.saturating_mul(1_000),
            )
        ),
    }
    Ok(())
}
