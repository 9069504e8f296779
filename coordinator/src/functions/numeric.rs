//! `numeric / numeric` as Postgres computes it: rounded (half away from zero), to at least 16
//! digits after the point. Arrow's decimal kernel keeps `s1 + 4` digits and truncates, so
//! `1.0 / 3` was `0.33333` and `2 / 3.0` `0.6666`.
//!
//! Postgres picks the scale per value (`select_div_scale`): 16 significant digits, and at least
//! either operand's scale. An Arrow column has one scale, so here it is `max(16, s1, s2)`:
//! what Postgres prints for every quotient from 1 up to 10,000 (`10.0 / 4` is
//! `2.5000000000000000`); a quotient below 1 gets 4 more digits there (`1.0 / 3` is
//! `0.33333333333333333333`), one of 10,000 or more 4 fewer per 4 digits.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Builder};
use arrow::datatypes::i256;
use arrow::datatypes::{DataType, Decimal128Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use orochi_common::error::{DbError, SqlState};
use orochi_common::types::SqlType;

use crate::error::db_to_df;

/// Postgres' `NUMERIC_MIN_SIG_DIGITS`: the least scale of a quotient in [1, 10000).
const MIN_QUOTIENT_SCALE: i8 = 16;
const MAX_PRECISION: u8 = 38;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NumericDiv {
    signature: Signature,
}

/// The scale of an operand: a decimal's own, an integer's 0; `None` for any other type.
fn operand_scale(t: &DataType) -> Option<i8> {
    match t {
        DataType::Decimal128(_, s) => Some(*s),
        t if t.is_integer() => Some(0),
        _ => None,
    }
}

/// Whether `l / r` is a numeric division: both operands numeric or integer, one of them numeric.
pub fn is_numeric_division(l: &DataType, r: &DataType) -> bool {
    operand_scale(l).is_some()
        && operand_scale(r).is_some()
        && (matches!(l, DataType::Decimal128(..)) || matches!(r, DataType::Decimal128(..)))
}

/// `l / r` as Postgres divides numerics.
pub fn divide(l: Expr, r: Expr) -> Expr {
    let udf = ScalarUDF::new_from_impl(NumericDiv {
        signature: Signature::any(2, Volatility::Immutable),
    });
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(udf),
        vec![l, r],
    ))
}

fn result_scale(l: &DataType, r: &DataType) -> Result<i8> {
    match (operand_scale(l), operand_scale(r)) {
        (Some(s1), Some(s2)) => Ok(MIN_QUOTIENT_SCALE.max(s1).max(s2).clamp(0, 38)),
        _ => Err(datafusion::error::DataFusionError::Plan(format!(
            "numeric division of {l} and {r}"
        ))),
    }
}

fn overflow() -> DbError {
    DbError::new(
        SqlState::NumericValueOutOfRange,
        "value overflows numeric format",
    )
}

/// `a / b` (unscaled, with scales `s1`, `s2`) at `scale`, rounded half away from zero.
fn quotient(a: i128, s1: i8, b: i128, s2: i8, scale: i8) -> Result<i128, DbError> {
    if b == 0 {
        return Err(DbError::new(SqlState::DivisionByZero, "division by zero"));
    }
    // a / 10^s1 / (b / 10^s2) * 10^scale = a * 10^(scale - s1 + s2) / b
    // scale >= s1 and scales are at most 38, so shift <= 76 and 10^shift fits an i256 (a
    // negative operand scale could push it past that: then it overflows, an error)
    let shift = (scale as i32 - s1 as i32 + s2 as i32) as u32;
    let den = i256::from_i128(b);
    let num = i256::from_i128(a)
        .checked_mul(
            i256::from_i128(10)
                .checked_pow(shift)
                .ok_or_else(overflow)?,
        )
        .ok_or_else(overflow)?;
    let q = num.checked_div(den).ok_or_else(overflow)?;
    let rem = num.checked_rem(den).ok_or_else(overflow)?;
    let twice = rem.wrapping_abs().checked_mul(i256::from_i128(2));
    let round_up = twice.is_none_or(|t| t >= den.wrapping_abs());
    let q = if round_up {
        if (num < i256::ZERO) != (den < i256::ZERO) {
            q - i256::ONE
        } else {
            q + i256::ONE
        }
    } else {
        q
    };
    let q = q.to_i128().ok_or_else(overflow)?;
    if q.unsigned_abs() >= 10u128.pow(MAX_PRECISION as u32) {
        return Err(overflow());
    }
    Ok(q)
}

