//! Postgres' type and relation identifiers: the built-in types we report (oid, internal name,
//! display name, array type), `format_type(oid, typmod)`, and the `regtype`/`regclass`
//! conversions drivers and psql use: `'int4'::regtype`, `oid::regtype::text`,
//! `to_regtype('hstore')`, `'t'::regclass`, `to_regclass('t')`.
//!
//! `x::regtype` / `x::regclass` are rewritten to function calls before planning
//! ([`rewrite_type_casts`]): a reg value is an oid (UInt32); cast to text it is the name.
//! So are casts to `uuid`, `json` and `jsonb`, which DataFusion does not have.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, SqlState};
use orochi_common::types::SqlType;

use crate::catalog::Catalog;
use crate::system::{TablesById, relation_name, relation_oid, tables_by_id};

/// A built-in type as `pg_type` and `format_type` describe it.
pub struct PgType {
    pub oid: u32,
    /// `pg_type.typname`.
    pub typname: &'static str,
    /// What `format_type` and `::regtype::text` print.
    pub display: &'static str,
    /// `pg_type.typarray` (0: none).
    pub array: u32,
    /// `pg_type.typlen` (-1: variable).
    pub len: i16,
}

const fn ty(
    oid: u32,
    typname: &'static str,
    display: &'static str,
    array: u32,
    len: i16,
) -> PgType {
    PgType {
        oid,
        typname,
        display,
        array,
        len,
    }
}

/// The types we have (our column types, `oid` and `name` that catalogs use, and `time` and
/// `interval`, which expressions produce).
pub const PG_TYPES: &[PgType] = &[
    ty(16, "bool", "boolean", 1000, 1),
    ty(17, "bytea", "bytea", 1001, -1),
    ty(19, "name", "name", 1003, 64),
    ty(20, "int8", "bigint", 1016, 8),
    ty(21, "int2", "smallint", 1005, 2),
    ty(23, "int4", "integer", 1007, 4),
    ty(25, "text", "text", 1009, -1),
    ty(26, "oid", "oid", 1028, 4),
    ty(114, "json", "json", 199, -1),
    ty(700, "float4", "real", 1021, 4),
    ty(701, "float8", "double precision", 1022, 8),
    ty(1042, "bpchar", "character", 1014, -1),
    ty(1043, "varchar", "character varying", 1015, -1),
    ty(1082, "date", "date", 1182, 4),
    ty(1083, "time", "time without time zone", 1183, 8),
    ty(1114, "timestamp", "timestamp without time zone", 1115, 8),
    ty(1184, "timestamptz", "timestamp with time zone", 1185, 8),
    ty(1186, "interval", "interval", 1187, 16),
    ty(1700, "numeric", "numeric", 1231, -1),
    ty(2950, "uuid", "uuid", 2951, 16),
    ty(3802, "jsonb", "jsonb", 3807, -1),
];

pub fn by_oid(oid: u32) -> Option<&'static PgType> {
    PG_TYPES.iter().find(|t| t.oid == oid)
}

/// The element type of an array type oid.
pub fn element_of(array_oid: u32) -> Option<&'static PgType> {
    PG_TYPES.iter().find(|t| t.array == array_oid)
}

/// `typcollation`/`attcollation`: text-like types collate with the database default (oid
/// 100), others have none.
pub fn collation_of(type_oid: u32) -> u32 {
    match type_oid {
        19 | 25 | 1042 | 1043 => 100,
        _ => 0,
    }
}

/// What `oid::regtype::text` prints: the SQL name, or the number for an unknown oid.
pub fn regtype_name(oid: u32) -> String {
    match (element_of(oid), by_oid(oid)) {
        (Some(t), _) => format!("{}[]", t.display),
        (None, Some(t)) => t.display.to_string(),
        (None, None) => oid.to_string(),
    }
}

