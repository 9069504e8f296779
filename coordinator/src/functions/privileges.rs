//! `has_table_privilege`, `has_schema_privilege` and `pg_has_role`, answered from the same ACLs the
//! statements are checked against ([`crate::privilege`]).
//!
//! Forms: `(object, privileges)` for the current role, `(role, object, privileges)` with the
//! role by name or oid; the object by name (search path for tables, `schema.table` too) or
//! oid; privileges as Postgres spells them, comma-separated, each optionally
//! `WITH GRANT OPTION`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanBuilder};
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use orochi_common::error::{DbError, DbResult, SqlState};

use crate::catalog::Catalog;
use crate::error::db_to_df;
use crate::privilege::{Acl, ObjectKind, PrivSet, Privilege};

#[derive(Debug, PartialEq, Eq, Hash)]
struct HasPrivilege {
    name: &'static str,
    kind: ObjectKind,
    columns: Columns,
    asker: Asker,
    signature: Signature,
}

/// The session a privilege function answers for: the catalog, the current role and the
/// search path. Two are the same function (for DataFusion) when role and path are.
#[derive(Clone)]
pub(crate) struct Asker {
    pub catalog: Arc<Catalog>,
    pub role: String,
    pub search_path: Vec<String>,
}

impl std::fmt::Debug for Asker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asker")
            .field("role", &self.role)
            .field("search_path", &self.search_path)
            .finish()
    }
}

impl PartialEq for Asker {
    fn eq(&self, o: &Self) -> bool {
        self.role == o.role && self.search_path == o.search_path
    }
}
impl Eq for Asker {}
impl std::hash::Hash for Asker {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.role.hash(state);
        self.search_path.hash(state);
    }
}

/// Which column arguments a table-privilege function takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Columns {
    /// None: `has_table_privilege` and the others.
    No,
    /// None, but only column privileges may be asked: `has_any_column_privilege`.
    Any,
    /// One, before the privileges: `has_column_privilege`.
    Named,
}

/// A text or oid argument's value in row `i` (`None`: NULL).
enum Arg {
    Name(String),
    Oid(u32),
}

fn arg_at(array: &ArrayRef, i: usize) -> Result<Option<Arg>> {
    if array.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let v = ScalarValue::try_from_array(array, i)?;
            Arg::Name(v.to_string())
        }
        _ => {
            let v = ScalarValue::try_from_array(array, i)?.cast_to(&DataType::Int64)?;
            match v {
                ScalarValue::Int64(Some(n)) => Arg::Oid(n as u32),
                _ => return Ok(None),
            }
        }
    }))
}

/// `SELECT, INSERT WITH GRANT OPTION` → (privileges, those asked with grant option).
fn parse_privileges(text: &str, kind: ObjectKind) -> DbResult<(PrivSet, PrivSet)> {
    let mut privs = Vec::new();
    let mut grantable = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let upper = item.to_ascii_uppercase();
        let (word, with_grant) = match upper.strip_suffix("WITH GRANT OPTION") {
            Some(w) => (w.trim().to_string(), true),
            None => (upper.clone(), false),
        };
        let p = Privilege::from_keyword(&word)
            .filter(|p| kind.privileges().contains(p))
            .ok_or_else(|| {
                DbError::new(
                    SqlState::InvalidParameterValue,
                    format!("unrecognized privilege type: \"{item}\""),
                )
            })?;
        privs.push(p);
        if with_grant {
            grantable.push(p);
        }
    }
    Ok((PrivSet::of(&privs), PrivSet::of(&grantable)))
}

/// A role argument, by name (`public` included) or oid, as the name of an existing role.
fn role_name(catalog: &Catalog, arg: Arg) -> DbResult<String> {
    match arg {
        Arg::Name(n) => {
            if n == "public" || catalog.role(&n).is_some() {
                Ok(n)
            } else {
                Err(DbError::new(
                    SqlState::UndefinedObject,
                    format!("role \"{n}\" does not exist"),
                ))
            }
        }
        Arg::Oid(oid) => catalog
            .roles()
            .into_iter()
            .find(|r| r.oid == oid)
            .map(|r| r.name)
            .ok_or_else(|| {
                DbError::new(
                    SqlState::UndefinedObject,
                    format!("role with OID {oid} does not exist"),
                )
            }),
    }
}

