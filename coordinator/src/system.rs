//! `pg_catalog` tables, built from our catalog when a statement names them (RFC 0001).
//!
//! First slice: `pg_namespace`, `pg_class` (tables and their primary-key indexes),
//! `pg_attribute`, `pg_type`, `pg_index`, `pg_database`, `pg_roles`, `pg_user`,
//! `pg_extension`, `pg_tables`, `pg_am`, and the empty `pg_inherits` / `pg_partitioned_table`
//! (no table inheritance or partitioning here). OIDs are stable: a table's is its id (from
//! 16384), its primary-key index's is `id + INDEX_OID_OFFSET`, a schema's is fixed
//! (`pg_catalog` 11, `public` 2200) or derived from its name.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int16Array, Int32Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::sql::sqlparser::ast;

use crate::catalog::Catalog;
use crate::privilege::{DATABASE_OWNER, ObjectKind};

/// The tables this module provides, by name.
pub const TABLES: &[&str] = &[
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_attrdef",
    "pg_collation",
    "pg_index",
    "pg_database",
    "pg_roles",
    "pg_user",
    "pg_authid",
    "pg_auth_members",
    "pg_tablespace",
    "pg_extension",
    "pg_tables",
    "pg_am",
    "pg_constraint",
];

/// Catalogs of features OrochiDB does not have (inheritance, partitioning, row security,
/// publications, extended statistics, triggers, rules): always empty, with their Postgres
/// columns (`a`: an array, typed `text[]` here).
pub const EMPTY_TABLES: &[(&str, &[(&str, char)])] = &[
    (
        "pg_inherits",
        &[
            ("inhrelid", 'o'),
            ("inhparent", 'o'),
            ("inhseqno", 'i'),
            ("inhdetachpending", 'b'),
        ],
    ),
    (
        "pg_partitioned_table",
        &[
            ("partrelid", 'o'),
            ("partstrat", 't'),
            ("partnatts", 's'),
            ("partdefid", 'o'),
        ],
    ),
    (
        "pg_policy",
        &[
            ("oid", 'o'),
            ("polname", 't'),
            ("polrelid", 'o'),
            ("polcmd", 't'),
            ("polpermissive", 'b'),
            ("polroles", 'a'),
            ("polqual", 't'),
            ("polwithcheck", 't'),
        ],
    ),
    (
        "pg_statistic_ext",
        &[
            ("oid", 'o'),
            ("stxrelid", 'o'),
            ("stxname", 't'),
            ("stxnamespace", 'o'),
            ("stxowner", 'o'),
            ("stxstattarget", 'i'),
            ("stxkeys", 't'),
            ("stxkind", 'a'),
            ("stxexprs", 't'),
        ],
    ),
    (
        "pg_publication",
        &[
            ("oid", 'o'),
            ("pubname", 't'),
            ("pubowner", 'o'),
            ("puballtables", 'b'),
            ("pubinsert", 'b'),
            ("pubupdate", 'b'),
            ("pubdelete", 'b'),
            ("pubtruncate", 'b'),
            ("pubviaroot", 'b'),
        ],
    ),
    (
        "pg_publication_namespace",
        &[("oid", 'o'), ("pnpubid", 'o'), ("pnnspid", 'o')],
    ),
    (
        "pg_publication_rel",
        &[
            ("oid", 'o'),
            ("prpubid", 'o'),
            ("prrelid", 'o'),
            ("prqual", 't'),
            ("prattrs", 't'),
        ],
    ),
    (
        // no COMMENT ON yet
        "pg_description",
        &[
            ("objoid", 'o'),
            ("classoid", 'o'),
            ("objsubid", 'i'),
            ("description", 't'),
        ],
    ),
    (
        "pg_trigger",
        &[
            ("oid", 'o'),
            ("tgrelid", 'o'),
            ("tgparentid", 'o'),
            ("tgname", 't'),
            ("tgfoid", 'o'),
            ("tgtype", 's'),
            ("tgenabled", 't'),
            ("tgisinternal", 'b'),
        ],
    ),
    (
        "pg_rewrite",
        &[
            ("oid", 'o'),
            ("rulename", 't'),
            ("ev_class", 'o'),
            ("ev_type", 't'),
            ("ev_enabled", 't'),
            ("is_instead", 'b'),
        ],
    ),
];

/// Whether `name` (unqualified) is one of [`EMPTY_TABLES`].
pub fn is_empty_table(name: &str) -> bool {
    EMPTY_TABLES.iter().any(|(n, _)| *n == name)
}