/// `pg_attribute.atttypmod` of a column type (-1: none), as Postgres encodes it.
pub fn typmod(ty: SqlType) -> i32 {
    match ty {
        SqlType::Varchar(Some(n)) | SqlType::Char(n) => n as i32 + 4,
        SqlType::Numeric(Some((p, s))) => ((p as i32) << 16 | (s as i32 & 0xffff)) + 4,
        _ => -1,
    }
}

/// `format_type(oid, typmod)`.
pub fn format_type(oid: u32, typmod: Option<i32>) -> String {
    let (base, array) = match element_of(oid) {
        Some(t) => (t, "[]"),
        None => match by_oid(oid) {
            Some(t) => (t, ""),
            None => return "???".to_string(),
        },
    };
    let m = typmod.filter(|&m| m >= 4).map(|m| m - 4);
    let name = match (base.oid, m) {
        (1043, Some(n)) => format!("character varying({n})"),
        (1042, Some(n)) => format!("character({n})"),
        (1700, Some(m)) => format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff),
        // without a typmod Postgres prints the internal name of blank-padded char
        (1042, None) if typmod.is_none() => "bpchar".to_string(),
        _ => base.display.to_string(),
    };
    format!("{name}{array}")
}

/// The oid of a type name as `regtype` input accepts it: internal or SQL names, any case,
/// optionally `pg_catalog.`-qualified, with a type modifier or `[]`.
pub fn type_oid_by_name(name: &str) -> Option<u32> {
    let mut n = name.trim().to_ascii_lowercase();
    let array = n.ends_with("[]");
    if array {
        n.truncate(n.len() - 2);
    }
    if let Some(i) = n.find('(') {
        // `varchar(20)`, `numeric(10,2)`, `timestamp(3) with time zone`
        let close = n[i..].find(')').map_or(n.len(), |j| i + j + 1);
        n.replace_range(i..close, "");
    }
    let n = n.trim().trim_start_matches("pg_catalog.").trim_matches('"');
    let n = n.split_whitespace().collect::<Vec<_>>().join(" ");
    let canonical = match n.as_str() {
        "int" | "integer" => "int4",
        "smallint" => "int2",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" | "float" => "float8",
        "boolean" => "bool",
        "decimal" => "numeric",
        "char" | "character" => "bpchar",
        "character varying" => "varchar",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        other => other,
    };
    let t = PG_TYPES
        .iter()
        .find(|t| t.typname == canonical || t.display == canonical)?;
    Some(if array { t.array } else { t.oid })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reg {
    Type,
    Class,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// `x::regtype`: a name that does not exist is an error; a number is taken as the oid.
    Cast,
    /// `to_regtype(name)`: NULL for a name that does not exist.
    To,
    /// `x::regtype::text`: the name (a number with no object prints as the number).
    Name,
}

/// The reg* conversions. Relation names resolve through the session's search path.
struct RegFunction {
    name: &'static str,
    reg: Reg,
    mode: Mode,
    catalog: Arc<Catalog>,
    search_path: Vec<String>,
    signature: Signature,
}

impl std::fmt::Debug for RegFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegFunction")
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for RegFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.search_path == other.search_path
    }
}
impl Eq for RegFunction {}
impl std::hash::Hash for RegFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.search_path.hash(state);
    }
}

impl RegFunction {
    /// `schema.name` or `name` (through the search path) → relation oid.
    fn class_oid(&self, name: &str) -> Option<u32> {
        let parts: Vec<String> = name
            .split('.')
            .map(|p| {
                if p.starts_with('"') && p.ends_with('"') && p.len() >= 2 {
                    p[1..p.len() - 1].to_string()
                } else {
                    p.trim().to_ascii_lowercase()
                }
            })
            .collect();
        match parts.as_slice() {
            [rel] => relation_oid(&self.catalog, &self.search_path, rel),
            [schema, rel] => crate::system::relation_oid_in(&self.catalog, schema, rel),
            _ => None,
        }
    }