impl HasPrivilege {
    /// 42703 unless `table` has a column `column`.
    fn check_column(&self, table: Arg, column: &str) -> DbResult<()> {
        let def = match &table {
            Arg::Name(n) => match n.split_once('.') {
                Some((schema, t)) => self.asker.catalog.table(schema, t),
                None => self
                    .asker
                    .search_path
                    .iter()
                    .find_map(|s| self.asker.catalog.table(s, n)),
            },
            Arg::Oid(oid) => self
                .asker
                .catalog
                .all_tables()
                .into_iter()
                .find(|t| t.id == u64::from(*oid)),
        };
        // a missing table is reported by the privilege check itself
        let Some(def) = def else { return Ok(()) };
        if def
            .columns
            .iter()
            .any(|c| c.is_visible() && c.name == column)
        {
            return Ok(());
        }
        Err(DbError::new(
            SqlState::UndefinedColumn,
            format!(
                "column \"{column}\" of relation \"{}\" does not exist",
                def.name
            ),
        ))
    }

    /// The object's ACL.
    fn object(&self, arg: Arg) -> DbResult<Acl> {
        match self.kind {
            ObjectKind::Table => {
                let def = match &arg {
                    Arg::Name(n) => match n.split_once('.') {
                        Some((schema, table)) => self.asker.catalog.table(schema, table),
                        None => self
                            .asker
                            .search_path
                            .iter()
                            .find_map(|s| self.asker.catalog.table(s, n)),
                    },
                    Arg::Oid(oid) => self
                        .asker
                        .catalog
                        .all_tables()
                        .into_iter()
                        .find(|t| t.id == u64::from(*oid)),
                };
                let def = def.ok_or_else(|| {
                    DbError::new(
                        SqlState::UndefinedTable,
                        match &arg {
                            Arg::Name(n) => format!("relation \"{n}\" does not exist"),
                            Arg::Oid(o) => format!("relation with OID {o} does not exist"),
                        },
                    )
                })?;
                Ok(self.asker.catalog.table_acl(def.id))
            }
            ObjectKind::Sequence => {
                let found = match &arg {
                    Arg::Name(n) => match n.split_once('.') {
                        Some((schema, seq)) => self
                            .asker
                            .catalog
                            .sequence_exists(schema, seq)
                            .then(|| (schema.to_string(), seq.to_string())),
                        None => self
                            .asker
                            .search_path
                            .iter()
                            .find(|s| self.asker.catalog.sequence_exists(s, n))
                            .map(|s| (s.clone(), n.clone())),
                    },
                    Arg::Oid(oid) => crate::system::sequence_by_oid(&self.asker.catalog, *oid),
                };
                let (schema, name) = found.ok_or_else(|| {
                    DbError::new(
                        SqlState::UndefinedTable,
                        match &arg {
                            Arg::Name(n) => format!("relation \"{n}\" does not exist"),
                            Arg::Oid(o) => format!("relation with OID {o} does not exist"),
                        },
                    )
                })?;
                // a serial's or identity column's sequence is its table's owner's
                let owner = self
                    .asker
                    .catalog
                    .sequences()
                    .into_iter()
                    .find(|s| s.schema == schema && s.name == name)
                    .and_then(|s| s.owned_by)
                    .map_or(
                        crate::privilege::BOOTSTRAP_SUPERUSER.to_string(),
                        |(t, _)| self.asker.catalog.table_acl(t).owner,
                    );
                Ok(Acl::owned_by(&owner))
            }
            ObjectKind::Schema => {
                let name = match &arg {
                    Arg::Name(n) => self.asker.catalog.schema_exists(n).then(|| n.clone()),
                    Arg::Oid(oid) => self
                        .asker
                        .catalog
                        .schemas()
                        .into_iter()
                        .find(|s| crate::system::namespace_oid(s) == *oid),
                };
                let name = name.ok_or_else(|| {
                    DbError::new(
                        SqlState::InvalidSchemaName,
                        match &arg {
                            Arg::Name(n) => format!("schema \"{n}\" does not exist"),
                            Arg::Oid(o) => format!("schema with OID {o} does not exist"),
                        },
                    )
                })?;
                Ok(self.asker.catalog.schema_acl(&name))
            }
        }
    }

