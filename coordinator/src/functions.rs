//! Postgres' session and system information functions, registered per session:
//! `version()`, `orochi_version()`, `current_schema()`, `current_schemas(bool)`,
//! `current_database()`, `current_user`, `session_user`, `pg_backend_pid()`.
//!
//! Their values come from the session (user, database, search path, backend pid); the session
//! re-registers them when one of those changes ([`crate::session::Session::refresh_functions`]).
//! Function names qualified with `pg_catalog.` resolve to the same functions
//! ([`strip_pg_catalog_qualifier`]). `has_table_privilege`/`has_schema_privilege` are in
//! [`privileges`], the relation size functions in [`sizes`].

pub mod cluster;
mod datetime;
pub mod numeric;
mod privileges;
pub mod sizes;
pub mod storage;
mod to_char;

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ListArray, StringArray};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast;

use crate::catalog::Catalog;
use crate::handler::utility::SERVER_VERSION;

/// A zero-argument function returning a value fixed for the session (until re-registered).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionConstant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for SessionConstant {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn constant(name: &'static str, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(SessionConstant {
        name,
        value,
        signature: Signature::exact(vec![], Volatility::Stable),
    })
}

/// `current_schemas(include_implicit boolean)`: the search path, with `pg_catalog` first when
/// asked for the implicit schemas.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSchemas {
    search_path: Vec<String>,
    signature: Signature,
}

impl ScalarUDFImpl for CurrentSchemas {
    fn name(&self) -> &str {
        "current_schemas"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Utf8,
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let list = |implicit: bool| -> ScalarValue {
            let mut names: Vec<&str> = Vec::new();
            if implicit {
                names.push("pg_catalog");
            }
            names.extend(self.search_path.iter().map(String::as_str));
            let values: ArrayRef = Arc::new(StringArray::from(names));
            ScalarValue::List(Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(DataType::Utf8, true)),
                arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
                values,
                None,
            )))
        };
        match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Boolean(Some(b))) => {
                Ok(ColumnarValue::Scalar(list(*b)))
            }
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::try_from(
                &self.return_type(&[])?,
            )?)),
            ColumnarValue::Array(a) => {
                let flags = a
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Plan(
                            "current_schemas expects a boolean".into(),
                        )
                    })?;
                let values = (0..flags.len())
                    .map(|i| {
                        if flags.is_valid(i) {
                            list(flags.value(i))
                        } else {
                            ScalarValue::try_from(&self.return_type(&[]).unwrap_or(DataType::Null))
                                .unwrap_or(ScalarValue::Null)
                        }
                    })
                    .collect::<Vec<_>>();
                Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
            }
        }
    }
}

/// A one-argument function from an oid or code to its name: `pg_get_userbyid(oid)` (the
/// role's name, from the catalog) and `pg_encoding_to_char(int)` (we only speak UTF8,
/// Postgres' encoding 6).
struct NameOf {
    name: &'static str,
    lookup: Arc<dyn Fn(u32) -> String + Send + Sync>,
    signature: Signature,
}

impl std::fmt::Debug for NameOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameOf").field("name", &self.name).finish()
    }
}

// identity is the function's name (function pointers do not compare meaningfully)
impl PartialEq for NameOf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for NameOf {}
impl std::hash::Hash for NameOf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for NameOf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_oids(&args, |oid| ScalarValue::Utf8(Some((self.lookup)(oid))))
    }
}

fn encoding_name(code: u32) -> String {
    if code == 6 { "UTF8" } else { "" }.to_string()
}

/// `nextval('name')` (or a regclass): the sequence's next value, one per row. Only its owner
/// (or a superuser) may: there are no GRANTs on sequences yet.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NextVal {
    asker: privileges::Asker,
    signature: Signature,
}