fn empty_relation(t: &ast::TableFactor) -> Option<ast::TableFactor> {
    let ast::TableFactor::Table { name, .. } = t else {
        return None;
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_lowercase()))
        .collect();
    let table = match parts.as_slice() {
        [t] => t,
        [s, t] if s == "pg_catalog" => t,
        _ => return None,
    };
    is_empty_table(table).then(|| t.clone())
}
fn inner_empty_relation(from: &[ast::TableWithJoins]) -> Option<ast::TableFactor> {
    from.iter().find_map(|twj| {
        let outer = |op: &ast::JoinOperator| {
            !matches!(
                op,
                ast::JoinOperator::Join(_)
                    | ast::JoinOperator::Inner(_)
                    | ast::JoinOperator::CrossJoin(_)
                    | ast::JoinOperator::LeftOuter(_)
                    | ast::JoinOperator::Left(_)
            )
        };
        if twj.joins.iter().any(|j| outer(&j.join_operator)) {
            return None; // a RIGHT/FULL join may keep rows of the other side
        }
        empty_relation(&twj.relation).or_else(|| {
            twj.joins
                .iter()
                .filter(|j| {
                    matches!(
                        j.join_operator,
                        ast::JoinOperator::Join(_)
                            | ast::JoinOperator::Inner(_)
                            | ast::JoinOperator::CrossJoin(_)
                    )
                })
                .find_map(|j| empty_relation(&j.relation))
        })
    })
}
/// Whether the SELECT itself aggregates (aggregates inside its subqueries do not count).
fn aggregates(select: &ast::Select, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    struct Finder<'a> {
        depth: usize,
        is_aggregate: &'a dyn Fn(&str) -> bool,
    }
    impl ast::Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _q: &ast::Query) -> std::ops::ControlFlow<()> {
            self.depth += 1;
            std::ops::ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _q: &ast::Query) -> std::ops::ControlFlow<()> {
            self.depth -= 1;
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &ast::Expr) -> std::ops::ControlFlow<()> {
            match e {
                ast::Expr::Function(f)
                    if self.depth == 0
                        && f.name
                            .0
                            .last()
                            .and_then(|p| p.as_ident())
                            .is_some_and(|i| (self.is_aggregate)(&i.value.to_lowercase())) =>
                {
                    std::ops::ControlFlow::Break(())
                }
                _ => std::ops::ControlFlow::Continue(()),
            }
        }
    }
    use ast::Visit;
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(g, _) if g.is_empty());
    grouped
        || select.having.is_some()
        || select.projection.iter().any(|item| {
            let mut finder = Finder {
                depth: 0,
                is_aggregate,
            };
            item.visit(&mut finder).is_break()
        })
}

/// Whether a query body returns no rows because it reads an empty catalog (see
/// [`prune_selects_over_empty_tables`]).
fn produces_no_rows(body: &ast::SetExpr, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    match body {
        ast::SetExpr::Select(select) => {
            !aggregates(select, is_aggregate) && inner_empty_relation(&select.from).is_some()
        }
        ast::SetExpr::SetOperation {
            left, right, op, ..
        } => match op {
            ast::SetOperator::Union => {
                produces_no_rows(left, is_aggregate) && produces_no_rows(right, is_aggregate)
            }
            ast::SetOperator::Intersect => {
                produces_no_rows(left, is_aggregate) || produces_no_rows(right, is_aggregate)
            }
            _ => produces_no_rows(left, is_aggregate),
        },
        ast::SetExpr::Query(q) => produces_no_rows(&q.body, is_aggregate),
        _ => false,
    }
}