    fn answer(&self, role: String, object: Arg, privs: &str) -> DbResult<bool> {
        let (wanted, wanted_grant) = parse_privileges(privs, self.kind)?;
        if self.columns != Columns::No
            && !wanted
                .minus(PrivSet::of(&[
                    Privilege::Select,
                    Privilege::Insert,
                    Privilege::Update,
                    Privilege::References,
                ]))
                .is_empty()
        {
            return Err(DbError::new(
                SqlState::InvalidParameterValue,
                format!("unrecognized privilege type: \"{privs}\""),
            ));
        }
        let acl = self.object(object)?;
        if self.asker.catalog.is_superuser(&role) {
            return Ok(true);
        }
        let access = crate::privilege::Access::of(&self.asker.catalog, &role);
        let (held, grantable) = access.held(&acl, self.kind);
        let owner = access.owns(&acl);
        // any one of the listed privileges suffices, as in Postgres
        let ok = self.kind.privileges().iter().any(|&p| {
            PrivSet::of(&[p]).intersect(wanted) != PrivSet::default()
                && held.contains(p)
                && (!wanted_grant.contains(p) || owner || grantable.contains(p))
        });
        Ok(ok)
    }
}

/// The body both inquiry functions share: `(object, privileges)` or `(role, object,
/// privileges)`, scalars or columns, NULL in, NULL out; `answer` gets the role (`None`: the
/// current one), the object and the privilege list of a row.
fn inquire(
    name: &str,
    args: ScalarFunctionArgs,
    answer: impl Fn(Option<Arg>, Arg, &str) -> DbResult<bool>,
) -> Result<ColumnarValue> {
    let scalar = args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let (role_arg, rest) = match arrays.len() {
        2 => (None, &arrays[..]),
        3 => (Some(&arrays[0]), &arrays[1..]),
        n => {
            return Err(db_to_df(DbError::new(
                SqlState::UndefinedFunction,
                format!("function {name}() does not take {n} arguments"),
            )));
        }
    };
    let rows = args
        .number_rows
        .max(arrays.iter().map(|a| a.len()).max().unwrap_or(0));
    let mut out = BooleanBuilder::with_capacity(rows);
    for i in 0..rows {
        let at = |a: &ArrayRef| arg_at(a, if a.len() == 1 { 0 } else { i });
        let role = match role_arg {
            None => None,
            Some(a) => match at(a)? {
                None => {
                    out.append_null();
                    continue;
                }
                some => some,
            },
        };
        match (at(&rest[0])?, at(&rest[1])?) {
            (Some(object), Some(Arg::Name(privs))) => {
                out.append_value(answer(role, object, &privs).map_err(db_to_df)?)
            }
            _ => out.append_null(),
        }
    }
    let array: ArrayRef = Arc::new(out.finish());
    if scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

impl ScalarUDFImpl for HasPrivilege {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.columns == Columns::Named {
            // ([role,] table, column, privileges): the column must exist; without column
            // privileges the answer is the table's
            let n = args.args.len();
            if !(3..=4).contains(&n) {
                return Err(db_to_df(DbError::new(
                    SqlState::UndefinedFunction,
                    format!("function has_column_privilege() does not take {n} arguments"),
                )));
            }
            let arrays = ColumnarValue::values_to_arrays(&args.args)?;
            let (tables, columns) = (&arrays[n - 3], &arrays[n - 2]);
            for i in 0..tables.len().max(columns.len()) {
                let at = |a: &ArrayRef| arg_at(a, if a.len() == 1 { 0 } else { i });
                if let (Some(table), Some(Arg::Name(column))) = (at(tables)?, at(columns)?) {
                    self.check_column(table, &column).map_err(db_to_df)?;
                }
            }
            args.args.remove(n - 2);
        }
        inquire(self.name, args, |role, object, privs| {
            let role = match role {
                None => self.asker.role.clone(),
                Some(arg) => role_name(&self.asker.catalog, arg)?,
            };
            self.answer(role, object, privs)
        })
    }
}