impl NextVal {
    /// The sequence an argument names, once its privilege is checked.
    fn sequence(&self, arg: &ScalarValue) -> orochi_common::error::DbResult<(String, String)> {
        use orochi_common::error::{DbError, SqlState};
        let catalog = &self.asker.catalog;
        let missing = |n: &str| {
            DbError::new(
                SqlState::UndefinedTable,
                format!("relation \"{n}\" does not exist"),
            )
        };
        let (schema, name) = match arg {
            ScalarValue::Utf8(Some(n))
            | ScalarValue::LargeUtf8(Some(n))
            | ScalarValue::Utf8View(Some(n)) => {
                let parts: Vec<String> = n
                    .split('.')
                    .map(|p| {
                        if p.len() >= 2 && p.starts_with('"') && p.ends_with('"') {
                            p[1..p.len() - 1].to_string()
                        } else {
                            p.trim().to_ascii_lowercase()
                        }
                    })
                    .collect();
                match parts.as_slice() {
                    [schema, seq] => (schema.clone(), seq.clone()),
                    [seq] => self
                        .asker
                        .search_path
                        .iter()
                        .find(|s| catalog.sequence_exists(s, seq))
                        .map(|s| (s.clone(), seq.clone()))
                        .ok_or_else(|| missing(n))?,
                    _ => return Err(missing(n)),
                }
            }
            other => {
                let oid = match other.cast_to(&DataType::Int64) {
                    Ok(ScalarValue::Int64(Some(o))) => o as u32,
                    _ => return Err(missing(&other.to_string())),
                };
                crate::system::sequence_by_oid(catalog, oid)
                    .ok_or_else(|| missing(&oid.to_string()))?
            }
        };
        let def = catalog
            .sequence(&schema, &name)
            .ok_or_else(|| missing(&name))?;
        let owner = match (&def.owner, &def.owned_by) {
            (Some(o), _) => o.clone(),
            (None, Some((table, _))) => catalog.table_acl(*table).owner,
            (None, None) => crate::privilege::BOOTSTRAP_SUPERUSER.to_string(),
        };
        let access = crate::privilege::Access::of(catalog, &self.asker.role);
        if !access.superuser && !access.owns(&crate::privilege::Acl::owned_by(&owner)) {
            return Err(DbError::new(
                SqlState::InsufficientPrivilege,
                format!("permission denied for sequence {name}"),
            ));
        }
        Ok((schema, name))
    }
}

impl ScalarUDFImpl for NextVal {
    fn name(&self) -> &str {
        "nextval"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = args.number_rows.max(1);
        let mut out = arrow::array::Int64Builder::with_capacity(rows);
        // resolved (and checked) once per distinct argument, not once per row
        let mut last: Option<(ScalarValue, (String, String))> = None;
        for i in 0..rows {
            let a = &arrays[0];
            let v = ScalarValue::try_from_array(a, if a.len() == 1 { 0 } else { i })?;
            if v.is_null() {
                out.append_null();
                continue;
            }
            if last.as_ref().is_none_or(|(arg, _)| *arg != v) {
                let seq = self.sequence(&v).map_err(crate::error::db_to_df)?;
                last = Some((v, seq));
            }
            let (_, (schema, name)) = last.as_ref().expect("resolved above");
            let next = self.asker.catalog.nextval(schema, name);
            out.append_value(next.map_err(crate::error::db_to_df)?);
        }
        let array: arrow::array::ArrayRef = Arc::new(out.finish());
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
            && rows == 1
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// `pg_table_is_visible(oid)`: whether the relation is found first by its bare name through
/// the search path (`pg_catalog` first), as Postgres defines it.
struct TableIsVisible {
    catalog: Arc<Catalog>,
    search_path: Vec<String>,
    signature: Signature,
}

impl std::fmt::Debug for TableIsVisible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIsVisible")
            .field("search_path", &self.search_path)
            .finish()
    }
}

impl PartialEq for TableIsVisible {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.catalog, &other.catalog) && self.search_path == other.search_path
    }
}
impl Eq for TableIsVisible {}
impl std::hash::Hash for TableIsVisible {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.search_path.hash(state);
    }
}

impl ScalarUDFImpl for TableIsVisible {
    fn name(&self) -> &str {
        "pg_table_is_visible"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use crate::system::{relation_name, relation_oid, tables_by_id};
        let tables = tables_by_id(&self.catalog);
        map_oids(&args, |oid| {
            let name = relation_name(&tables, oid)
                .map(|(_, name)| name)
                .or_else(|| crate::system::sequence_by_oid(&self.catalog, oid).map(|(_, n)| n));
            let visible = name.is_some_and(|name| {
                relation_oid(&self.catalog, &self.search_path, &name) == Some(oid)
            });
            ScalarValue::Boolean(Some(visible))
        })
    }
}

