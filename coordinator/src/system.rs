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

use crate::catalog::Catalog;

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
    "pg_extension",
    "pg_tables",
    "pg_inherits",
    "pg_partitioned_table",
    "pg_am",
];

pub const INDEX_OID_OFFSET: u32 = 1 << 30;

/// Tables by id, for turning many relation oids into names (build once per call, not per row).
pub type TablesById = std::collections::HashMap<u64, Arc<orochi_common::schema::TableDef>>;

pub fn tables_by_id(catalog: &Catalog) -> TablesById {
    catalog
        .all_tables()
        .into_iter()
        .map(|t| (t.id, t))
        .collect()
}

/// The relation an unqualified `name` means through `search_path`, as Postgres resolves it:
/// the first schema holding a table of that name, or the primary-key index `<table>_pkey`.
pub fn relation_oid(catalog: &Catalog, search_path: &[String], name: &str) -> Option<u32> {
    search_path.iter().find_map(|schema| {
        if let Some(t) = catalog.table(schema, name) {
            return Some(t.id as u32);
        }
        let table = catalog.table(schema, name.strip_suffix("_pkey")?)?;
        (!table.hidden_rowid).then_some(table.id as u32 + INDEX_OID_OFFSET)
    })
}

/// Schema and name of relation `oid` (a table, or its primary-key index).
pub fn relation_name(tables: &TablesById, oid: u32) -> Option<(&str, String)> {
    let def = tables.get(&((oid % INDEX_OID_OFFSET) as u64))?;
    let name = if oid >= INDEX_OID_OFFSET {
        format!("{}_pkey", def.name)
    } else {
        def.name.clone()
    };
    Some((def.schema.as_str(), name))
}
const SUPERUSER_OID: u32 = 10;
const DATABASE_OID: u32 = 5;
const EXTENSION_OID: u32 = 16_000;

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
    I32(Vec<i32>),
    /// `text[]`, always NULL for now (ACLs: no privileges yet).
    NullTextArray(usize),
}

struct Table {
    fields: Vec<Field>,
    cols: Vec<Col>,
}

impl Table {
    fn new(spec: &[(&str, char)]) -> Table {
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
                    Col::NullTextArray(0),
                ),
                _ => (DataType::Int32, Col::I32(vec![])),
            };
            fields.push(Field::new(*name, dt, true));
            cols.push(col);
        }
        Table { fields, cols }
    }

    fn row(&mut self, values: Vec<V>) {
        for (col, v) in self.cols.iter_mut().zip(values) {
            match (col, v) {
                (Col::Oid(c), V::O(x)) => c.push(x),
                (Col::Text(c), V::T(x)) => c.push(Some(x)),
                (Col::Text(c), V::Null) => c.push(None),
                (Col::Bool(c), V::B(x)) => c.push(x),
                (Col::I16(c), V::S(x)) => c.push(x),
                (Col::I32(c), V::I(x)) => c.push(x),
                (Col::NullTextArray(n), V::Null) => *n += 1,
                _ => unreachable!("system table row does not match its columns"),
            }
        }
    }

    fn provider(self) -> Arc<dyn TableProvider> {
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
                    Col::NullTextArray(n) => arrow::array::new_null_array(
                        &DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                        n,
                    ),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).expect("system table batch");
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("system table"))
    }
}

enum V {
    O(u32),
    T(String),
    B(bool),
    S(i16),
    I(i32),
    Null,
}

fn t(s: &str) -> V {
    V::T(s.to_string())
}

/// A `pg_class` row (columns as declared in [`table`]).
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
    // reltablespace, reloftype, reltoastrelid (none), relreplident (default)
    row.extend([V::O(0), V::O(0), V::O(0), t("d")]);
    row
}

/// The system table `name` (unqualified), as of now; `None` if there is no such table.
pub fn table(catalog: &Catalog, name: &str, user: &str) -> Option<Arc<dyn TableProvider>> {
    let tables = catalog.all_tables();
    let mut schemas = catalog.schemas();
    schemas.insert(0, "pg_catalog".to_string());
    Some(match name {
        "pg_namespace" => {
            let mut tb = Table::new(&[("oid", 'o'), ("nspname", 't'), ("nspowner", 'o')]);
            for s in &schemas {
                tb.row(vec![V::O(namespace_oid(s)), t(s), V::O(SUPERUSER_OID)]);
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
            ]);
            for d in &tables {
                let ns = namespace_oid(&d.schema);
                let has_pk = !d.hidden_rowid;
                let natts = d.visible_columns().len() as i16;
                tb.row(class_row(d.id as u32, &d.name, ns, 2, has_pk, "r", natts));
                if has_pk {
                    let name = format!("{}_pkey", d.name);
                    let natts = d.primary_key.len() as i16;
                    let oid = d.id as u32 + INDEX_OID_OFFSET;
                    tb.row(class_row(oid, &name, ns, 403, false, "i", natts));
                }
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
                        V::B(c.default.is_some()),
                        V::B(false),
                        V::O(crate::pgtypes::collation_of(c.ty.pg_oid())),
                        t(""),
                        t(""),
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
            ]);
            tb.provider()
        }
        "pg_roles" | "pg_user" => {
            let (oid_col, name_col) = if name == "pg_roles" {
                ("oid", "rolname")
            } else {
                ("usesysid", "usename")
            };
            let super_col = if name == "pg_roles" {
                "rolsuper"
            } else {
                "usesuper"
            };
            let mut tb = Table::new(&[(oid_col, 'o'), (name_col, 't'), (super_col, 'b')]);
            tb.row(vec![V::O(SUPERUSER_OID), t("postgres"), V::B(true)]);
            if user != "postgres" {
                tb.row(vec![V::O(SUPERUSER_OID + 1), t(user), V::B(true)]);
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
        "pg_inherits" => {
            Table::new(&[("inhrelid", 'o'), ("inhparent", 'o'), ("inhseqno", 'i')]).provider()
        }
        "pg_partitioned_table" => {
            Table::new(&[("partrelid", 'o'), ("partstrat", 't'), ("partnatts", 's')]).provider()
        }
        _ => return None,
    })
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