/// `pg_has_role([role,] role, privileges)`: MEMBER (a member, directly or through others),
/// USAGE (has its privileges: membership through roles that inherit), each optionally
/// `WITH ADMIN OPTION` (or `WITH GRANT OPTION`); a superuser has them all.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgHasRole {
    asker: Asker,
    signature: Signature,
}

impl PgHasRole {
    fn answer(&self, role: &str, target: &str, privs: &str) -> DbResult<bool> {
        let catalog = &self.asker.catalog;
        let mut any = false;
        for p in privs.split(',') {
            let p = p.trim().to_ascii_lowercase();
            let (base, admin) = match p
                .strip_suffix("with admin option")
                .or_else(|| p.strip_suffix("with grant option"))
            {
                Some(b) => (b.trim_end().to_string(), true),
                None => (p.clone(), false),
            };
            let inheriting = match base.as_str() {
                "member" => false,
                "usage" => true,
                _ => {
                    return Err(DbError::new(
                        SqlState::InvalidParameterValue,
                        format!("unrecognized privilege type: \"{}\"", p),
                    ));
                }
            };
            let ok = catalog.is_superuser(role)
                || if admin {
                    catalog.roles_of(role, false).iter().any(|r| {
                        catalog
                            .membership(target, r)
                            .is_some_and(|m| m.admin_option)
                    })
                } else {
                    catalog
                        .roles_of(role, inheriting)
                        .iter()
                        .any(|r| r == target)
                };
            any |= ok;
        }
        Ok(any)
    }
}

impl ScalarUDFImpl for PgHasRole {
    fn name(&self) -> &str {
        "pg_has_role"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        inquire("pg_has_role", args, |role, target, privs| {
            let role = match role {
                None => self.asker.role.clone(),
                Some(arg) => role_name(&self.asker.catalog, arg)?,
            };
            let target = role_name(&self.asker.catalog, target)?;
            self.answer(&role, &target, privs)
        })
    }
}

/// `has_function_privilege([role,] function, 'EXECUTE')`: PUBLIC may execute every function
/// (Postgres' default; functions have no ACLs here), and only their owner (the bootstrap
/// superuser, or any superuser) grant that on.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HasFunctionPrivilege {
    asker: Asker,
    signature: Signature,
}

impl ScalarUDFImpl for HasFunctionPrivilege {
    fn name(&self) -> &str {
        "has_function_privilege"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        inquire("has_function_privilege", args, |role, _function, privs| {
            let role = match role {
                None => self.asker.role.clone(),
                Some(arg) => role_name(&self.asker.catalog, arg)?,
            };
            let mut ok = false;
            for item in privs.split(',') {
                let upper = item.trim().to_ascii_uppercase();
                let (word, with_grant) = match upper.strip_suffix("WITH GRANT OPTION") {
                    Some(w) => (w.trim().to_string(), true),
                    None => (upper.clone(), false),
                };
                if word != "EXECUTE" {
                    return Err(DbError::new(
                        SqlState::InvalidParameterValue,
                        format!("unrecognized privilege type: \"{}\"", item.trim()),
                    ));
                }
                ok |= !with_grant || self.asker.catalog.is_superuser(&role);
            }
            Ok(ok)
        })
    }
}