/// Applies `f` to each oid argument (NULL stays NULL).
fn map_oids(args: &ScalarFunctionArgs, f: impl Fn(u32) -> ScalarValue) -> Result<ColumnarValue> {
    map_ints(args, |n| f(n as u32))
}

/// Applies `f` to each value of the (integer) first argument, as an `i64`; NULL stays NULL
/// (of `f`'s result type).
fn map_ints(args: &ScalarFunctionArgs, f: impl Fn(i64) -> ScalarValue) -> Result<ColumnarValue> {
    let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
    let array = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
    let array = arrow::compute::cast(&array, &DataType::Int64)?;
    let ints = array
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("cast to Int64");
    let values: Vec<ScalarValue> = (0..ints.len())
        .map(|i| {
            if ints.is_null(i) {
                ScalarValue::try_from(&f(0).data_type()).unwrap_or(ScalarValue::Null)
            } else {
                f(ints.value(i))
            }
        })
        .collect();
    if scalar {
        Ok(ColumnarValue::Scalar(
            values.into_iter().next().unwrap_or(ScalarValue::Null),
        ))
    } else if values.is_empty() {
        // no rows (an empty catalog): an empty array of the result type
        Ok(ColumnarValue::Array(arrow::array::new_empty_array(
            &f(0).data_type(),
        )))
    } else {
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
    }
}

/// What the session functions report.
pub struct SessionInfo<'a> {
    /// The session user.
    pub user: &'a str,
    /// The current role.
    pub role: &'a str,
    pub database: &'a str,
    pub search_path: &'a [String],
    pub backend_pid: i32,
    pub catalog: &'a Arc<Catalog>,
}

