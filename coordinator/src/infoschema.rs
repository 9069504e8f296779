//! `information_schema` (the SQL standard's catalog views ORMs and tools read): `schemata`,
//! `tables`, `columns`, `table_constraints`, `key_column_usage`, built from our catalog the way
//! Postgres fills them (type names as `format_type` without modifiers, precision/length from the
//! modifiers, a CHECK constraint per NOT NULL column named `<nsp oid>_<table oid>_<n>_not_null`).

use std::sync::Arc;

use datafusion::datasource::TableProvider;
use orochi_common::types::SqlType;

use crate::catalog::Catalog;
use crate::system::{Table, V, namespace_oid, t};

const DATABASE: &str = "postgres";

fn int(v: Option<i64>) -> V {
    v.map(|v| V::I(v as i32)).unwrap_or(V::Null)
}

fn yes_no(b: bool) -> V {
    t(if b { "YES" } else { "NO" })
}

/// The view `name` as of now, as `who` may see it (as in Postgres, only tables and schemas
/// it owns or holds some privilege on); `None` if there is no such view.
pub fn table(
    catalog: &Catalog,
    name: &str,
    who: &crate::privilege::Access,
) -> Option<Arc<dyn TableProvider>> {
    use crate::privilege::ObjectKind;
    let tables: Vec<_> = catalog
        .all_tables()
        .into_iter()
        .filter(|d| {
            let acl = catalog.table_acl(d.id);
            who.superuser || who.owns(&acl) || !who.held(&acl, ObjectKind::Table).0.is_empty()
        })
        .collect();
    Some(match name {
        "schemata" => {
            let mut tb = Table::new(&[
                ("catalog_name", 't'),
                ("schema_name", 't'),
                ("schema_owner", 't'),
                ("default_character_set_catalog", 't'),
                ("default_character_set_schema", 't'),
                ("default_character_set_name", 't'),
                ("sql_path", 't'),
            ]);
            let mut schemas = vec!["pg_catalog".to_string(), "information_schema".to_string()];
            schemas.extend(catalog.schemas().into_iter().filter(|s| {
                let acl = catalog.schema_acl(s);
                who.superuser || who.owns(&acl) || !who.held(&acl, ObjectKind::Schema).0.is_empty()
            }));
            for s in &schemas {
                let owner = if s == "public" {
                    "pg_database_owner"
                } else {
                    "postgres"
                };
                tb.row(vec![
                    t(DATABASE),
                    t(s),
                    t(owner),
                    V::Null,
                    V::Null,
                    V::Null,
                    V::Null,
                ]);
            }
            tb.provider()
        }
        "tables" => {
            let mut tb = Table::new(&[
                ("table_catalog", 't'),
                ("table_schema", 't'),
                ("table_name", 't'),
                ("table_type", 't'),
                ("self_referencing_column_name", 't'),
                ("reference_generation", 't'),
                ("user_defined_type_catalog", 't'),
                ("user_defined_type_schema", 't'),
                ("user_defined_type_name", 't'),
                ("is_insertable_into", 't'),
                ("is_typed", 't'),
                ("commit_action", 't'),
            ]);
            for d in &tables {
                tb.row(vec![
                    t(DATABASE),
                    t(&d.schema),
                    t(&d.name),
                    t("BASE TABLE"),
                    V::Null,
                    V::Null,
                    V::Null,
                    V::Null,
                    V::Null,
                    t("YES"),
                    t("NO"),
                    V::Null,
                ]);
            }
            tb.provider()
        }
        "columns" => {
            let mut tb = Table::new(&[
                ("table_catalog", 't'),
                ("table_schema", 't'),
                ("table_name", 't'),
                ("column_name", 't'),
                ("ordinal_position", 'i'),
                ("column_default", 't'),
                ("is_nullable", 't'),
                ("data_type", 't'),
                ("character_maximum_length", 'i'),
                ("character_octet_length", 'i'),
                ("numeric_precision", 'i'),
                ("numeric_precision_radix", 'i'),
                ("numeric_scale", 'i'),
                ("datetime_precision", 'i'),
                ("interval_type", 't'),
                ("interval_precision", 'i'),
                ("udt_catalog", 't'),
                ("udt_schema", 't'),
                ("udt_name", 't'),
                ("dtd_identifier", 't'),
                ("is_self_referencing", 't'),
                ("is_identity", 't'),
                ("identity_generation", 't'),
                ("is_generated", 't'),
                ("generation_expression", 't'),
                ("is_updatable", 't'),
            ]);
            for d in &tables {
                for (n, &i) in d.visible_columns().iter().enumerate() {
                    let c = &d.columns[i];
                    let ty = c.ty;
                    let facts = TypeFacts::of(ty);
                    let position = n as i64 + 1;
                    tb.row(vec![
                        t(DATABASE),
                        t(&d.schema),
                        t(&d.name),
                        t(&c.name),
                        int(Some(position)),
                        c.default_sql.as_deref().map(t).unwrap_or(V::Null),
                        yes_no(c.nullable),
                        t(&crate::pgtypes::format_type(ty.pg_oid(), Some(-1))),
                        int(facts.char_length),
                        int(facts.octet_length),
                        int(facts.precision),
                        int(facts.radix),
                        int(facts.scale),
                        int(facts.datetime_precision),
                        V::Null,
                        V::Null,
                        t(DATABASE),
                        t("pg_catalog"),
                        t(ty.typname()),
                        t(&position.to_string()),
                        t("NO"),
                        yes_no(c.identity.is_some()),
                        c.identity.map_or(V::Null, |i| t(i.generation())),
                        t("NEVER"),
                        V::Null,
                        t("YES"),
                    ]);
                }
            }
            tb.provider()
        }
        "table_constraints" => {
            let mut tb = Table::new(&[
                ("constraint_catalog", 't'),
                ("constraint_schema", 't'),
                ("constraint_name", 't'),
                ("table_catalog", 't'),
                ("table_schema", 't'),
                ("table_name", 't'),
                ("constraint_type", 't'),
                ("is_deferrable", 't'),
                ("initially_deferred", 't'),
                ("enforced", 't'),
                ("nulls_distinct", 't'),
            ]);
            for d in &tables {
                let row = |name: &str, kind: &str| {
                    vec![
                        t(DATABASE),
                        t(&d.schema),
                        t(name),
                        t(DATABASE),
                        t(&d.schema),
                        t(&d.name),
                        t(kind),
                        t("NO"),
                        t("NO"),
                        t("YES"),
                        if kind == "PRIMARY KEY" {
                            t("YES")
                        } else {
                            V::Null
                        },
                    ]
                };
                if !d.hidden_rowid {
                    tb.row(row(&format!("{}_pkey", d.name), "PRIMARY KEY"));
                }
                let ns = namespace_oid(&d.schema);
                for (n, &i) in d.visible_columns().iter().enumerate() {
                    if !d.columns[i].nullable {
                        let name = format!("{ns}_{}_{}_not_null", d.id, n + 1);
                        tb.row(row(&name, "CHECK"));
                    }
                }
            }
            tb.provider()
        }
        "key_column_usage" => {
            let mut tb = Table::new(&[
                ("constraint_catalog", 't'),
                ("constraint_schema", 't'),
                ("constraint_name", 't'),
                ("table_catalog", 't'),
                ("table_schema", 't'),
                ("table_name", 't'),
                ("column_name", 't'),
                ("ordinal_position", 'i'),
                ("position_in_unique_constraint", 'i'),
            ]);
            for d in tables.iter().filter(|d| !d.hidden_rowid) {
                for (k, &i) in d.primary_key.iter().enumerate() {
                    tb.row(vec![
                        t(DATABASE),
                        t(&d.schema),
                        t(&format!("{}_pkey", d.name)),
                        t(DATABASE),
                        t(&d.schema),
                        t(&d.name),
                        t(&d.columns[i].name),
                        int(Some(k as i64 + 1)),
                        V::Null,
                    ]);
                }
            }
            tb.provider()
        }
        _ => return None,
    })
}

