//! Integer arithmetic that fails on overflow, as Postgres' does.
//!
//! DataFusion evaluates `+`, `-`, `*` on integers with wrapping kernels (`2147483647::int4 + 1`
//! is `-2147483648`); Postgres raises 22003 (`integer out of range`). [`CheckedIntegerArithmetic`]
//! is an analyzer rule, run after type coercion, that replaces those operators on integer
//! operands with [`CheckedArith`], which calls Arrow's checked kernels. Constant folding then
//! also goes through the checked kernels, so an overflowing constant fails at planning time,
//! with the same error.

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

fn is_integer(t: &DataType) -> bool {
    matches!(t, DataType::Int16 | DataType::Int32 | DataType::Int64)
}

/// Replaces integer `+`/`-`/`*` in `expr` (typed against `schema`) with checked calls.
pub fn check_integer_arithmetic(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    expr.transform_up(|e| {
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
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            // expressions of a node are typed against its inputs (merged for joins)
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            let preserver = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let saved = preserver.save(&e);
                let t = check_integer_arithmetic(e, &schema)?;
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