/// Subqueries over an empty catalog, as expressions, replaced by their value: no row. A scalar
/// subquery is NULL, `ARRAY(…)` an empty array, `EXISTS` false, `IN` false (`NOT IN` true).
/// psql's `\du` lists role memberships with `ARRAY(SELECT … FROM pg_auth_members …)`.
pub fn prune_subqueries_over_empty_tables(
    stmt: &mut ast::Statement,
    is_aggregate: &dyn Fn(&str) -> bool,
) {
    let _ = ast::visit_expressions_mut(stmt, |e| {
        let replacement = match e {
            ast::Expr::Subquery(q) if produces_no_rows(&q.body, is_aggregate) => {
                Some(ast::Expr::value(ast::Value::Null))
            }
            ast::Expr::Exists { subquery, negated }
                if produces_no_rows(&subquery.body, is_aggregate) =>
            {
                Some(ast::Expr::value(ast::Value::Boolean(*negated)))
            }
            ast::Expr::InSubquery {
                subquery, negated, ..
            } if produces_no_rows(&subquery.body, is_aggregate) => {
                Some(ast::Expr::value(ast::Value::Boolean(*negated)))
            }
            ast::Expr::Function(f)
                if f.name.to_string().eq_ignore_ascii_case("array")
                    && matches!(&f.args, ast::FunctionArguments::Subquery(q) if produces_no_rows(&q.body, is_aggregate)) =>
            {
                Some(ast::Expr::Array(ast::Array {
                    elem: vec![],
                    named: true,
                }))
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *e = r;
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// A `SELECT` that reads one of [`EMPTY_TABLES`] as an inner relation, without aggregating,
/// returns no rows, whatever its select list and WHERE say. Those often use what only the
/// missing feature has (psql's `\d` asks for row-security policies with `array(SELECT …)`
/// over `polroles`, for publications with `pg_relation_is_publishable`), so such a `SELECT`
/// becomes `SELECT NULL AS <name>, … FROM <that table> WHERE false`: the same columns by
/// name, the same (empty) result, and nothing left to plan that we lack. Set operations are
/// pruned branch by branch. `is_aggregate` tells aggregate function names.
pub fn prune_selects_over_empty_tables(
    query: &mut ast::Query,
    is_aggregate: &dyn Fn(&str) -> bool,
) {
    fn in_set_expr(body: &mut ast::SetExpr, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
        match body {
            ast::SetExpr::Select(select) => {
                if aggregates(select, is_aggregate) {
                    return false;
                }
                let Some(empty) = inner_empty_relation(&select.from) else {
                    return false;
                };
                if select.projection.iter().any(|i| {
                    matches!(
                        i,
                        ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..)
                    )
                }) {
                    return false; // `*` over the tables plans as it is
                }
                let null = || ast::Expr::value(ast::Value::Null);
                let mut used: Vec<String> = Vec::new();
                for (i, item) in select.projection.iter_mut().enumerate() {
                    let alias = match item {
                        ast::SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                        ast::SelectItem::UnnamedExpr(e) => {
                            let name = crate::handler::eval::output_name(e);
                            // unique names only (a later branch of a UNION, or `a.x, b.x`)
                            if used.contains(&name) {
                                ast::Ident::new(format!("{name}_{i}"))
                            } else {
                                ast::Ident::new(name)
                            }
                        }
                        _ => continue,
                    };
                    used.push(alias.value.clone());
                    *item = ast::SelectItem::ExprWithAlias {
                        expr: null(),
                        alias,
                    };
                }
                select.from = vec![ast::TableWithJoins {
                    relation: empty,
                    joins: vec![],
                }];
                select.selection = Some(ast::Expr::value(ast::Value::Boolean(false)));
                true
            }
            ast::SetExpr::SetOperation { left, right, .. } => {
                let l = in_set_expr(left, is_aggregate);
                let r = in_set_expr(right, is_aggregate);
                l && r
            }
            ast::SetExpr::Query(q) => in_set_expr(&mut q.body, is_aggregate),
            _ => false,
        }
    }
    if in_set_expr(&mut query.body, is_aggregate) {
        // every branch is empty: an ORDER BY may name what is gone
        query.order_by = None;
    }
}

pub const INDEX_OID_OFFSET: u32 = 1 << 30;
/// A primary-key constraint's oid is its table's id plus this.
pub const CONSTRAINT_OID_OFFSET: u32 = 1 << 29;

/// Tables by id, for turning many relation oids into names (build once per call, not per row).
pub type TablesById = std::collections::HashMap<u64, Arc<orochi_common::schema::TableDef>>;

pub fn tables_by_id(catalog: &Catalog) -> TablesById {
    catalog
        .all_tables()
        .into_iter()
        .map(|t| (t.id, t))
        .collect()
}

/// The system catalogs with the fixed oids Postgres gives them (`pg_class.oid`), for
/// `'pg_class'::regclass` and `1259::regclass`.
pub const SYSTEM_RELATIONS: &[(&str, u32)] = &[
    ("pg_tablespace", 1213),
    ("pg_type", 1247),
    ("pg_attribute", 1249),
    ("pg_proc", 1255),
    ("pg_class", 1259),
    ("pg_authid", 1260),
    ("pg_auth_members", 1261),
    ("pg_database", 1262),
    ("pg_am", 2601),
    ("pg_attrdef", 2604),
    ("pg_constraint", 2606),
    ("pg_depend", 2608),
    ("pg_description", 2609),
    ("pg_index", 2610),
    ("pg_inherits", 2611),
    ("pg_namespace", 2615),
    ("pg_trigger", 2620),
    ("pg_extension", 3079),
    ("pg_collation", 3456),
];

/// The relation an unqualified `name` means through `search_path`, as Postgres resolves it:
/// a system catalog (`pg_catalog` is searched first unless the path places it), else the
/// first schema holding a table of that name, or the primary-key index `<table>_pkey`.
pub fn relation_oid(catalog: &Catalog, search_path: &[String], name: &str) -> Option<u32> {
    if !search_path.iter().any(|s| s == "pg_catalog")
        && let Some(oid) = relation_oid_in(catalog, "pg_catalog", name)
    {
        return Some(oid);
    }
    search_path
        .iter()
        .find_map(|schema| relation_oid_in(catalog, schema, name))
}

/// The relation `schema.name` (a system catalog in `pg_catalog`).
pub fn relation_oid_in(catalog: &Catalog, schema: &str, name: &str) -> Option<u32> {
    if schema == "pg_catalog" {
        return SYSTEM_RELATIONS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, oid)| oid);
    }
    if let Some(t) = catalog.table(schema, name) {
        return Some(t.id as u32);
    }
    if catalog.sequence_exists(schema, name) {
        return Some(sequence_oid(schema, name));
    }
    let table = catalog.table(schema, name.strip_suffix("_pkey")?)?;
    (!table.hidden_rowid).then_some(table.id as u32 + INDEX_OID_OFFSET)
}

/// Schema and name of relation `oid` (a table, or its primary-key index).
pub fn relation_name(tables: &TablesById, oid: u32) -> Option<(&str, String)> {
    if let Some((name, _)) = SYSTEM_RELATIONS.iter().find(|(_, o)| *o == oid) {
        return Some(("pg_catalog", name.to_string()));
    }
    let def = tables.get(&((oid % INDEX_OID_OFFSET) as u64))?;
    let name = if oid >= INDEX_OID_OFFSET {
        format!("{}_pkey", def.name)
    } else {
        def.name.clone()
    };
    Some((def.schema.as_str(), name))
}
const SUPERUSER_OID: u32 = 10;
/// `pg_database_owner`, which owns the `public` schema since Postgres 15.
pub const DATABASE_OWNER_OID: u32 = 6171;
const DATABASE_OID: u32 = 5;
/// `pg_default`, as in Postgres (`pg_global` is the next).
const DEFAULT_TABLESPACE_OID: u32 = 1663;
const EXTENSION_OID: u32 = 16_000;

/// Schema and name of the sequence with oid `oid`.
pub fn sequence_by_oid(catalog: &Catalog, oid: u32) -> Option<(String, String)> {
    if oid >> 29 != 3 {
        return None;
    }
    catalog
        .sequences()
        .into_iter()
        .find(|s| sequence_oid(&s.schema, &s.name) == oid)
        .map(|s| (s.schema, s.name))
}

/// A sequence's oid: stable across restarts (FNV-1a of `schema.name`), in [3·2^29, 2^31),
/// apart from tables, their indexes and schemas.
pub fn sequence_oid(schema: &str, name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes().chain([b'.']).chain(name.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (3 << 29) | (h & ((1 << 29) - 1))
}

pub fn namespace_oid(name: &str) -> u32 {
    match name {
        "pg_catalog" => 11,
        "public" => 2200,
        "information_schema" => 13_000,
        other => {
            // stable across restarts: FNV-1a of the name, folded into [2^29, 2^30)
            let mut h: u32 = 0x811c_9dc5;
            for b in other.bytes() {
                h ^= b as u32;
                h = h.wrapping_mul(0x0100_0193);
            }
            (1 << 29) | (h & ((1 << 29) - 1))
        }
    }
}

/// A column builder for one system table.
enum Col {
    Oid(Vec<u32>),
    Text(Vec<Option<String>>),
    Bool(Vec<bool>),
    I16(Vec<i16>),
    I32(Vec<Option<i32>>),
    /// `text[]` (ACLs, options).
    TextArray(Vec<Option<Vec<String>>>),
}

pub(crate) struct Table {
    fields: Vec<Field>,
    cols: Vec<Col>,
}

impl Table {
    pub(crate) fn new(spec: &[(&str, char)]) -> Table {
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for (name, kind) in spec {
            let (dt, col) = match kind {
                'o' => (DataType::UInt32, Col::Oid(vec![])),
                't' => (DataType::Utf8, Col::Text(vec![])),
                'b' => (DataType::Boolean, Col::Bool(vec![])),
                's' => (DataType::Int16, Col::I16(vec![])),
                'a' => (
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                    Col::TextArray(vec![]),
                ),
                _ => (DataType::Int32, Col::I32(vec![])),
            };
            fields.push(Field::new(*name, dt, true));
            cols.push(col);
        }
        Table { fields, cols }
    }

    pub(crate) fn row(&mut self, values: Vec<V>) {
        for (col, v) in self.cols.iter_mut().zip(values) {
            match (col, v) {
                (Col::Oid(c), V::O(x)) => c.push(x),
                (Col::Text(c), V::T(x)) => c.push(Some(x)),
                (Col::Text(c), V::Null) => c.push(None),
                (Col::Bool(c), V::B(x)) => c.push(x),
                (Col::I16(c), V::S(x)) => c.push(x),
                (Col::I32(c), V::I(x)) => c.push(Some(x)),
                (Col::I32(c), V::Null) => c.push(None),
                (Col::TextArray(c), V::Null) => c.push(None),
                (Col::TextArray(c), V::A(x)) => c.push(Some(x)),
                _ => unreachable!("system table row does not match its columns"),
            }
        }
    }

    pub(crate) fn provider(self) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(self.fields));
        let arrays: Vec<ArrayRef> = self
            .cols
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Col::Oid(v) => Arc::new(UInt32Array::from(v)),
                    Col::Text(v) => Arc::new(StringArray::from(v)),
                    Col::Bool(v) => Arc::new(BooleanArray::from(v)),
                    Col::I16(v) => Arc::new(Int16Array::from(v)),
                    Col::I32(v) => Arc::new(Int32Array::from(v)),
                    Col::TextArray(v) => {
                        let mut b =
                            arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
                        for item in v {
                            match item {
                                Some(items) => {
                                    for i in items {
                                        b.values().append_value(i);
                                    }
                                    b.append(true);
                                }
                                None => b.append(false),
                            }
                        }
                        Arc::new(b.finish())
                    }
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).expect("system table batch");
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("system table"))
    }
}