/// The functions to (re-)register for a session.
pub fn session_functions(info: &SessionInfo<'_>) -> Vec<ScalarUDF> {
    let utf8 = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
    // relation names resolve through pg_catalog first, unless the search path places it
    let relation_search_path: Vec<String> = std::iter::once("pg_catalog".to_string())
        .chain(info.search_path.iter().cloned())
        .collect();
    let mut functions = vec![
        constant(
            "version",
            utf8(&format!(
                "PostgreSQL {SERVER_VERSION} (OrochiDB {}) on {}-linux, compiled by rustc, 64-bit",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH
            )),
        ),
        constant(
            "orochi_version",
            utf8(&format!("OrochiDB {}", env!("CARGO_PKG_VERSION"))),
        ),
        constant(
            "current_schema",
            info.search_path
                .first()
                .map(|s| utf8(s))
                .unwrap_or(ScalarValue::Utf8(None)),
        ),
        constant("current_database", utf8(info.database)),
        constant("current_user", utf8(info.role)),
        constant("session_user", utf8(info.user)),
        constant("current_role", utf8(info.role)),
        constant("pg_backend_pid", ScalarValue::Int32(Some(info.backend_pid))),
        ScalarUDF::new_from_impl(CurrentSchemas {
            search_path: info.search_path.to_vec(),
            signature: Signature::exact(vec![DataType::Boolean], Volatility::Stable),
        }),
        ScalarUDF::new_from_impl(NameOf {
            name: "pg_get_userbyid",
            lookup: {
                let catalog = info.catalog.clone();
                Arc::new(move |oid| crate::system::role_name(&catalog, oid))
            },
            signature: Signature::any(1, Volatility::Stable),
        }),
        ScalarUDF::new_from_impl(NameOf {
            name: "pg_encoding_to_char",
            lookup: Arc::new(encoding_name),
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(TableIsVisible {
            catalog: info.catalog.clone(),
            search_path: relation_search_path.clone(),
            signature: Signature::any(1, Volatility::Stable),
        }),
        ScalarUDF::new_from_impl(NextVal {
            asker: privileges::Asker {
                catalog: info.catalog.clone(),
                role: info.role.to_string(),
                search_path: relation_search_path.clone(),
            },
            signature: Signature::any(1, Volatility::Volatile),
        }),
    ];
    functions.extend(privileges::functions(
        info.catalog,
        info.role,
        &relation_search_path,
    ));
    functions.push(privileges::database_function(
        info.catalog,
        info.role,
        info.database,
    ));
    functions.extend(crate::pgtypes::functions(
        info.catalog,
        &relation_search_path,
    ));
    for name in [
        crate::system::GET_INDEXDEF,
        crate::system::GET_CONSTRAINTDEF,
    ] {
        functions.push(ScalarUDF::new_from_impl(
            crate::system::ObjectDefinition::new(
                name,
                info.catalog.clone(),
                relation_search_path.clone(),
            ),
        ));
    }
    functions
}

/// `pg_catalog.count(x)` → `count(x)`: every function we have lives in `pg_catalog`, which is
/// what Postgres clients (pgbench, psql, drivers) qualify built-ins with.
///
/// Also: bare `current_schema` (a reserved word in Postgres, called without parentheses like
/// `current_user`) becomes the function call; `a OPERATOR(pg_catalog.~) b` (psql's spelling)
/// becomes `a ~ b`; `COLLATE "default"` / `"C"` / `pg_catalog.default` is dropped (text
/// compares by bytes here, which is what the C collation means, and the default).
pub fn strip_pg_catalog_qualifier(stmt: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(stmt, |e| {
        if let ast::Expr::Collate { expr, collation } = e
            && collation
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| matches!(i.value.as_str(), "default" | "C" | "POSIX"))
        {
            *e = (**expr).clone();
        }
        if let ast::Expr::BinaryOp { op, .. } = e
            && let ast::BinaryOperator::PGCustomBinaryOperator(parts) = op
            && let Some(symbol) = parts.last()
            && (parts.len() == 1 || parts[0] == "pg_catalog")
        {
            let plain = match symbol.as_str() {
                "~" => Some(ast::BinaryOperator::PGRegexMatch),
                "~*" => Some(ast::BinaryOperator::PGRegexIMatch),
                "!~" => Some(ast::BinaryOperator::PGRegexNotMatch),
                "!~*" => Some(ast::BinaryOperator::PGRegexNotIMatch),
                "=" => Some(ast::BinaryOperator::Eq),
                "<>" => Some(ast::BinaryOperator::NotEq),
                "<" => Some(ast::BinaryOperator::Lt),
                "<=" => Some(ast::BinaryOperator::LtEq),
                ">" => Some(ast::BinaryOperator::Gt),
                ">=" => Some(ast::BinaryOperator::GtEq),
                "||" => Some(ast::BinaryOperator::StringConcat),
                _ => None,
            };
            if let Some(plain) = plain {
                *op = plain;
            }
        }
        if let ast::Expr::Identifier(i) = e
            && i.quote_style.is_none()
            && i.value.eq_ignore_ascii_case("current_schema")
        {
            *e = ast::Expr::Function(ast::Function {
                name: ast::ObjectName::from(vec![ast::Ident::new("current_schema")]),
                uses_odbc_syntax: false,
                parameters: ast::FunctionArguments::None,
                args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![],
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
        }
        if let ast::Expr::Function(f) = e
            && f.name.0.len() == 2
            && f.name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog"))
        {
            f.name.0.remove(0);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `pg_cancel_backend(pid)`: cancels the statement another backend is running, as a
/// CancelRequest from its client would (57014 there); true if the backend exists.
pub struct CancelBackend {
    instance: Arc<crate::session::Instance>,
    signature: Signature,
}

impl CancelBackend {
    pub fn new(instance: Arc<crate::session::Instance>) -> Self {
        CancelBackend {
            instance,
            signature: Signature::any(1, Volatility::Volatile),
        }
    }
}

impl std::fmt::Debug for CancelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pg_cancel_backend")
    }
}
impl PartialEq for CancelBackend {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.instance, &o.instance)
    }
}
impl Eq for CancelBackend {}
impl std::hash::Hash for CancelBackend {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        "pg_cancel_backend".hash(h);
    }
}

impl ScalarUDFImpl for CancelBackend {
    fn name(&self) -> &str {
        "pg_cancel_backend"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let pids = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let pids = arrow::compute::cast(&pids, &DataType::Int64)?;
        let pids = pids
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let out: arrow::array::BooleanArray = (0..pids.len())
            .map(|i| {
                (!arrow::array::Array::is_null(pids, i))
                    .then(|| self.instance.cancel_backend(pids.value(i) as i32))
            })
            .collect();
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
    }
}

/// `obj_description`, `col_description`, `shobj_description`: NULL, since nothing can carry a
/// comment yet (no COMMENT ON).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoComment {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for NoComment {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

/// `pg_size_pretty(bigint)`, with Postgres' units and rounding: bytes below 10 kB, then kB,
/// MB, GB, TB, PB, each rounded half away from zero and kept below 20 × 1024 of the unit.
pub fn size_pretty(size: i64) -> String {
    // (name, limit, half-rounded, bits)
    const UNITS: &[(&str, i64, bool, u32)] = &[
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    let half_rounded = |x: i64| (x + if x > 0 { 1 } else { -1 }) / 2;
    let mut size = size;
    for (i, &(name, limit, round, bits)) in UNITS.iter().enumerate() {
        let next = UNITS.get(i + 1);
        if next.is_none() || size.abs() < limit {
            if round {
                size = half_rounded(size);
            }
            return format!("{size} {name}");
        }
        let (_, _, next_round, next_bits) = next.copied().expect("checked above");
        let shift = next_bits - bits - u32::from(next_round) + u32::from(round);
        size /= 1i64 << shift;
    }
    unreachable!("the last unit always matches")
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_ints(&args, |n| ScalarValue::Utf8(Some(size_pretty(n))))
    }
}

/// `create_distributed_table` and `create_reference_table` run as whole statements
/// (handler/distribution.rs); these let a statement calling them be planned (Describe in the
/// extended protocol) and refuse any other use.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PlacementFunction {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for PlacementFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(crate::error::db_to_df(orochi_common::error::DbError::new(
            orochi_common::error::SqlState::FeatureNotSupported,
            format!(
                "{} must be called on its own: SELECT {}(…)",
                self.name, self.name
            ),
        )))
    }
}