    /// Relation oid → name, schema-qualified unless the search path finds it first; a number
    /// with no relation prints as the number.
    fn class_name(&self, tables: &TablesById, oid: u32) -> String {
        let sequence = || crate::system::sequence_by_oid(&self.catalog, oid);
        let found = relation_name(tables, oid)
            .map(|(schema, name)| (schema.to_string(), name))
            .or_else(sequence);
        match found {
            Some((schema, name)) => {
                if relation_oid(&self.catalog, &self.search_path, &name) == Some(oid) {
                    name
                } else {
                    format!("{schema}.{name}")
                }
            }
            None => oid.to_string(),
        }
    }

    /// One value; `tables` is only read for relation names.
    fn convert(&self, v: &ScalarValue, tables: &TablesById) -> Result<ScalarValue> {
        let text = match v {
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                s.clone()
            }
            other if other.is_null() => None,
            other => {
                // a number: the oid itself
                let ScalarValue::Int64(Some(n)) = other.cast_to(&DataType::Int64)? else {
                    return Ok(ScalarValue::UInt32(None));
                };
                let oid = u32::try_from(n).unwrap_or(0);
                return Ok(match self.mode {
                    Mode::Name => ScalarValue::Utf8(Some(match self.reg {
                        Reg::Type => regtype_name(oid),
                        Reg::Class => self.class_name(tables, oid),
                    })),
                    _ => ScalarValue::UInt32(Some(oid)),
                });
            }
        };
        let Some(text) = text else {
            return Ok(match self.mode {
                Mode::Name => ScalarValue::Utf8(None),
                _ => ScalarValue::UInt32(None),
            });
        };
        let oid = match self.reg {
            Reg::Type => type_oid_by_name(&text),
            Reg::Class => self.class_oid(&text),
        };
        match (oid, self.mode) {
            (Some(oid), Mode::Name) => self.convert(&ScalarValue::UInt32(Some(oid)), tables),
            (Some(oid), _) => Ok(ScalarValue::UInt32(Some(oid))),
            (None, Mode::To) => Ok(ScalarValue::UInt32(None)),
            (None, _) => Err(crate::error::db_to_df(match self.reg {
                Reg::Type => DbError::new(
                    SqlState::UndefinedObject,
                    format!("type \"{text}\" does not exist"),
                ),
                Reg::Class => DbError::new(
                    SqlState::UndefinedTable,
                    format!("relation \"{text}\" does not exist"),
                ),
            })),
        }
    }
}

impl ScalarUDFImpl for RegFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.mode {
            Mode::Name => DataType::Utf8,
            _ => DataType::UInt32,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let tables = match (self.reg, self.mode) {
            (Reg::Class, Mode::Name) => tables_by_id(&self.catalog),
            _ => TablesById::new(),
        };
        match &args.args[0] {
            ColumnarValue::Scalar(v) => Ok(ColumnarValue::Scalar(self.convert(v, &tables)?)),
            ColumnarValue::Array(a) => {
                let values = (0..a.len())
                    .map(|i| {
                        ScalarValue::try_from_array(a, i).and_then(|v| self.convert(&v, &tables))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let out = if values.is_empty() {
                    arrow::array::new_empty_array(&self.return_type(&[])?)
                } else {
                    ScalarValue::iter_to_array(values)?
                };
                Ok(ColumnarValue::Array(out))
            }
        }
    }
}

/// `pg_get_expr(expr, relation[, pretty])`: our catalogs store expressions already as
/// Postgres prints them, so this returns its first argument.
#[derive(Debug, PartialEq, Eq, Hash)]
struct GetExpr {
    signature: Signature,
}

impl ScalarUDFImpl for GetExpr {
    fn name(&self) -> &str {
        "pg_get_expr"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let first = args.args.into_iter().next().ok_or_else(|| {
            datafusion::error::DataFusionError::Plan("pg_get_expr needs arguments".into())
        })?;
        first.cast_to(&DataType::Utf8, None)
    }
}

/// `format_type(type_oid, typmod)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatType {
    signature: Signature,
}