pub(crate) enum V {
    O(u32),
    /// A `text[]` value.
    A(Vec<String>),
    T(String),
    B(bool),
    S(i16),
    I(i32),
    Null,
}

pub(crate) fn t(s: &str) -> V {
    V::T(s.to_string())
}

/// The type's default storage strategy, as Postgres' `typstorage` (what `\d+` prints).
fn storage_of(ty: orochi_common::types::SqlType) -> &'static str {
    use orochi_common::types::SqlType as T;
    match ty {
        T::Numeric(_) => "m",
        T::Text | T::Varchar(_) | T::Char(_) | T::Bytea | T::Json | T::Jsonb => "x",
        _ => "p",
    }
}

/// A `pg_roles` row (columns as declared in [`table`]).
fn role_row(r: &crate::privilege::RoleDef) -> Vec<V> {
    vec![
        V::O(r.oid),
        t(&r.name),
        V::B(r.superuser),
        V::B(r.inherit),
        V::B(r.create_role),
        V::B(r.create_db),
        V::B(r.login),
        V::B(r.replication),
        V::B(r.bypass_rls),
        V::I(r.connection_limit),
        r.valid_until.as_deref().map_or(V::Null, t),
    ]
}

/// The oid of a role by name (`pg_database_owner` included); 0 if there is none.
pub fn role_oid(catalog: &Catalog, name: &str) -> u32 {
    if name == DATABASE_OWNER {
        return DATABASE_OWNER_OID;
    }
    catalog.role(name).map_or(0, |r| r.oid)
}

/// The name of a role by oid, as `pg_get_userbyid` prints it.
pub fn role_name(catalog: &Catalog, oid: u32) -> String {
    if oid == DATABASE_OWNER_OID {
        return DATABASE_OWNER.to_string();
    }
    catalog
        .roles()
        .into_iter()
        .find(|r| r.oid == oid)
        .map(|r| r.name)
        .unwrap_or_else(|| format!("unknown (OID={oid})"))
}

/// `relacl`/`nspacl`: NULL while the ACL is the default.
fn acl_value(acl: &crate::privilege::Acl, kind: ObjectKind) -> V {
    acl.text(kind).map_or(V::Null, V::A)
}

/// A `pg_class` row (columns as declared in [`table`]).
/// `owner` and `acl` go last: relowner is filled in from the first.
fn class_row(
    oid: u32,
    name: &str,
    ns: u32,
    am: u32,
    has_index: bool,
    kind: &str,
    natts: i16,
) -> Vec<V> {
    let mut row = vec![
        V::O(oid),
        t(name),
        V::O(ns),
        V::O(0),
        V::O(SUPERUSER_OID),
        V::O(am),
        V::I(-1),
        V::B(has_index),
        V::B(false),
        t("p"),
        t(kind),
        V::S(natts),
        V::S(0),
    ];
    // relhasrules, relhastriggers, relhassubclass, relrowsecurity, relforcerowsecurity,
    // relispartition
    row.extend((0..6).map(|_| V::B(false)));
    // reltablespace, reloftype, reltoastrelid (none), relreplident (default), reloptions
    row.extend([V::O(0), V::O(0), V::O(0), t("d"), V::Null]);
    row
}

