//! Integer arithmetic that fails on overflow, and casts to integers that round, as Postgres'
//! do.
//!
//! DataFusion evaluates `+`, `-`, `*` on integers with wrapping kernels (`2147483647::int4 + 1`
//! is `-2147483648`); Postgres raises 22003 (`integer out of range`). [`CheckedIntegerArithmetic`]
//! is an analyzer rule, run after type coercion, that replaces those operators on integer
//! operands with [`CheckedArith`], which calls Arrow's checked kernels. Constant folding then
//! also goes through the checked kernels, so an overflowing constant fails at planning time,
//! with the same error.

use orochi_common::zone::Zone;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::kernels::numeric;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use orochi_common::error::{DbError, SqlState};

use crate::error::db_to_df;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ArithOp {
    Add,
    Sub,
    Mul,
}

/// `a + b`, `a - b` or `a * b` on two integers of the same type; overflow is an error.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedArith {
    op: ArithOp,
    name: &'static str,
    signature: Signature,
}

impl CheckedArith {
    fn new(op: ArithOp) -> Self {
        let name = match op {
            ArithOp::Add => "orochi_checked_add",
            ArithOp::Sub => "orochi_checked_sub",
            ArithOp::Mul => "orochi_checked_mul",
        };
        CheckedArith {
            op,
            name,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }

    fn symbol(&self) -> &'static str {
        match self.op {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
        }
    }
}

impl ScalarUDFImpl for CheckedArith {
    fn name(&self) -> &str {
        self.name
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("{} {} {}", args[0], self.symbol(), args[1]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (a, b) = (&arrays[0], &arrays[1]);
        let result: std::result::Result<ArrayRef, ArrowError> = match self.op {
            ArithOp::Add => numeric::add(a, b),
            ArithOp::Sub => numeric::sub(a, b),
            ArithOp::Mul => numeric::mul(a, b),
        };
        let array = result.map_err(|e| match e {
            ArrowError::ArithmeticOverflow(_) => db_to_df(DbError::new(
                SqlState::NumericValueOutOfRange,
                format!("{} out of range", integer_name(a.data_type())),
            )),
            other => DataFusionError::ArrowError(Box::new(other), None),
        })?;
        if all_scalar {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&array, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

fn integer_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int16 => "smallint",
        DataType::Int32 => "integer",
        _ => "bigint",
    }
}

/// `CAST(x AS int2/int4/int8)` from numeric or floating point, as Postgres does it: numeric
/// rounds half away from zero, float4/float8 round half to even (`rint`), and a result outside
/// the target's range is 22003 — DataFusion's cast truncates toward zero instead.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RoundingCast {
    target: DataType,
    signature: Signature,
}

impl ScalarUDFImpl for RoundingCast {
    fn name(&self) -> &str {
        "orochi_rounding_cast"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("CAST({} AS {})", args[0], self.target))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.target.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::{Array, AsArray, Int64Array};
        use arrow::datatypes::{Decimal128Type, Float32Type, Float64Type};
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let input = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let (min, max) = match self.target {
            DataType::Int16 => (i16::MIN as i128, i16::MAX as i128),
            DataType::Int32 => (i32::MIN as i128, i32::MAX as i128),
            _ => (i64::MIN as i128, i64::MAX as i128),
        };
        let out_of_range = || {
            db_to_df(DbError::new(
                SqlState::NumericValueOutOfRange,
                format!("{} out of range", integer_name(&self.target)),
            ))
        };
        let float = |v: f64| -> Result<i64> {
            let r = v.round_ties_even();
            if !r.is_finite() || r < min as f64 || r > max as f64 {
                return Err(out_of_range());
            }
            Ok(r as i64)
        };
        let mut values: Vec<Option<i64>> = Vec::with_capacity(input.len());
        match input.data_type() {
            DataType::Decimal128(_, scale) => {
                let a = input.as_primitive::<Decimal128Type>();
                let div = 10i128.pow((*scale).max(0) as u32);
                for i in 0..a.len() {
                    if a.is_null(i) {
                        values.push(None);
                        continue;
                    }
                    let v = a.value(i);
                    let (q, r) = (v / div, v % div);
                    // half away from zero
                    let q = if r.abs() * 2 >= div {
                        q + v.signum()
                    } else {
                        q
                    };
                    if q < min || q > max {
                        return Err(out_of_range());
                    }
                    values.push(Some(q as i64));
                }
            }
            DataType::Float64 => {
                let a = input.as_primitive::<Float64Type>();
                for i in 0..a.len() {
                    values.push(if a.is_null(i) {
                        None
                    } else {
                        Some(float(a.value(i))?)
                    });
                }
            }
            DataType::Float32 => {
                let a = input.as_primitive::<Float32Type>();
                for i in 0..a.len() {
                    values.push(if a.is_null(i) {
                        None
                    } else {
                        Some(float(a.value(i) as f64)?)
                    });
                }
            }
            other => {
                return Err(DataFusionError::Internal(format!(
                    "rounding cast from {other}"
                )));
            }
        }
        let wide: ArrayRef = Arc::new(Int64Array::from(values));
        let array = arrow::compute::cast(&wide, &self.target)?;
        shaped_like_input(scalar, array)
    }
}