/// Catalog functions that need no session state.
pub fn stateless_functions() -> Vec<ScalarUDF> {
    let mut out: Vec<ScalarUDF> = ["obj_description", "col_description", "shobj_description"]
        .into_iter()
        .map(|name| {
            ScalarUDF::new_from_impl(NoComment {
                name,
                signature: Signature::variadic_any(Volatility::Stable),
            })
        })
        .collect();
    for name in [
        crate::handler::distribution::CREATE_DISTRIBUTED_TABLE,
        crate::handler::distribution::CREATE_REFERENCE_TABLE,
    ] {
        out.push(ScalarUDF::new_from_impl(PlacementFunction {
            name,
            signature: Signature::variadic_any(Volatility::Volatile),
        }));
    }
    out.push(to_char::udf());
    for (name, result) in [
        ("pg_get_function_result", true),
        ("pg_get_function_arguments", false),
        ("pg_get_function_identity_arguments", false),
    ] {
        out.push(ScalarUDF::new_from_impl(DescribeFunction {
            name,
            result,
            signature: Signature::any(1, Volatility::Stable),
        }));
    }
    out.push(ScalarUDF::new_from_impl(FunctionIsVisible {
        signature: Signature::any(1, Volatility::Stable),
    }));
    out.extend(datetime::udfs());
    out.push(ScalarUDF::new_from_impl(PgTypeof {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    out.push(ScalarUDF::new_from_impl(SizePretty {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    out.push(
        datafusion::logical_expr::async_udf::AsyncScalarUDF::new(Arc::new(PgSleep {
            signature: Signature::exact(vec![DataType::Float64], Volatility::Volatile),
        }))
        .into_scalar_udf(),
    );
    out
}

/// `pg_get_function_result(oid)` and the like: a function of `pg_proc` described (NULL for
/// an oid that is none).
#[derive(Debug, PartialEq, Eq, Hash)]
struct DescribeFunction {
    name: &'static str,
    /// The result type (else the arguments).
    result: bool,
    signature: Signature,
}

impl ScalarUDFImpl for DescribeFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_oids(&args, |oid| {
            ScalarValue::Utf8(if self.result {
                crate::procs::result_of(oid)
            } else {
                crate::procs::arguments_of(oid)
            })
        })
    }
}

/// `pg_function_is_visible(oid)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FunctionIsVisible {
    signature: Signature,
}

impl ScalarUDFImpl for FunctionIsVisible {
    fn name(&self) -> &str {
        "pg_function_is_visible"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_oids(&args, |oid| {
            ScalarValue::Boolean(Some(crate::procs::is_visible(oid)))
        })
    }
}

/// `pg_typeof(any)`: the name of the type its argument has here (as it would be described to
/// a client). Numeric literals are `double precision` here, `numeric` in Postgres.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    signature: Signature,
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let field = &args.arg_fields[0];
        let name = if field.data_type() == &DataType::Null {
            "unknown".to_string()
        } else {
            crate::pgtypes::regtype_name(crate::pgwire::encode::pg_type(field).oid())
        };
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// `pg_sleep(seconds)`: waits without holding a thread (an async function), once per row as
/// Postgres does; cancel and `statement_timeout` interrupt it like any query. Returns what
/// Postgres' `void` prints: an empty string.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgSleep {
    signature: Signature,
}

impl ScalarUDFImpl for PgSleep {
    fn name(&self) -> &str {
        "pg_sleep"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        datafusion::common::internal_err!("pg_sleep is evaluated asynchronously")
    }
}

#[async_trait::async_trait]
impl datafusion::logical_expr::async_udf::AsyncScalarUDFImpl for PgSleep {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let seconds = ColumnarValue::values_to_arrays(&args.args)?.remove(0);
        let seconds = seconds
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .expect("signature is float8");
        let total: f64 = (0..rows.max(1))
            .map(|i| {
                let i = if seconds.len() == 1 { 0 } else { i };
                if seconds.is_null(i) {
                    0.0
                } else {
                    seconds.value(i).max(0.0)
                }
            })
            .sum();
        if total.is_finite() && total > 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(total.min(1e9))).await;
        }
        // `void` prints as an empty string
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(vec![
            "";
            rows
        ]))))
    }
}