/// What `information_schema.columns` says about a type's size.
#[derive(Default)]
struct TypeFacts {
    char_length: Option<i64>,
    octet_length: Option<i64>,
    precision: Option<i64>,
    radix: Option<i64>,
    scale: Option<i64>,
    datetime_precision: Option<i64>,
}

impl TypeFacts {
    fn of(ty: SqlType) -> TypeFacts {
        /// Postgres' octet length of an unbounded string: 1 GB.
        const MAX_OCTETS: i64 = 1_073_741_824;
        let binary = |p| TypeFacts {
            precision: Some(p),
            radix: Some(2),
            ..Default::default()
        };
        let integer = |p| TypeFacts {
            scale: Some(0),
            ..binary(p)
        };
        match ty {
            SqlType::Int2 => integer(16),
            SqlType::Int4 => integer(32),
            SqlType::Int8 => integer(64),
            SqlType::Float4 => binary(24),
            SqlType::Float8 => binary(53),
            SqlType::Numeric(spec) => TypeFacts {
                precision: spec.map(|(p, _)| p as i64),
                scale: spec.map(|(_, s)| s as i64),
                radix: Some(10),
                ..Default::default()
            },
            SqlType::Varchar(Some(n)) | SqlType::Char(n) => TypeFacts {
                char_length: Some(n as i64),
                octet_length: Some(n as i64 * 4),
                ..Default::default()
            },
            SqlType::Varchar(None) | SqlType::Text => TypeFacts {
                octet_length: Some(MAX_OCTETS),
                ..Default::default()
            },
            SqlType::Date => TypeFacts {
                datetime_precision: Some(0),
                ..Default::default()
            },
            SqlType::Timestamp | SqlType::Timestamptz | SqlType::Interval => TypeFacts {
                datetime_precision: Some(6),
                ..Default::default()
            },
            _ => TypeFacts::default(),
        }
    }
}