fn is_integer(t: &DataType) -> bool {
    matches!(t, DataType::Int16 | DataType::Int32 | DataType::Int64)
}

/// `CAST(timestamp AS text)` as Postgres prints it (`2024-02-29 13:14:15.5`, with `+00` for
/// timestamptz); DataFusion's cast writes ISO 8601 (`2024-02-29T13:14:15.500`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimestampText {
    /// For a timestamptz: the session's zone, which it is shown in.
    zone: Option<Zone>,
    signature: Signature,
}

impl ScalarUDFImpl for TimestampText {
    fn name(&self) -> &str {
        "orochi_timestamp_text"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("CAST({} AS Utf8)", args[0]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let array = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let micros = arrow::compute::cast(
            &array,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
        )?;
        let micros = arrow::compute::cast(&micros, &DataType::Int64)?;
        let micros = micros
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let out: arrow::array::StringArray = micros
            .iter()
            .map(|v| {
                v.map(|us| {
                    if let Some(zone) = &self.zone {
                        orochi_common::datum::format_timestamptz_offset(us, zone.offset_at(us))
                    } else {
                        orochi_common::datum::format_timestamp(us)
                    }
                })
            })
            .collect();
        shaped_like_input(scalar, Arc::new(out))
    }
}

/// A UDF's result as a scalar when its input was one.
pub(crate) fn shaped_like_input(
    scalar: bool,
    out: arrow::array::ArrayRef,
) -> Result<ColumnarValue> {
    Ok(if scalar {
        ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?)
    } else {
        ColumnarValue::Array(out)
    })
}

/// `call` cast to the type the replaced cast produced, unless it already `produces` it.
fn cast_unless(call: Expr, target: &DataType, produces: bool) -> Expr {
    if produces {
        call
    } else {
        Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(call),
            target.clone(),
        ))
    }
}

/// `'…'::timestamp` and `'…'::timestamptz`: Postgres' input syntax, through the same parser
/// as COPY and parameters (Arrow's wants seconds and cannot resolve a skipped local time).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TextTimestamp {
    /// For a timestamptz: the session's zone, which a time without an offset is read in.
    zone: Option<Zone>,
    /// The result's zone label (the cast's).
    label: Option<Arc<str>>,
    signature: Signature,
}