/// Postgres names the one column of a scalar set-returning function in FROM after its alias
/// (`FROM generate_series(1, 3) g` has column `g`), or after the function when there is none;
/// DataFusion calls it `value`. Gives such table functions that column alias.
pub fn name_scalar_table_functions(stmt: &mut ast::Statement) {
    struct Namer;
    impl ast::VisitorMut for Namer {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &mut ast::TableFactor) -> ControlFlow<()> {
            let (function, alias) = match t {
                ast::TableFactor::Table {
                    name,
                    args: Some(_),
                    alias,
                    ..
                } => {
                    let Some(f) = name.0.last().and_then(|p| p.as_ident()) else {
                        return ControlFlow::Continue(());
                    };
                    if !["generate_series", "range"]
                        .iter()
                        .any(|n| f.value.eq_ignore_ascii_case(n))
                    {
                        return ControlFlow::Continue(());
                    }
                    (f.value.to_lowercase(), alias)
                }
                ast::TableFactor::UNNEST {
                    alias,
                    array_exprs,
                    with_offset: false,
                    ..
                } if array_exprs.len() == 1 => ("unnest".to_string(), alias),
                _ => return ControlFlow::Continue(()),
            };
            match alias {
                Some(a) if a.columns.is_empty() => {
                    a.columns = vec![ast::TableAliasColumnDef::from_name(a.name.value.clone())];
                }
                Some(_) => {}
                None => {
                    *alias = Some(ast::TableAlias {
                        explicit: false,
                        name: ast::Ident::new(function.clone()),
                        columns: vec![ast::TableAliasColumnDef::from_name(function)],
                        at: None,
                    });
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(stmt, &mut Namer);
}

/// Puts the values of bound parameters into the arguments of table functions
/// (`generate_series(1, $1)`): those are evaluated while planning, before parameters are
/// bound. Numbers, strings, booleans and NULL; other values stay parameters. `None`: every
/// such parameter becomes NULL (to describe the statement before values are known: the
/// result's columns do not depend on them).
pub fn bind_table_function_args(query: &mut ast::Query, params: Option<&[ScalarValue]>) {
    struct Binder<'a>(Option<&'a [ScalarValue]>);
    impl ast::VisitorMut for Binder<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &mut ast::TableFactor) -> ControlFlow<()> {
            let ast::TableFactor::Table {
                args: Some(args), ..
            } = t
            else {
                return ControlFlow::Continue(());
            };
            for arg in &mut args.args {
                let _ = ast::visit_expressions_mut(arg, |e| {
                    if let ast::Expr::Value(v) = e
                        && let ast::Value::Placeholder(p) = &v.value
                        && let Ok(i) = p.trim_start_matches('$').parse::<usize>()
                        && let Some(value) = match self.0 {
                            Some(params) => i.checked_sub(1).and_then(|i| params.get(i)),
                            None => Some(&ScalarValue::Null),
                        }
                        && let Some(literal) = literal_of(value)
                    {
                        *e = literal;
                    }
                    ControlFlow::<()>::Continue(())
                });
            }
            ControlFlow::Continue(())
        }
    }
    fn literal_of(v: &ScalarValue) -> Option<ast::Expr> {
        let value = match v {
            _ if v.is_null() => ast::Value::Null,
            ScalarValue::Boolean(Some(b)) => ast::Value::Boolean(*b),
            ScalarValue::Int8(_)
            | ScalarValue::Int16(_)
            | ScalarValue::Int32(_)
            | ScalarValue::Int64(_)
            | ScalarValue::UInt8(_)
            | ScalarValue::UInt16(_)
            | ScalarValue::UInt32(_)
            | ScalarValue::UInt64(_)
            | ScalarValue::Float32(_)
            | ScalarValue::Float64(_) => ast::Value::Number(v.to_string(), false),
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
                ast::Value::SingleQuotedString(s.clone())
            }
            _ => return None,
        };
        Some(ast::Expr::value(value))
    }
    let _ = ast::VisitMut::visit(query, &mut Binder(params));
}