impl ScalarUDFImpl for FormatType {
    fn name(&self) -> &str {
        "format_type"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let oids = arrow::compute::cast(&arrays[0], &DataType::Int64)?;
        let mods = arrow::compute::cast(&arrays[1], &DataType::Int64)?;
        let oids = oids
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let mods = mods
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let out: StringArray = (0..oids.len())
            .map(|i| {
                (!oids.is_null(i)).then(|| {
                    let m = (!mods.is_null(i)).then(|| mods.value(i) as i32);
                    format_type(oids.value(i) as u32, m)
                })
            })
            .collect();
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
    }
}

/// `x::uuid`, `x::json`, `x::jsonb` (and `'literal'::bytea`): DataFusion has no such types (we carry them as text with
/// the Postgres type in the field metadata). The value is checked and normalized the way
/// Postgres' input function does (22P02 for bad input), and the result field says its type,
/// so clients see a uuid/json/jsonb column.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TextTypeCast {
    name: &'static str,
    ty: SqlType,
    signature: Signature,
}

impl ScalarUDFImpl for TextTypeCast {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.ty.arrow_type())
    }
    fn return_field_from_args(
        &self,
        _args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<arrow::datatypes::FieldRef> {
        Ok(Arc::new(self.ty.arrow_field(self.name, true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (scalar, text) = crate::checked::text_argument(&args)?;
        let text = &text;
        let parse = |i: usize| {
            (!text.is_null(i))
                .then(|| {
                    orochi_common::datum::Datum::parse(self.ty, text.value(i))
                        .map_err(crate::error::db_to_df)
                })
                .transpose()
        };
        let out: arrow::array::ArrayRef = if self.ty == SqlType::Bytea {
            Arc::new(
                (0..text.len())
                    .map(|i| {
                        Ok(parse(i)?.map(|d| match d {
                            orochi_common::datum::Datum::Bytea(b) => b,
                            _ => Vec::new(),
                        }))
                    })
                    .collect::<Result<arrow::array::BinaryArray>>()?,
            )
        } else {
            Arc::new(
                (0..text.len())
                    .map(|i| Ok(parse(i)?.and_then(|d| d.to_text())))
                    .collect::<Result<StringArray>>()?,
            )
        };
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
    }
}

/// Casts to the types DataFusion does not have, by target type; and a string literal cast to
/// bytea, which Postgres reads with bytea's input function (`'\\x00ff'::bytea` is two bytes),
/// where DataFusion would take the string's own bytes.
fn text_type_cast(t: &ast::DataType, e: &ast::Expr) -> Option<&'static str> {
    match t {
        ast::DataType::Uuid => Some(CAST_UUID),
        ast::DataType::JSON => Some(CAST_JSON),
        ast::DataType::JSONB => Some(CAST_JSONB),
        ast::DataType::Bytea
            if matches!(
                e,
                ast::Expr::Value(v) if matches!(
                    v.value,
                    ast::Value::SingleQuotedString(_) | ast::Value::EscapedStringLiteral(_)
                )
            ) =>
        {
            Some(CAST_BYTEA)
        }
        _ => None,
    }
}

const CAST_UUID: &str = "__orochi_cast_uuid";
const CAST_JSON: &str = "__orochi_cast_json";
const CAST_JSONB: &str = "__orochi_cast_jsonb";
const CAST_BYTEA: &str = "__orochi_cast_bytea";

/// The type and relation functions of a session (relation names depend on its search path).
/// `search_path` is the one relation names resolve through (`pg_catalog` included).
pub fn functions(catalog: &Arc<Catalog>, search_path: &[String]) -> Vec<ScalarUDF> {
    let search_path = search_path.to_vec();
    let reg = |name: &'static str, reg: Reg, mode: Mode| {
        ScalarUDF::new_from_impl(RegFunction {
            name,
            reg,
            mode,
            catalog: catalog.clone(),
            search_path: search_path.clone(),
            signature: Signature::any(1, Volatility::Stable),
        })
    };
    vec![
        reg(REGTYPE, Reg::Type, Mode::Cast),
        reg(REGTYPE_NAME, Reg::Type, Mode::Name),
        reg("to_regtype", Reg::Type, Mode::To),
        reg(REGCLASS, Reg::Class, Mode::Cast),
        reg(REGCLASS_NAME, Reg::Class, Mode::Name),
        reg("to_regclass", Reg::Class, Mode::To),
        ScalarUDF::new_from_impl(GetExpr {
            signature: Signature::variadic_any(Volatility::Stable),
        }),
        ScalarUDF::new_from_impl(FormatType {
            signature: Signature::any(2, Volatility::Stable),
        }),
        text_cast(CAST_UUID, SqlType::Uuid),
        text_cast(CAST_JSON, SqlType::Json),
        text_cast(CAST_JSONB, SqlType::Jsonb),
        text_cast(CAST_BYTEA, SqlType::Bytea),
    ]
}

/// An identifier as Postgres' `quote_ident` prints it: bare when it is a lower-case name that
/// is not a reserved word, else double-quoted with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "system_user",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !RESERVED.contains(&name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// For a function that stands for a cast: the type name Postgres names such a column after.
pub fn cast_function_type_name(function: &str) -> Option<&'static str> {
    Some(match function {
        CAST_UUID => "uuid",
        CAST_JSON => "json",
        CAST_JSONB => "jsonb",
        CAST_BYTEA => "bytea",
        REGTYPE => "regtype",
        REGCLASS => "regclass",
        REGTYPE_NAME | REGCLASS_NAME => "text",
        _ => return None,
    })
}