impl ScalarUDFImpl for TextTimestamp {
    fn name(&self) -> &str {
        "orochi_text_timestamp"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("CAST({} AS Timestamp)", args[0]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            self.label.clone(),
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use orochi_common::datum::Datum;
        use orochi_common::types::SqlType;
        let (scalar, text) = text_argument(&args)?;
        let text = &text;
        let out = text
            .iter()
            .map(|v| {
                v.map(|s| {
                    let d = match &self.zone {
                        Some(zone) => Datum::parse_in(SqlType::Timestamptz, s, zone),
                        None => Datum::parse(SqlType::Timestamp, s),
                    };
                    match d.map_err(crate::error::db_to_df)? {
                        Datum::Timestamp(us) | Datum::Timestamptz(us) => Ok(us),
                        _ => Ok(0),
                    }
                })
                .transpose()
            })
            .collect::<Result<arrow::array::TimestampMicrosecondArray>>()?
            .with_timezone_opt(self.label.clone());
        shaped_like_input(scalar, Arc::new(out))
    }
}

/// A function's one argument as text (any string type, or anything castable), and whether
/// it was a scalar.
pub(crate) fn text_argument(
    args: &ScalarFunctionArgs,
) -> Result<(bool, arrow::array::StringArray)> {
    use arrow::array::Array;
    let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
    let array = ColumnarValue::values_to_arrays(&args.args[..1])?.remove(0);
    let text = arrow::compute::cast(&array, &DataType::Utf8)?;
    let text = text
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .expect("cast to Utf8")
        .clone();
    debug_assert_eq!(text.len(), array.len());
    Ok((scalar, text))
}

/// `text::interval` of a column or expression: Postgres' interval input syntax
/// (`orochi_common::interval`), not DataFusion's (which has no `@ … ago`, `-1 day +02:00`, …).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TextInterval {
    signature: Signature,
}

impl ScalarUDFImpl for TextInterval {
    fn name(&self) -> &str {
        "orochi_text_interval"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("CAST({} AS Interval(MonthDayNano))", args[0]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Interval(
            arrow::datatypes::IntervalUnit::MonthDayNano,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::datatypes::IntervalMonthDayNano;
        let (scalar, text) = text_argument(&args)?;
        let text = &text;
        let mut out = arrow::array::IntervalMonthDayNanoBuilder::with_capacity(
            arrow::array::Array::len(text),
        );
        for v in text.iter() {
            match v {
                None => out.append_null(),
                Some(s) => {
                    let i = orochi_common::interval::parse_interval(s).map_err(db_to_df)?;
                    out.append_value(IntervalMonthDayNano::new(
                        i.months,
                        i.days,
                        i.micros.saturating_mul(1_000),
                    ));
                }
            }
        }
        shaped_like_input(scalar, Arc::new(out.finish()))
    }
}

/// `timestamptz::timestamp`: the wall-clock time of each instant in the session's zone.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LocalTimestamp {
    zone: Zone,
    signature: Signature,
}

impl ScalarUDFImpl for LocalTimestamp {
    fn name(&self) -> &str {
        "orochi_local_timestamp"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("CAST({} AS Timestamp(µs))", args[0]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            None,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let array = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let micros = arrow::compute::cast(
            &array,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
        )?;
        let micros = micros
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .expect("cast to Timestamp(µs)");
        let out: arrow::array::TimestampMicrosecondArray = micros
            .iter()
            .map(|v| v.map(|us| us + self.zone.offset_at(us) as i64 * 1_000_000))
            .collect();
        shaped_like_input(scalar, Arc::new(out))
    }
}

/// `interval * number` and `interval / number`, as Postgres computes them: each field
/// multiplied, fractions of months and days cascading down (DataFusion has neither: its
/// planner refuses them; [`PgOperators`] plans them as these).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IntervalScale {
    divide: bool,
    signature: Signature,
}

/// What intervals compare by, as in Postgres: their length with a month of 30 days and a day
/// of 24 hours, in microseconds (Arrow compares months, then days, then the time, so
/// `'25 hours' > '1 day'` would be false, and a timestamp difference, a duration, compared
/// with an interval literal would be cast field by field).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IntervalKey {
    signature: Signature,
}