/// `generate_series`/`range` whose arguments are constant expressions (`1 + 99`, `'5'::int`,
/// `now() - interval '1 day'`): folded to literals first, as Postgres evaluates them before
/// the call; DataFusion's own functions accept only literals, and only bigint ones. An
/// argument that is not constant (a column) still fails there.
#[derive(Debug)]
pub struct FoldedArgs(pub Arc<dyn datafusion::catalog::TableFunctionImpl>);

impl datafusion::catalog::TableFunctionImpl for FoldedArgs {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        use datafusion::logical_expr::Expr;
        use datafusion::logical_expr::simplify::SimplifyContext;
        use datafusion::optimizer::simplify_expressions::ExprSimplifier;
        let session = args.session();
        let mut context = SimplifyContext::builder()
            .with_config_options(Arc::new(session.config_options().clone()));
        if let Some(t) = session.execution_props().query_execution_start_time {
            context = context.with_query_execution_start_time(Some(t));
        }
        let simplifier = ExprSimplifier::new(context.build());
        let exprs = args
            .exprs()
            .iter()
            .map(|e| {
                let e = simplifier.simplify(e.clone()).unwrap_or_else(|_| e.clone());
                Ok(match e {
                    // a typed NULL: DataFusion's functions take only an untyped one
                    Expr::Literal(v, m) if v.is_null() => Expr::Literal(ScalarValue::Null, m),
                    Expr::Literal(v, m)
                        if v.data_type().is_integer() && v.data_type() != DataType::Int64 =>
                    {
                        Expr::Literal(v.cast_to(&DataType::Int64)?, m)
                    }
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.0
            .call_with_args(datafusion::catalog::TableFunctionArgs::new(&exprs, session))
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn size_pretty_matches_postgres() {
        // values and results from PostgreSQL 15's pg_size_pretty
        for (n, want) in [
            (0, "0 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (8192 * 1024, "8192 kB"),
            (20 * 1024 * 1024 - 1, "20 MB"),
            (20 * 1024 * 1024, "20 MB"),
            (1_000_000_000_000, "931 GB"),
            (-10240, "-10 kB"),
        ] {
            assert_eq!(super::size_pretty(n), want, "{n}");
        }
    }
}