fn text_cast(name: &'static str, ty: SqlType) -> ScalarUDF {
    ScalarUDF::new_from_impl(TextTypeCast {
        name,
        ty,
        signature: Signature::any(1, Volatility::Immutable),
    })
}

const REGTYPE: &str = "__orochi_regtype";
const REGTYPE_NAME: &str = "__orochi_regtype_name";
const REGCLASS: &str = "__orochi_regclass";
const REGCLASS_NAME: &str = "__orochi_regclass_name";

fn call(name: &str, args: Vec<ast::FunctionArg>) -> ast::Expr {
    ast::Expr::Function(ast::Function {
        name: ast::ObjectName::from(vec![ast::Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args,
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// Which reg type a cast target is (`regtype`, `pg_catalog.regclass`, …).
fn reg_target(t: &ast::DataType) -> Option<Reg> {
    let name = match t {
        ast::DataType::Regclass => return Some(Reg::Class),
        ast::DataType::Custom(name, _) => name.0.last()?.as_ident()?.value.to_ascii_lowercase(),
        _ => return None,
    };
    match name.as_str() {
        "regtype" => Some(Reg::Type),
        "regclass" => Some(Reg::Class),
        _ => None,
    }
}

fn is_text_type(t: &ast::DataType) -> bool {
    matches!(
        t,
        ast::DataType::Text
            | ast::DataType::Varchar(_)
            | ast::DataType::CharacterVarying(_)
            | ast::DataType::String(_)
    ) || matches!(t, ast::DataType::Custom(n, _)
        if n.0.last().and_then(|p| p.as_ident()).is_some_and(|i| i.value.eq_ignore_ascii_case("text")))
}

/// A reg cast that is a whole result column of the statement's outer SELECT prints as the
/// name, as Postgres prints a reg value (`SELECT 'int4'::regtype` is `integer`, in a column
/// named `regtype`): it becomes `x::regtype::text`, named after the type. Elsewhere (in
/// comparisons, joins) a reg value stays an oid.
fn name_result_reg_casts(stmt: &mut ast::Statement) {
    let ast::Statement::Query(q) = stmt else {
        return;
    };
    let ast::SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        let (expr, alias) = match item {
            ast::SelectItem::UnnamedExpr(e) => (e, None),
            ast::SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.clone())),
            _ => continue,
        };
        let ast::Expr::Cast { data_type, .. } = &*expr else {
            continue;
        };
        let Some(reg) = reg_target(data_type) else {
            continue;
        };
        let name = match reg {
            Reg::Type => "regtype",
            Reg::Class => "regclass",
        };
        let as_text = ast::Expr::Cast {
            kind: ast::CastKind::DoubleColon,
            expr: Box::new(expr.clone()),
            data_type: ast::DataType::Text,
            array: false,
            format: None,
        };
        *item = ast::SelectItem::ExprWithAlias {
            expr: as_text,
            alias: alias.unwrap_or_else(|| ast::Ident::new(name)),
        };
    }
}

/// `x::regtype` → `__orochi_regtype(x)` (an oid); `x::regtype::text` → the type's name; the
/// same for `regclass`. `x::uuid`/`json`/`jsonb` → a checking conversion.
/// A string literal of an interval in Postgres' syntax, rewritten as months, days and
/// microseconds (what it means there). One that does not parse is left for DataFusion to
/// refuse.
fn canonical_interval(e: &mut ast::Expr) {
    if let ast::Expr::Value(v) = e
        && let ast::Value::SingleQuotedString(s) = &mut v.value
        && let Ok(i) = orochi_common::interval::parse_interval(s)
    {
        *s = format!(
            "{} months {} days {} microseconds",
            i.months, i.days, i.micros
        );
    }
}

/// `timestamp` and `timestamptz` without a precision hold microseconds in Postgres, as our
/// columns do; DataFusion reads them as nanoseconds, which cannot hold a year before 1677 or
/// after 2262. Precisions Arrow has no unit for (1, 2, 4, 5; above 6, which Postgres reduces
/// to 6) are microseconds too.
fn microsecond_timestamps(t: &mut ast::DataType) {
    if let ast::DataType::Timestamp(p, _) = t
        && !matches!(p, Some(0) | Some(3))
    {
        *p = Some(6);
    }
}

/// How a numeric literal with a fraction or an exponent is handed to DataFusion, which reads it
/// as a `numeric` (Decimal128) when it is written without an exponent.
#[derive(Debug, PartialEq)]
pub enum NumericLiteral {
    /// The same value without an exponent, with the scale Postgres gives it (`1.50e1` is
    /// `15.0`, `1e3` is `1000`).
    Plain(String),
    /// More than 38 digits: beyond what a column or an operator here holds exactly, so read
    /// as `float8` (Postgres keeps it `numeric`).
    TooWide,
}

/// The numeric literal `n` (digits, at most one `.`, an optional exponent) in the form
/// DataFusion reads as the `numeric` Postgres means; `None` when it already is one.
pub fn numeric_literal(n: &str) -> Option<NumericLiteral> {
    let n: String = n.chars().filter(|&c| c != '_').collect();
    let (mantissa, exp) = match n.find(['e', 'E']) {
        Some(i) => (&n[..i], n[i + 1..].parse::<i64>().ok()?),
        None => (n.as_str(), 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scale = frac_part.len() as i64 - exp;
    let significant = digits.trim_start_matches('0');
    // digits the value needs left of the point, and in all
    let integer_digits = (significant.len() as i64 - scale).max(1);
    if integer_digits + scale.max(0) > 38 {
        return Some(NumericLiteral::TooWide);
    }
    if exp == 0 {
        return None;
    }
    let significant = if significant.is_empty() {
        "0"
    } else {
        significant
    };
    let text = if scale <= 0 {
        if significant == "0" {
            "0".to_string()
        } else {
            format!("{significant}{}", "0".repeat((-scale) as usize))
        }
    } else {
        let scale = scale as usize;
        let padded = format!("{significant:0>width$}", width = scale + 1);
        let (i, f) = padded.split_at(padded.len() - scale);
        format!("{i}.{f}")
    };
    Some(NumericLiteral::Plain(text))
}

/// `x::oid`: a 32-bit unsigned integer, as `oid` columns are here (UInt32, sent as `oid`).
fn oid_as_uint32(t: &mut ast::DataType) {
    if let ast::DataType::Custom(name, modifiers) = t
        && modifiers.is_empty()
        && name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("oid"))
        && (name.0.len() == 1
            || name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog")))
    {
        *t = ast::DataType::IntUnsigned(None);
    }
}

pub fn rewrite_type_casts(stmt: &mut ast::Statement) {
    name_result_reg_casts(stmt);
    let _ = ast::visit_expressions_mut(stmt, |e| {
        match e {
            // numeric literals: `numeric` as in Postgres (see `numeric_literal`)
            ast::Expr::Value(v) if matches!(&v.value, ast::Value::Number(..)) => {
                if let ast::Value::Number(n, _) = &v.value {
                    match numeric_literal(n) {
                        // without a point DataFusion would read an integer
                        Some(NumericLiteral::Plain(p)) if !p.contains('.') => {
                            let digits = p.len() as u64;
                            *e = ast::Expr::Cast {
                                kind: ast::CastKind::DoubleColon,
                                expr: Box::new(ast::Expr::value(ast::Value::Number(p, false))),
                                data_type: ast::DataType::Numeric(
                                    ast::ExactNumberInfo::PrecisionAndScale(digits, 0),
                                ),
                                array: false,
                                format: None,
                            }
                        }
                        Some(NumericLiteral::Plain(p)) => v.value = ast::Value::Number(p, false),
                        Some(NumericLiteral::TooWide) => {
                            *e = ast::Expr::Cast {
                                kind: ast::CastKind::DoubleColon,
                                expr: Box::new(ast::Expr::value(ast::Value::SingleQuotedString(
                                    n.clone(),
                                ))),
                                data_type: ast::DataType::DoublePrecision,
                                array: false,
                                format: None,
                            }
                        }
                        None => {}
                    }
                }
            }
            // interval literals in Postgres' syntax, handed on in one DataFusion reads
            ast::Expr::Interval(iv) if iv.leading_field.is_none() && iv.last_field.is_none() => {
                canonical_interval(&mut iv.value)
            }
            ast::Expr::Cast {
                expr,
                data_type: ast::DataType::Interval { fields: None, .. },
                ..
            } => canonical_interval(expr),
            ast::Expr::Cast { data_type, .. } => {
                microsecond_timestamps(data_type);
                oid_as_uint32(data_type);
            }
            ast::Expr::TypedString(ts) => microsecond_timestamps(&mut ts.data_type),
            // sign(x) is DataFusion's signum (the column is still named `sign`: handler::eval)
            ast::Expr::Function(f)
                if f.name.0.len() == 1
                    && f.name.0[0].as_ident().is_some_and(|id| {
                        id.quote_style.is_none() && id.value.eq_ignore_ascii_case("sign")
                    })
                    && matches!(&f.args, ast::FunctionArguments::List(l) if l.args.len() == 1) =>
            {
                f.name = ast::ObjectName::from(vec![ast::Ident::new("signum")]);
            }
            // LOCALTIMESTAMP and LOCALTIME: the session's wall clock at the transaction's
            // start, without a zone
            ast::Expr::Function(f)
                if matches!(f.args, ast::FunctionArguments::None)
                    && f.name.0.len() == 1
                    && f.name.0[0].as_ident().is_some_and(|id| {
                        id.value.eq_ignore_ascii_case("localtimestamp")
                            || id.value.eq_ignore_ascii_case("localtime")
                    }) =>
            {
                let time = f.name.to_string().eq_ignore_ascii_case("localtime");
                let data_type = if time {
                    ast::DataType::Time(None, ast::TimezoneInfo::None)
                } else {
                    ast::DataType::Timestamp(Some(6), ast::TimezoneInfo::None)
                };
                *e = ast::Expr::Cast {
                    kind: ast::CastKind::DoubleColon,
                    expr: Box::new(call("now", vec![])),
                    data_type,
                    array: false,
                    format: None,
                };
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = ast::visit_expressions_mut(stmt, |e| {
        if let ast::Expr::Cast {
            expr, data_type, ..
        } = e
        {
            if let Some(f) = text_type_cast(data_type, expr) {
                let arg = ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr((**expr).clone()));
                *e = call(f, vec![arg]);
            } else if let Some(reg) = reg_target(data_type) {
                let f = match reg {
                    Reg::Type => REGTYPE,
                    Reg::Class => REGCLASS,
                };
                let arg = ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr((**expr).clone()));
                *e = call(f, vec![arg]);
            } else if is_text_type(data_type)
                && let ast::Expr::Function(inner) = expr.as_ref()
                && let Some(name) = inner.name.0.last().and_then(|p| p.as_ident())
                && (name.value == REGTYPE || name.value == REGCLASS)
                && let ast::FunctionArguments::List(list) = &inner.args
            {
                let f = if name.value == REGTYPE {
                    REGTYPE_NAME
                } else {
                    REGCLASS_NAME
                };
                *e = call(f, list.args.clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_literals_take_postgres_scale_without_an_exponent() {
        use NumericLiteral::*;
        let plain = |s: &str| Some(Plain(s.to_string()));
        assert_eq!(numeric_literal("1e3"), plain("1000"));
        assert_eq!(numeric_literal("1.50e1"), plain("15.0"));
        assert_eq!(numeric_literal("1.5e-3"), plain("0.0015"));
        assert_eq!(numeric_literal("1E+2"), plain("100"));
        assert_eq!(numeric_literal("0e5"), plain("0"));
        assert_eq!(numeric_literal("1e-20"), plain("0.00000000000000000001"));
        assert_eq!(numeric_literal("1_000.5e1"), plain("10005"));
        // already what DataFusion reads as numeric
        assert_eq!(numeric_literal("1.50"), None);
        assert_eq!(numeric_literal("42"), None);
        // past 38 digits
        assert_eq!(numeric_literal("1e300"), Some(TooWide));
        assert_eq!(numeric_literal("1e-40"), Some(TooWide));
        assert_eq!(
            numeric_literal("3.14159265358979323846264338327950288419716939937510"),
            Some(TooWide)
        );
        assert_eq!(numeric_literal(&"9".repeat(38)), None);
        assert_eq!(numeric_literal(&"9".repeat(39)), Some(TooWide));
    }

    /// Every column type is in the table, under the oid and name the wire layer uses.
    #[test]
    fn every_column_type_is_listed_consistently() {
        use SqlType::*;
        for t in [
            Bool,
            Int2,
            Int4,
            Int8,
            Float4,
            Float8,
            Numeric(None),
            Text,
            Varchar(None),
            Char(1),
            Bytea,
            Date,
            Timestamp,
            Timestamptz,
            Uuid,
            Json,
            Jsonb,
            Interval,
        ] {
            let listed = by_oid(t.pg_oid()).unwrap_or_else(|| panic!("{t} not listed"));
            assert_eq!(listed.typname, t.typname(), "{t}");
        }
    }

    #[test]
    fn type_names_and_format_type_follow_postgres() {
        assert_eq!(type_oid_by_name("int4"), Some(23));
        assert_eq!(type_oid_by_name("INTEGER"), Some(23));
        assert_eq!(type_oid_by_name("pg_catalog.varchar(20)"), Some(1043));
        assert_eq!(type_oid_by_name("timestamp with time zone"), Some(1184));
        assert_eq!(type_oid_by_name("text[]"), Some(1009));
        assert_eq!(type_oid_by_name("hstore"), None);
        assert_eq!(format_type(23, None), "integer");
        assert_eq!(format_type(1043, Some(24)), "character varying(20)");
        assert_eq!(format_type(1043, Some(-1)), "character varying");
        assert_eq!(format_type(1042, Some(9)), "character(5)");
        assert_eq!(format_type(1042, None), "bpchar");
        assert_eq!(
            format_type(1700, Some(typmod(SqlType::Numeric(Some((12, 3)))))),
            "numeric(12,3)"
        );
        assert_eq!(format_type(1007, None), "integer[]");
        assert_eq!(format_type(1114, Some(-1)), "timestamp without time zone");
        assert_eq!(format_type(99999, None), "???");
    }
}