impl ScalarUDFImpl for IntervalKey {
    fn name(&self) -> &str {
        "orochi_interval_key"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args[0].to_string())
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Decimal128(38, 0))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::Array;
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let array = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let mut out = arrow::array::Decimal128Builder::with_capacity(array.len());
        for r in 0..array.len() {
            if array.is_null(r) {
                out.append_null();
                continue;
            }
            let i = crate::pgwire::encode::interval_at(array.as_ref(), r).map_err(db_to_df)?;
            let day = 86_400_000_000i128;
            out.append_value(i.months as i128 * 30 * day + i.days as i128 * day + i.micros as i128);
        }
        let out = out.with_precision_and_scale(38, 0)?.finish();
        shaped_like_input(scalar, Arc::new(out))
    }
}

/// Operators whose Postgres meaning differs from DataFusion's by operand types, planned as
/// the SQL is (so their result types are Postgres' too, which an analyzer rule could not
/// change): `date ± interval` is a timestamp (DataFusion: a date), `interval * number`,
/// `number * interval` and `interval / number` exist, and a `numeric` quotient has Postgres'
/// scale and rounding (`functions::numeric`).
#[derive(Debug)]
pub struct PgOperators;

impl datafusion::logical_expr::planner::ExprPlanner for PgOperators {
    fn plan_binary_op(
        &self,
        expr: datafusion::logical_expr::planner::RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<
        datafusion::logical_expr::planner::PlannerResult<
            datafusion::logical_expr::planner::RawBinaryExpr,
        >,
    > {
        use datafusion::logical_expr::planner::PlannerResult;
        use datafusion::sql::sqlparser::ast::BinaryOperator as B;
        let ty = |x: &Expr| x.get_type(schema).ok();
        let (l, r) = (ty(&expr.left), ty(&expr.right));
        let date = |t: &Option<DataType>| matches!(t, Some(DataType::Date32 | DataType::Date64));
        let interval = |t: &Option<DataType>| matches!(t, Some(DataType::Interval(_)));
        // (a timestamp difference is an interval in Postgres)
        let scalable =
            |t: &Option<DataType>| matches!(t, Some(DataType::Interval(_) | DataType::Duration(_)));
        let number = |t: &Option<DataType>| t.as_ref().is_some_and(|t| t.is_numeric());
        let at_midnight = |x: Expr| {
            Box::new(Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(x),
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )))
        };
        let scale = |divide: bool, iv: Expr, factor: Expr| {
            let [mul, div] = interval_scale_functions();
            let f = Arc::new(if divide { div } else { mul });
            Expr::ScalarFunction(ScalarFunction::new_udf(f, vec![iv, factor]))
        };
        let planned = match expr.op {
            B::Plus | B::Minus if date(&l) && interval(&r) => {
                let op = if expr.op == B::Plus {
                    Operator::Plus
                } else {
                    Operator::Minus
                };
                Expr::BinaryExpr(BinaryExpr {
                    left: at_midnight(expr.left),
                    op,
                    right: Box::new(expr.right),
                })
            }
            B::Plus if interval(&l) && date(&r) => Expr::BinaryExpr(BinaryExpr {
                left: Box::new(expr.left),
                op: Operator::Plus,
                right: at_midnight(expr.right),
            }),
            B::Multiply if scalable(&l) && number(&r) => scale(false, expr.left, expr.right),
            B::Multiply if number(&l) && scalable(&r) => scale(false, expr.right, expr.left),
            B::Divide if scalable(&l) && number(&r) => scale(true, expr.left, expr.right),
            B::Divide
                if l.as_ref()
                    .zip(r.as_ref())
                    .is_some_and(|(l, r)| crate::functions::numeric::is_numeric_division(l, r)) =>
            {
                crate::functions::numeric::divide(expr.left, expr.right)
            }
            _ => return Ok(PlannerResult::Original(expr)),
        };
        Ok(PlannerResult::Planned(planned))
    }
}