/// The system table `name` (unqualified), as of now; `None` if there is no such table.
pub fn table(catalog: &Catalog, name: &str, _user: &str) -> Option<Arc<dyn TableProvider>> {
    let tables = catalog.all_tables();
    let mut schemas = catalog.schemas();
    schemas.insert(0, "pg_catalog".to_string());
    schemas.push("information_schema".to_string());
    Some(match name {
        "pg_namespace" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("nspname", 't'),
                ("nspowner", 'o'),
                ("nspacl", 'a'),
            ]);
            for s in &schemas {
                let (owner, acl) = if s == "pg_catalog" || s == "information_schema" {
                    // readable by everyone, as in Postgres ({postgres=UC/postgres,=U/postgres})
                    (
                        SUPERUSER_OID,
                        V::A(vec!["postgres=UC/postgres".into(), "=U/postgres".into()]),
                    )
                } else {
                    let acl = catalog.schema_acl(s);
                    (
                        role_oid(catalog, &acl.owner),
                        acl_value(&acl, ObjectKind::Schema),
                    )
                };
                tb.row(vec![V::O(namespace_oid(s)), t(s), V::O(owner), acl]);
            }
            tb.provider()
        }
        "pg_class" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("relname", 't'),
                ("relnamespace", 'o'),
                ("reltype", 'o'),
                ("relowner", 'o'),
                ("relam", 'o'),
                ("reltuples", 'i'),
                ("relhasindex", 'b'),
                ("relisshared", 'b'),
                ("relpersistence", 't'),
                ("relkind", 't'),
                ("relnatts", 's'),
                ("relchecks", 's'),
                ("relhasrules", 'b'),
                ("relhastriggers", 'b'),
                ("relhassubclass", 'b'),
                ("relrowsecurity", 'b'),
                ("relforcerowsecurity", 'b'),
                ("relispartition", 'b'),
                ("reltablespace", 'o'),
                ("reloftype", 'o'),
                ("reltoastrelid", 'o'),
                ("relreplident", 't'),
                ("reloptions", 'a'),
                ("relacl", 'a'),
            ]);
            for d in &tables {
                let ns = namespace_oid(&d.schema);
                let has_pk = !d.hidden_rowid;
                let natts = d.visible_columns().len() as i16;
                let acl = catalog.table_acl(d.id);
                let owner = role_oid(catalog, &acl.owner);
                let mut row = class_row(d.id as u32, &d.name, ns, 2, has_pk, "r", natts);
                row[4] = V::O(owner);
                row.push(acl_value(&acl, ObjectKind::Table));
                tb.row(row);
                if has_pk {
                    let name = format!("{}_pkey", d.name);
                    let natts = d.primary_key.len() as i16;
                    let oid = d.id as u32 + INDEX_OID_OFFSET;
                    let mut row = class_row(oid, &name, ns, 403, false, "i", natts);
                    row[4] = V::O(owner);
                    row.push(V::Null);
                    tb.row(row);
                }
            }
            // sequences (a serial's, an identity column's), owned by their table's owner
            for seq in catalog.sequences() {
                if seq.schema == "pg_catalog" {
                    continue; // the hidden row-id sequence
                }
                let owner = seq.owned_by.as_ref().map_or(SUPERUSER_OID, |(table, _)| {
                    role_oid(catalog, &catalog.table_acl(*table).owner)
                });
                let oid = sequence_oid(&seq.schema, &seq.name);
                let mut row =
                    class_row(oid, &seq.name, namespace_oid(&seq.schema), 0, false, "S", 3);
                row[4] = V::O(owner);
                row.push(V::Null);
                tb.row(row);
            }
            tb.provider()
        }
        "pg_attribute" => {
            let mut tb = Table::new(&[
                ("attrelid", 'o'),
                ("attname", 't'),
                ("atttypid", 'o'),
                ("attnum", 's'),
                ("atttypmod", 'i'),
                ("attnotnull", 'b'),
                ("atthasdef", 'b'),
                ("attisdropped", 'b'),
                ("attcollation", 'o'),
                ("attidentity", 't'),
                ("attgenerated", 't'),
                ("attstorage", 't'),
                ("attcompression", 't'),
                ("attstattarget", 'i'),
                // column privileges: none yet
                ("attacl", 'a'),
            ]);
            for d in &tables {
                for (n, &i) in d.visible_columns().iter().enumerate() {
                    let c = &d.columns[i];
                    tb.row(vec![
                        V::O(d.id as u32),
                        t(&c.name),
                        V::O(c.ty.pg_oid()),
                        V::S(n as i16 + 1),
                        V::I(crate::pgtypes::typmod(c.ty)),
                        V::B(!c.nullable),
                        // an identity column's sequence is no default in Postgres' catalogs
                        V::B(c.default.is_some() && c.identity.is_none()),
                        V::B(false),
                        V::O(crate::pgtypes::collation_of(c.ty.pg_oid())),
                        t(c.identity.map_or("", |i| i.attidentity())),
                        t(""),
                        t(storage_of(c.ty)),
                        t(""),
                        V::I(-1),
                        V::Null,
                    ]);
                }
            }
            tb.provider()
        }
        "pg_attrdef" => {
            // adbin holds the expression as Postgres prints it; pg_get_expr returns it
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("adrelid", 'o'),
                ("adnum", 's'),
                ("adbin", 't'),
            ]);
            for d in &tables {
                for (n, &i) in d.visible_columns().iter().enumerate() {
                    if let Some(sql) = &d.columns[i].default_sql {
                        let oid = (d.id as u32).wrapping_mul(1000).wrapping_add(n as u32 + 1);
                        tb.row(vec![
                            V::O(oid),
                            V::O(d.id as u32),
                            V::S(n as i16 + 1),
                            t(sql),
                        ]);
                    }
                }
            }
            tb.provider()
        }
        "pg_collation" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("collname", 't'),
                ("collnamespace", 'o'),
                ("collprovider", 't'),
            ]);
            for (oid, name, provider) in
                [(100, "default", "d"), (950, "C", "c"), (951, "POSIX", "c")]
            {
                tb.row(vec![V::O(oid), t(name), V::O(11), t(provider)]);
            }
            tb.provider()
        }
        "pg_type" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("typname", 't'),
                ("typnamespace", 'o'),
                ("typowner", 'o'),
                ("typlen", 's'),
                ("typbyval", 'b'),
                ("typtype", 't'),
                ("typcategory", 't'),
                ("typdelim", 't'),
                ("typrelid", 'o'),
                ("typelem", 'o'),
                ("typarray", 'o'),
                ("typnotnull", 'b'),
                ("typbasetype", 'o'),
                ("typtypmod", 'i'),
                ("typndims", 'i'),
                ("typcollation", 'o'),
            ]);
            let category = |oid: u32| match oid {
                16 => "B",
                20 | 21 | 23 | 26 | 700 | 701 | 1700 => "N",
                19 | 25 | 1042 | 1043 => "S",
                1082 | 1114 | 1184 => "D",
                _ => "U",
            };
            let collation = crate::pgtypes::collation_of;
            for ty in crate::pgtypes::PG_TYPES {
                let byval = (1..=8).contains(&ty.len);
                tb.row(vec![
                    V::O(ty.oid),
                    t(ty.typname),
                    V::O(11),
                    V::O(10),
                    V::S(ty.len),
                    V::B(byval),
                    t("b"),
                    t(category(ty.oid)),
                    t(","),
                    V::O(0),
                    V::O(0),
                    V::O(ty.array),
                    V::B(false),
                    V::O(0),
                    V::I(-1),
                    V::I(0),
                    V::O(collation(ty.oid)),
                ]);
                tb.row(vec![
                    V::O(ty.array),
                    t(&format!("_{}", ty.typname)),
                    V::O(11),
                    V::O(10),
                    V::S(-1),
                    V::B(false),
                    t("b"),
                    t("A"),
                    t(","),
                    V::O(0),
                    V::O(ty.oid),
                    V::O(0),
                    V::B(false),
                    V::O(0),
                    V::I(-1),
                    V::I(0),
                    V::O(collation(ty.oid)),
                ]);
            }
            tb.provider()
        }
        "pg_index" => {
            let mut tb = Table::new(&[
                ("indexrelid", 'o'),
                ("indrelid", 'o'),
                ("indnatts", 's'),
                ("indisunique", 'b'),
                ("indisprimary", 'b'),
                ("indisexclusion", 'b'),
                ("indimmediate", 'b'),
                ("indisclustered", 'b'),
                ("indisvalid", 'b'),
                ("indisready", 'b'),
                ("indislive", 'b'),
                ("indisreplident", 'b'),
                ("indkey", 't'),
            ]);
            for d in tables.iter().filter(|d| !d.hidden_rowid) {
                let visible = d.visible_columns();
                let key: Vec<String> = d
                    .primary_key
                    .iter()
                    .map(|k| (visible.iter().position(|v| v == k).unwrap_or(0) + 1).to_string())
                    .collect();
                tb.row(vec![
                    V::O(d.id as u32 + INDEX_OID_OFFSET),
                    V::O(d.id as u32),
                    V::S(d.primary_key.len() as i16),
                    V::B(true),
                    V::B(true),
                    V::B(false),
                    V::B(true),
                    V::B(false),
                    V::B(true),
                    V::B(true),
                    V::B(true),
                    V::B(false),
                    t(&key.join(" ")),
                ]);
            }
            tb.provider()
        }
        "pg_database" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("datname", 't'),
                ("datdba", 'o'),
                ("encoding", 'i'),
                ("datcollate", 't'),
                ("datctype", 't'),
                ("datistemplate", 'b'),
                ("datallowconn", 'b'),
                ("datlocprovider", 't'),
                ("daticulocale", 't'),
                ("datacl", 'a'),
                ("dattablespace", 'o'),
            ]);
            tb.row(vec![
                V::O(DATABASE_OID),
                t("postgres"),
                V::O(SUPERUSER_OID),
                V::I(6),
                t("C.UTF-8"),
                t("C.UTF-8"),
                V::B(false),
                V::B(true),
                t("c"),
                V::Null,
                V::Null,
                V::O(DEFAULT_TABLESPACE_OID),
            ]);
            tb.provider()
        }
        "pg_tablespace" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("spcname", 't'),
                ("spcowner", 'o'),
                ("spcacl", 'a'),
                ("spcoptions", 'a'),
            ]);
            for (oid, name) in [
                (DEFAULT_TABLESPACE_OID, "pg_default"),
                (DEFAULT_TABLESPACE_OID + 1, "pg_global"),
            ] {
                tb.row(vec![
                    V::O(oid),
                    t(name),
                    V::O(SUPERUSER_OID),
                    V::Null,
                    V::Null,
                ]);
            }
            tb.provider()
        }
        "pg_roles" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("rolname", 't'),
                ("rolsuper", 'b'),
                ("rolinherit", 'b'),
                ("rolcreaterole", 'b'),
                ("rolcreatedb", 'b'),
                ("rolcanlogin", 'b'),
                ("rolreplication", 'b'),
                ("rolbypassrls", 'b'),
                ("rolconnlimit", 'i'),
                ("rolvaliduntil", 't'),
            ]);
            for r in catalog.roles() {
                tb.row(role_row(&r));
            }
            // the predefined role that owns `public` (Postgres 15)
            let mut owner = crate::privilege::RoleDef::new(DATABASE_OWNER_OID, DATABASE_OWNER);
            owner.inherit = true;
            tb.row(role_row(&owner));
            tb.provider()
        }
        "pg_authid" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("rolname", 't'),
                ("rolsuper", 'b'),
                ("rolinherit", 'b'),
                ("rolcreaterole", 'b'),
                ("rolcreatedb", 'b'),
                ("rolcanlogin", 'b'),
                ("rolreplication", 'b'),
                ("rolbypassrls", 'b'),
                ("rolconnlimit", 'i'),
                ("rolpassword", 't'),
                ("rolvaliduntil", 't'),
            ]);
            for r in catalog.roles() {
                let mut row = role_row(&r);
                let valid = row.pop().expect("role rows end with rolvaliduntil");
                row.push(r.password.as_deref().map_or(V::Null, t));
                row.push(valid);
                tb.row(row);
            }
            tb.provider()
        }
        "pg_auth_members" => {
            // Postgres 15's columns
            let mut tb = Table::new(&[
                ("roleid", 'o'),
                ("member", 'o'),
                ("grantor", 'o'),
                ("admin_option", 'b'),
            ]);
            let oid = |name: &str| catalog.role(name).map(|r| r.oid);
            for m in catalog.memberships() {
                if let (Some(role), Some(member)) = (oid(&m.role), oid(&m.member)) {
                    tb.row(vec![
                        V::O(role),
                        V::O(member),
                        V::O(oid(&m.grantor).unwrap_or(SUPERUSER_OID)),
                        V::B(m.admin_option),
                    ]);
                }
            }
            tb.provider()
        }
        "pg_user" => {
            let mut tb = Table::new(&[
                ("usename", 't'),
                ("usesysid", 'o'),
                ("usecreatedb", 'b'),
                ("usesuper", 'b'),
                ("userepl", 'b'),
                ("usebypassrls", 'b'),
                ("passwd", 't'),
                ("valuntil", 't'),
                ("useconfig", 'a'),
            ]);
            for r in catalog.roles().into_iter().filter(|r| r.login) {
                tb.row(vec![
                    t(&r.name),
                    V::O(r.oid),
                    V::B(r.create_db),
                    V::B(r.superuser),
                    V::B(r.replication),
                    V::B(r.bypass_rls),
                    t("********"),
                    r.valid_until.as_deref().map_or(V::Null, t),
                    V::Null,
                ]);
            }
            tb.provider()
        }
        "pg_extension" => {
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("extname", 't'),
                ("extowner", 'o'),
                ("extnamespace", 'o'),
                ("extrelocatable", 'b'),
                ("extversion", 't'),
            ]);
            tb.row(vec![
                V::O(13_500),
                t("plpgsql"),
                V::O(SUPERUSER_OID),
                V::O(11),
                V::B(false),
                t("1.0"),
            ]);
            tb.row(vec![
                V::O(EXTENSION_OID),
                t("orochi"),
                V::O(SUPERUSER_OID),
                V::O(11),
                V::B(false),
                t(env!("CARGO_PKG_VERSION")),
            ]);
            tb.provider()
        }
        "pg_tables" => {
            let mut tb = Table::new(&[
                ("schemaname", 't'),
                ("tablename", 't'),
                ("tableowner", 't'),
                ("tablespace", 't'),
                ("hasindexes", 'b'),
                ("hasrules", 'b'),
                ("hastriggers", 'b'),
                ("rowsecurity", 'b'),
            ]);
            for d in &tables {
                tb.row(vec![
                    t(&d.schema),
                    t(&d.name),
                    t("postgres"),
                    V::Null,
                    V::B(!d.hidden_rowid),
                    V::B(false),
                    V::B(false),
                    V::B(false),
                ]);
            }
            tb.provider()
        }
        "pg_am" => {
            let mut tb = Table::new(&[("oid", 'o'), ("amname", 't'), ("amtype", 't')]);
            tb.row(vec![V::O(2), t("heap"), t("t")]);
            tb.row(vec![V::O(403), t("btree"), t("i")]);
            tb.provider()
        }
        "pg_constraint" => {
            // primary keys only: no UNIQUE, CHECK or FOREIGN KEY constraints yet
            let mut tb = Table::new(&[
                ("oid", 'o'),
                ("conname", 't'),
                ("connamespace", 'o'),
                ("contype", 't'),
                ("condeferrable", 'b'),
                ("condeferred", 'b'),
                ("convalidated", 'b'),
                ("conrelid", 'o'),
                ("contypid", 'o'),
                ("conindid", 'o'),
                ("conparentid", 'o'),
                ("confrelid", 'o'),
                ("confupdtype", 't'),
                ("confdeltype", 't'),
                ("confmatchtype", 't'),
                ("conislocal", 'b'),
                ("coninhcount", 'i'),
                ("connoinherit", 'b'),
            ]);
            for d in tables.iter().filter(|d| !d.hidden_rowid) {
                tb.row(vec![
                    V::O(d.id as u32 + CONSTRAINT_OID_OFFSET),
                    t(&format!("{}_pkey", d.name)),
                    V::O(namespace_oid(&d.schema)),
                    t("p"),
                    V::B(false),
                    V::B(false),
                    V::B(true),
                    V::O(d.id as u32),
                    V::O(0),
                    V::O(d.id as u32 + INDEX_OID_OFFSET),
                    V::O(0),
                    V::O(0),
                    t(" "),
                    t(" "),
                    t(" "),
                    V::B(true),
                    V::I(0),
                    V::B(true),
                ]);
            }
            tb.provider()
        }
        other => {
            let (_, columns) = EMPTY_TABLES.iter().find(|(n, _)| *n == other)?;
            Table::new(columns).provider()
        }
    })
}