impl ScalarUDFImpl for NumericDiv {
    fn name(&self) -> &str {
        "orochi_numeric_div"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!("{} / {}", args[0], args[1]))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Decimal128(
            MAX_PRECISION,
            result_scale(&arg_types[0], &arg_types[1])?,
        ))
    }

    /// Typed `numeric(38, scale)` in the field's metadata, so its digits print as Postgres
    /// prints a quotient's, trailing zeros included (computed decimals are trimmed otherwise).
    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<arrow::datatypes::FieldRef> {
        let (l, r) = (
            args.arg_fields[0].data_type(),
            args.arg_fields[1].data_type(),
        );
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        let ty = SqlType::Numeric(Some((MAX_PRECISION, result_scale(l, r)?)));
        Ok(Arc::new(ty.arrow_field(self.name(), nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let types: Vec<DataType> = args.args.iter().map(|a| a.data_type()).collect();
        let scale = result_scale(&types[0], &types[1])?;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let as_decimal = |a: &ArrayRef, t: &DataType| -> Result<(ArrayRef, i8)> {
            let s = operand_scale(t).unwrap_or(0);
            Ok((
                arrow::compute::cast(a, &DataType::Decimal128(MAX_PRECISION, s))?,
                s,
            ))
        };
        let (l, s1) = as_decimal(&arrays[0], &types[0])?;
        let (r, s2) = as_decimal(&arrays[1], &types[1])?;
        let (l, r) = (
            l.as_primitive::<Decimal128Type>(),
            r.as_primitive::<Decimal128Type>(),
        );
        let mut out = Decimal128Builder::with_capacity(l.len());
        for i in 0..l.len() {
            if l.is_null(i) || r.is_null(i) {
                out.append_null();
                continue;
            }
            let q = quotient(l.value(i), s1, r.value(i), s2, scale).map_err(db_to_df)?;
            out.append_value(q);
        }
        let out = out
            .finish()
            .with_precision_and_scale(MAX_PRECISION, scale)?;
        crate::checked::shaped_like_input(scalar, Arc::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotients_round_half_away_from_zero_at_the_scale() {
        // 1.0 / 3 at 16 digits
        assert_eq!(quotient(10, 1, 3, 0, 16).unwrap(), 3_333_333_333_333_333);
        // 2 / 3 rounds up, -2 / 3 down
        assert_eq!(quotient(2, 0, 3, 0, 4).unwrap(), 6667);
        assert_eq!(quotient(-2, 0, 3, 0, 4).unwrap(), -6667);
        assert_eq!(quotient(2, 0, -3, 0, 4).unwrap(), -6667);
        // exactly half: away from zero
        assert_eq!(quotient(1, 0, 8, 0, 2).unwrap(), 13);
        assert_eq!(quotient(-1, 0, 8, 0, 2).unwrap(), -13);
        // 10.00 / 0.25 = 40
        assert_eq!(quotient(1000, 2, 25, 2, 16).unwrap(), 40 * 10i128.pow(16));
        assert_eq!(
            quotient(1, 0, 0, 0, 16).unwrap_err().state,
            SqlState::DivisionByZero
        );
        // 10^30 / 10^-16 does not fit 38 digits
        assert_eq!(
            quotient(10i128.pow(30), 0, 1, 16, 16).unwrap_err().state,
            SqlState::NumericValueOutOfRange
        );
    }
}