const INTERVAL_MUL: &str = "orochi_interval_mul";
const INTERVAL_DIV: &str = "orochi_interval_div";

/// The two functions.
fn interval_scale_functions() -> [ScalarUDF; 2] {
    [false, true].map(|divide| {
        ScalarUDF::new_from_impl(IntervalScale {
            divide,
            signature: Signature::any(2, Volatility::Immutable),
        })
    })
}

impl ScalarUDFImpl for IntervalScale {
    fn name(&self) -> &str {
        if self.divide {
            INTERVAL_DIV
        } else {
            INTERVAL_MUL
        }
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        let op = if self.divide { '/' } else { '*' };
        Ok(format!("{} {op} {}", args[0], args[1]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Interval(
            arrow::datatypes::IntervalUnit::MonthDayNano,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::IntervalMonthDayNano;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let intervals = &arrays[0];
        let factors = arrow::compute::cast(&arrays[1], &DataType::Float64)?;
        let factors = factors.as_primitive::<arrow::datatypes::Float64Type>();
        let mut out = arrow::array::IntervalMonthDayNanoBuilder::with_capacity(intervals.len());
        for r in 0..intervals.len() {
            if intervals.is_null(r) || factors.is_null(r) {
                out.append_null();
                continue;
            }
            let mut f = factors.value(r);
            if self.divide {
                if f == 0.0 {
                    return Err(db_to_df(DbError::new(
                        SqlState::DivisionByZero,
                        "division by zero",
                    )));
                }
                f = 1.0 / f;
            }
            let i = crate::pgwire::encode::interval_at(intervals.as_ref(), r).map_err(db_to_df)?;
            let m = orochi_common::interval::multiply(i, f).map_err(db_to_df)?;
            out.append_value(IntervalMonthDayNano::new(
                m.months,
                m.days,
                m.micros.saturating_mul(1_000),
            ));
        }
        shaped_like_input(scalar, Arc::new(out.finish()))
    }
}

/// Replaces integer `+`/`-`/`*` in `expr` (typed against `schema`) with checked calls,
/// numeric/float → integer casts with [`RoundingCast`], and timestamp → text casts with
/// [`TimestampText`].
/// `zone`: the session's time zone, for timestamptz → text and timestamptz → timestamp.
pub fn check_integer_arithmetic(
    expr: Expr,
    schema: &DFSchema,
    zone: Zone,
) -> Result<Transformed<Expr>> {
    let session_label: Arc<str> = Arc::from(zone.arrow_name());
    // a timestamptz argument labelled with another zone (a stored column's UTC), relabelled
    // with the session's: the same instant, whose fields are then the session's wall clock
    let relabel = |arg: &Expr| -> Option<Expr> {
        match arg.get_type(schema) {
            Ok(DataType::Timestamp(unit, Some(tz)))
                if zone != Zone::UTC && *tz != *session_label =>
            {
                Some(Expr::Cast(datafusion::logical_expr::Cast::new(
                    Box::new(arg.clone()),
                    DataType::Timestamp(unit, Some(session_label.clone())),
                )))
            }
            _ => None,
        }
    };
    expr.transform_up(|e| {
        // ceil/floor/trunc of a numeric: Postgres' result has scale 0 (`ceil(1.5)` is 2);
        // DataFusion keeps the argument's, and overflows its precision (`ceil(99.5)`), so
        // the argument goes in at full precision. (`trunc(x, n)` is left as DataFusion has it.)
        if let Expr::ScalarFunction(f) = &e
            && matches!(f.func.name(), "ceil" | "floor" | "trunc")
            && let [arg] = f.args.as_slice()
            && let Ok(DataType::Decimal128(_, s)) = arg.get_type(schema)
            && s > 0
        {
            let wide = Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(arg.clone()),
                DataType::Decimal128(38, s),
            ));
            let call = Expr::ScalarFunction(ScalarFunction::new_udf(f.func.clone(), vec![wide]));
            return Ok(Transformed::yes(Expr::Cast(
                datafusion::logical_expr::Cast::new(Box::new(call), DataType::Decimal128(38, 0)),
            )));
        }
        // comparisons of intervals (and timestamp differences): by their length
        if let Expr::BinaryExpr(b) = &e
            && matches!(
                b.op,
                Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
            )
        {
            let interval = |x: &Expr| {
                matches!(
                    x.get_type(schema),
                    Ok(DataType::Interval(_) | DataType::Duration(_))
                )
            };
            // (a cast coercion put between an interval and a duration goes: it converts
            // field by field)
            let strip = |x: &Expr| match x {
                Expr::Cast(c) if interval(&c.expr) => (*c.expr).clone(),
                other => other.clone(),
            };
            if interval(&b.left) && interval(&b.right) {
                let key = Arc::new(ScalarUDF::new_from_impl(IntervalKey {
                    signature: Signature::any(1, Volatility::Immutable),
                }));
                let call = |x: Expr| {
                    Box::new(Expr::ScalarFunction(ScalarFunction::new_udf(
                        key.clone(),
                        vec![x],
                    )))
                };
                return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr {
                    left: call(strip(&b.left)),
                    op: b.op,
                    right: call(strip(&b.right)),
                })));
            }
        }
        // to_char(date): of the timestamptz at its midnight in the session's zone (Postgres
        // has no to_char(date); the date is cast)
        if let Expr::ScalarFunction(f) = &e
            && f.func.name() == "to_char"
            && let Some(date) = f.args.first()
            && let Ok(DataType::Date32 | DataType::Date64) = date.get_type(schema)
        {
            let unit = arrow::datatypes::TimeUnit::Microsecond;
            let naive = Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(date.clone()),
                DataType::Timestamp(unit, None),
            ));
            let local = Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(naive),
                DataType::Timestamp(unit, Some(session_label.clone())),
            ));
            let mut args = f.args.clone();
            args[0] = local;
            return Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(f.func.clone(), args),
            )));
        }
        // extract/date_part/date_trunc/to_char and ::date/::time of a timestamptz: in the
        // session's zone, as Postgres computes them
        if let Expr::ScalarFunction(f) = &e
            && matches!(
                f.func.name(),
                "date_part" | "date_trunc" | "to_char" | "extract" | "age"
            )
            && f.args.iter().any(|a| relabel(a).is_some())
        {
            let args = f
                .args
                .iter()
                .map(|a| relabel(a).unwrap_or_else(|| a.clone()))
                .collect();
            return Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(f.func.clone(), args),
            )));
        }
        if let Expr::Cast(c) = &e
            && matches!(
                c.field.data_type(),
                DataType::Date32 | DataType::Date64 | DataType::Time64(_) | DataType::Time32(_)
            )
            && let Some(arg) = relabel(&c.expr)
        {
            return Ok(Transformed::yes(Expr::Cast(
                datafusion::logical_expr::Cast::new(Box::new(arg), c.field.data_type().clone()),
            )));
        }
        // text → timestamp(tz): Postgres' input syntax (`2024-01-01 10:00`, `epoch`), a
        // timestamptz without an offset in the session's zone
        if let Expr::Cast(c) = &e
            && let DataType::Timestamp(unit, tz) = c.field.data_type()
            && let Ok(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) =
                c.expr.get_type(schema)
        {
            let udf = Arc::new(ScalarUDF::new_from_impl(TextTimestamp {
                zone: tz.as_ref().map(|_| zone),
                label: tz.clone(),
                signature: Signature::any(1, Volatility::Immutable),
            }));
            let call = Expr::ScalarFunction(ScalarFunction::new_udf(udf, vec![(*c.expr).clone()]));
            return Ok(Transformed::yes(cast_unless(call, c.field.data_type(), {
                *unit == arrow::datatypes::TimeUnit::Microsecond
            })));
        }
        // text → interval: Postgres' input syntax
        if let Expr::Cast(c) = &e
            && let DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano) =
                c.field.data_type()
            && let Ok(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) =
                c.expr.get_type(schema)
        {
            let udf = Arc::new(ScalarUDF::new_from_impl(TextInterval {
                signature: Signature::any(1, Volatility::Immutable),
            }));
            return Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(udf, vec![(*c.expr).clone()]),
            )));
        }
        // timestamptz → timestamp: the wall-clock time in the session's zone (Arrow keeps
        // the UTC one)
        if let Expr::Cast(c) = &e
            && zone != Zone::UTC
            && let DataType::Timestamp(unit, None) = c.field.data_type()
            && let Ok(DataType::Timestamp(_, Some(_))) = c.expr.get_type(schema)
        {
            let udf = Arc::new(ScalarUDF::new_from_impl(LocalTimestamp {
                zone,
                signature: Signature::any(1, Volatility::Immutable),
            }));
            let call = Expr::ScalarFunction(ScalarFunction::new_udf(udf, vec![(*c.expr).clone()]));
            return Ok(Transformed::yes(cast_unless(call, c.field.data_type(), {
                *unit == arrow::datatypes::TimeUnit::Microsecond
            })));
        }
        if let Expr::Cast(c) = &e
            && matches!(
                c.field.data_type(),
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            )
            && let Ok(DataType::Timestamp(_, tz)) = c.expr.get_type(schema)
        {
            let udf = Arc::new(ScalarUDF::new_from_impl(TimestampText {
                zone: tz.is_some().then_some(zone),
                signature: Signature::any(1, Volatility::Immutable),
            }));
            let call = Expr::ScalarFunction(ScalarFunction::new_udf(udf, vec![(*c.expr).clone()]));
            // keep the cast's own result type (Utf8View where DataFusion asked for it)
            return Ok(Transformed::yes(cast_unless(
                call,
                c.field.data_type(),
                c.field.data_type() == &DataType::Utf8,
            )));
        }
        if let Expr::Cast(c) = &e
            && is_integer(c.field.data_type())
            && let Ok(from) = c.expr.get_type(schema)
            && matches!(
                from,
                DataType::Decimal128(..) | DataType::Float32 | DataType::Float64
            )
        {
            let udf = Arc::new(ScalarUDF::new_from_impl(RoundingCast {
                target: c.field.data_type().clone(),
                signature: Signature::any(1, Volatility::Immutable),
            }));
            return Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(udf, vec![(*c.expr).clone()]),
            )));
        }
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
            return Ok(Transformed::no(e));
        };
        let op = match op {
            Operator::Plus => ArithOp::Add,
            Operator::Minus => ArithOp::Sub,
            Operator::Multiply => ArithOp::Mul,
            _ => return Ok(Transformed::no(e)),
        };
        let (Ok(lt), Ok(rt)) = (left.get_type(schema), right.get_type(schema)) else {
            return Ok(Transformed::no(e));
        };
        if !(is_integer(&lt) && lt == rt) {
            return Ok(Transformed::no(e));
        }
        let udf = Arc::new(ScalarUDF::new_from_impl(CheckedArith::new(op)));
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(udf, vec![(**left).clone(), (**right).clone()]),
        )))
    })
}

/// The analyzer rule (append it after DataFusion's type coercion).
#[derive(Debug, Default)]
pub struct CheckedIntegerArithmetic;

impl AnalyzerRule for CheckedIntegerArithmetic {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let zone = config
            .execution
            .time_zone
            .as_deref()
            .map_or(Zone::UTC, Zone::from_arrow);
        plan.transform_up_with_subqueries(|node| {
            // expressions of a node are typed against its inputs (merged for joins)
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            let preserver = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let saved = preserver.save(&e);
                let t = check_integer_arithmetic(e, &schema, zone)?;
                Ok(if t.transformed {
                    Transformed::yes(saved.restore(t.data))
                } else {
                    t
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "orochi_checked_integer_arithmetic"
    }
}