/// `pg_settings` as the session sees it (also what `SHOW ALL` lists).
pub fn pg_settings(settings: &crate::settings::Settings) -> Arc<dyn TableProvider> {
    use crate::settings::Kind;
    let mut tb = Table::new(&[
        ("name", 't'),
        ("setting", 't'),
        ("unit", 't'),
        ("category", 't'),
        ("short_desc", 't'),
        ("extra_desc", 't'),
        ("context", 't'),
        ("vartype", 't'),
        ("source", 't'),
        ("min_val", 't'),
        ("max_val", 't'),
        ("enumvals", 'a'),
        ("boot_val", 't'),
        ("reset_val", 't'),
        ("sourcefile", 't'),
        ("sourceline", 'i'),
        ("pending_restart", 'b'),
    ]);
    let opt = |s: Option<String>| s.map(V::T).unwrap_or(V::Null);
    for (d, value) in settings.all() {
        let (unit, min, max) = match d.kind {
            Kind::Int { min, max, unit } => (
                unit.map(str::to_string),
                Some(min.to_string()),
                Some(max.to_string()),
            ),
            _ => (None, None, None),
        };
        tb.row(vec![
            t(d.name),
            t(&d.base_value(&value)),
            opt(unit),
            t(d.category),
            t(d.description),
            V::Null,
            t(d.context.name()),
            t(d.vartype()),
            t(settings.source(d.name)),
            opt(min),
            opt(max),
            V::Null,
            t(&d.base_value(d.default)),
            t(&d.base_value(&settings.reset_value(d))),
            V::Null,
            V::I(0),
            V::B(false),
        ]);
    }
    tb.provider()
}