/// The functions for a session whose current role is `role`.
pub fn functions(catalog: &Arc<Catalog>, role: &str, search_path: &[String]) -> Vec<ScalarUDF> {
    let asker = Asker {
        catalog: catalog.clone(),
        role: role.to_string(),
        search_path: search_path.to_vec(),
    };
    [
        ("has_table_privilege", ObjectKind::Table, Columns::No),
        // no column privileges exist: a table's privileges are every column's
        ("has_any_column_privilege", ObjectKind::Table, Columns::Any),
        ("has_column_privilege", ObjectKind::Table, Columns::Named),
        ("has_schema_privilege", ObjectKind::Schema, Columns::No),
        ("has_sequence_privilege", ObjectKind::Sequence, Columns::No),
    ]
    .into_iter()
    .map(|(name, kind, columns)| {
        ScalarUDF::new_from_impl(HasPrivilege {
            name,
            kind,
            columns,
            asker: asker.clone(),
            signature: Signature::variadic_any(Volatility::Stable),
        })
    })
    .chain(std::iter::once(ScalarUDF::new_from_impl(PgHasRole {
        asker: asker.clone(),
        signature: Signature::variadic_any(Volatility::Stable),
    })))
    .chain(std::iter::once(ScalarUDF::new_from_impl(
        HasFunctionPrivilege {
            asker: asker.clone(),
            signature: Signature::variadic_any(Volatility::Stable),
        },
    )))
    .collect()
}

/// `has_database_privilege([role,] database, privileges)`: there is one database; PUBLIC may
/// CONNECT to it and create TEMPORARY objects, and only a superuser (its owner) may CREATE.
struct HasDatabasePrivilege {
    catalog: Arc<Catalog>,
    role: String,
    database: String,
    signature: Signature,
}

impl std::fmt::Debug for HasDatabasePrivilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HasDatabasePrivilege")
            .field("role", &self.role)
            .finish()
    }
}

impl PartialEq for HasDatabasePrivilege {
    fn eq(&self, o: &Self) -> bool {
        self.role == o.role && self.database == o.database
    }
}
impl Eq for HasDatabasePrivilege {}
impl std::hash::Hash for HasDatabasePrivilege {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.role.hash(state);
    }
}

impl HasDatabasePrivilege {
    fn answer(&self, role: Option<Arg>, database: Arg, privs: &str) -> DbResult<bool> {
        let role = match role {
            None => self.role.clone(),
            Some(Arg::Name(n)) => n,
            Some(Arg::Oid(oid)) => crate::system::role_name(&self.catalog, oid),
        };
        let Some(role) = self.catalog.role(&role) else {
            return Err(DbError::new(
                SqlState::UndefinedObject,
                format!("role \"{role}\" does not exist"),
            ));
        };
        match database {
            Arg::Name(n) if n == self.database || n == "postgres" => {}
            Arg::Oid(_) => {}
            Arg::Name(n) => {
                return Err(DbError::new(
                    SqlState::InvalidCatalogName,
                    format!("database \"{n}\" does not exist"),
                ));
            }
        }
        let mut any = false;
        for item in privs.split(',') {
            let word = item.trim().to_ascii_uppercase();
            let word = word
                .strip_suffix("WITH GRANT OPTION")
                .map(str::trim)
                .unwrap_or(&word)
                .to_string();
            any |= match word.as_str() {
                "CONNECT" | "TEMPORARY" | "TEMP" => true,
                "CREATE" => role.superuser,
                _ => {
                    return Err(DbError::new(
                        SqlState::InvalidParameterValue,
                        format!("unrecognized privilege type: \"{}\"", item.trim()),
                    ));
                }
            };
        }
        Ok(any)
    }
}

impl ScalarUDFImpl for HasDatabasePrivilege {
    fn name(&self) -> &str {
        "has_database_privilege"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        inquire("has_database_privilege", args, |role, database, privs| {
            self.answer(role, database, privs)
        })
    }
}

/// `has_database_privilege` for a session of `role` in `database`.
pub fn database_function(catalog: &Arc<Catalog>, role: &str, database: &str) -> ScalarUDF {
    ScalarUDF::new_from_impl(HasDatabasePrivilege {
        catalog: catalog.clone(),
        role: role.to_string(),
        database: database.to_string(),
        signature: Signature::variadic_any(Volatility::Stable),
    })
}