/// `pg_get_indexdef(index_oid [, column, pretty])` and `pg_get_constraintdef(oid [, pretty])`
/// for the primary-key indexes and constraints we have; NULL for an unknown oid, as Postgres.
pub struct ObjectDefinition {
    name: &'static str,
    catalog: Arc<Catalog>,
    /// relations unqualified in pretty output are those visible through this
    search_path: Vec<String>,
    signature: datafusion::logical_expr::Signature,
}

impl std::fmt::Debug for ObjectDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for ObjectDefinition {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.search_path == o.search_path
    }
}
impl Eq for ObjectDefinition {}
impl std::hash::Hash for ObjectDefinition {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        self.search_path.hash(h);
    }
}

pub const GET_INDEXDEF: &str = "pg_get_indexdef";
pub const GET_CONSTRAINTDEF: &str = "pg_get_constraintdef";

impl ObjectDefinition {
    pub fn new(name: &'static str, catalog: Arc<Catalog>, search_path: Vec<String>) -> Self {
        ObjectDefinition {
            name,
            catalog,
            search_path,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Stable,
            ),
        }
    }

    fn definition(
        &self,
        tables: &TablesById,
        oid: u32,
        column: i64,
        pretty: bool,
    ) -> Option<String> {
        let offset = if self.name == GET_INDEXDEF {
            INDEX_OID_OFFSET
        } else {
            CONSTRAINT_OID_OFFSET
        };
        let table = tables.get(&(oid.checked_sub(offset)? as u64))?;
        if table.hidden_rowid {
            return None;
        }
        let quote = crate::pgtypes::quote_ident;
        let cols: Vec<String> = table
            .primary_key
            .iter()
            .map(|&k| quote(&table.columns[k].name))
            .collect();
        if self.name == GET_CONSTRAINTDEF {
            return Some(format!("PRIMARY KEY ({})", cols.join(", ")));
        }
        if column > 0 {
            return cols.get(column as usize - 1).cloned();
        }
        let visible = self
            .search_path
            .iter()
            .find(|s| self.catalog.table(s, &table.name).is_some())
            .is_some_and(|s| *s == table.schema);
        let relation = if pretty && visible {
            quote(&table.name)
        } else {
            format!("{}.{}", quote(&table.schema), quote(&table.name))
        };
        Some(format!(
            "CREATE UNIQUE INDEX {} ON {relation} USING btree ({})",
            quote(&format!("{}_pkey", table.name)),
            cols.join(", ")
        ))
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for ObjectDefinition {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        use arrow::array::Array;
        use datafusion::logical_expr::ColumnarValue;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let int = |i: usize| -> datafusion::common::Result<Option<arrow::array::Int64Array>> {
            let Some(a) = arrays.get(i) else {
                return Ok(None);
            };
            let a = arrow::compute::cast(a, &DataType::Int64)?;
            Ok(Some(
                a.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .expect("cast to Int64")
                    .clone(),
            ))
        };
        let oids = int(0)?.expect("at least one argument");
        // pg_get_indexdef(oid, column, pretty) / pg_get_constraintdef(oid, pretty)
        let (column, pretty_at) = if self.name == GET_INDEXDEF && arrays.len() > 1 {
            (int(1)?, 2)
        } else {
            (None, 1)
        };
        let pretty = match arrays.get(pretty_at) {
            Some(a) => Some(
                arrow::compute::cast(a, &DataType::Boolean)?
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .expect("cast to Boolean")
                    .clone(),
            ),
            None => None,
        };
        let tables = tables_by_id(&self.catalog);
        let out: StringArray = (0..oids.len())
            .map(|i| {
                if oids.is_null(i) {
                    return None;
                }
                let col = column.as_ref().map(|c| c.value(i)).unwrap_or(0);
                let pretty = pretty.as_ref().is_some_and(|p| p.is_valid(i) && p.value(i));
                self.definition(&tables, oids.value(i) as u32, col, pretty)
            })
            .collect();
        if scalar {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&out, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_oids_are_stable_and_outside_table_ids() {
        assert_eq!(namespace_oid("public"), 2200);
        assert_eq!(namespace_oid("app"), namespace_oid("app"));
        assert_ne!(namespace_oid("app"), namespace_oid("apq"));
        let oid = namespace_oid("app");
        assert!((1 << 29..1 << 30).contains(&oid));
    }
}
