//! CREATE/DROP/ALTER TABLE, TRUNCATE, CREATE SCHEMA.

use datafusion::common::DFSchema;
use datafusion::sql::sqlparser::ast;
use futures::TryStreamExt;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::{ColumnDef, ColumnDefault, ROWID_COLUMN, TableDef};
use orochi_common::service::{ScanRequest, TxnId};
use orochi_common::types::SqlType;

use crate::catalog::SequenceDef;
use crate::handler::dml::{ROWID_SEQUENCE, normalize_ident, object_name_parts, resolve_table};
use crate::handler::eval::{Evaluator, empty_batch};
use crate::privilege::Privilege;
use crate::session::{Session, StatementResult};

fn not_supported(what: impl Into<String>) -> DbError {
    DbError::new(SqlState::FeatureNotSupported, what.into())
}

/// Maps a SQL type name to our column type; `serial` kinds return the integer type and `true`.
pub fn sql_type(dt: &ast::DataType) -> DbResult<(SqlType, bool)> {
    use ast::DataType as D;
    let char_len = |l: &Option<ast::CharacterLength>| match l {
        Some(ast::CharacterLength::IntegerLength { length, .. }) => Some(*length as u32),
        _ => None,
    };
    let numeric = |info: &ast::ExactNumberInfo| -> DbResult<SqlType> {
        Ok(match info {
            ast::ExactNumberInfo::None => SqlType::Numeric(None),
            ast::ExactNumberInfo::Precision(p) => numeric_spec(*p, 0)?,
            ast::ExactNumberInfo::PrecisionAndScale(p, s) => numeric_spec(*p, *s)?,
        })
    };
    let t = match dt {
        D::Bool | D::Boolean => SqlType::Bool,
        D::SmallInt(_) | D::Int2(_) => SqlType::Int2,
        D::Int(_) | D::Integer(_) | D::Int4(_) => SqlType::Int4,
        D::BigInt(_) | D::Int8(_) => SqlType::Int8,
        D::Real | D::Float4 => SqlType::Float4,
        D::Double(_) | D::DoublePrecision | D::Float8 => SqlType::Float8,
        D::Float(info) => match info {
            ast::ExactNumberInfo::Precision(p) if *p <= 24 => SqlType::Float4,
            _ => SqlType::Float8,
        },
        D::Numeric(info) | D::Decimal(info) | D::Dec(info) => numeric(info)?,
        D::Text | D::String(_) => SqlType::Text,
        D::Varchar(l) | D::CharacterVarying(l) | D::CharVarying(l) => SqlType::Varchar(char_len(l)),
        D::Char(l) | D::Character(l) => SqlType::Char(char_len(l).unwrap_or(1)),
        D::Bytea => SqlType::Bytea,
        D::Date => SqlType::Date,
        D::Timestamp(_, tz) => match tz {
            ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz => SqlType::Timestamptz,
            _ => SqlType::Timestamp,
        },
        D::Uuid => SqlType::Uuid,
        D::JSON => SqlType::Json,
        D::JSONB => SqlType::Jsonb,
        D::Interval {
            fields: None,
            precision: None,
        } => SqlType::Interval,
        D::Custom(name, _) => {
            let n = name.to_string().to_lowercase();
            return match n.trim_matches('"') {
                "serial" | "serial4" => Ok((SqlType::Int4, true)),
                "bigserial" | "serial8" => Ok((SqlType::Int8, true)),
                "smallserial" | "serial2" => Ok((SqlType::Int2, true)),
                "timestamptz" => Ok((SqlType::Timestamptz, false)),
                "int2" => Ok((SqlType::Int2, false)),
                "int4" => Ok((SqlType::Int4, false)),
                "int8" => Ok((SqlType::Int8, false)),
                "float4" => Ok((SqlType::Float4, false)),
                "float8" => Ok((SqlType::Float8, false)),
                "bool" => Ok((SqlType::Bool, false)),
                other => Err(DbError::new(
                    SqlState::UndefinedObject,
                    format!("type \"{other}\" does not exist"),
                )),
            };
        }
        other => return Err(not_supported(format!("type {other} is not supported yet"))),
    };
    Ok((t, false))
}

fn numeric_spec(p: u64, s: i64) -> DbResult<SqlType> {
    if p == 0 || p > orochi_common::types::MAX_NUMERIC_PRECISION as u64 {
        return Err(DbError::new(
            SqlState::InvalidParameterValue,
            format!(
                "NUMERIC precision {p} must be between 1 and {}",
                orochi_common::types::MAX_NUMERIC_PRECISION
            ),
        ));
    }
    if s < 0 || s as u64 > p {
        return Err(DbError::new(
            SqlState::InvalidParameterValue,
            format!("NUMERIC scale {s} must be between 0 and precision {p}"),
        ));
    }
    Ok(SqlType::Numeric(Some((p as u8, s as i8))))
}

/// A column DEFAULT: constants are evaluated once, `now()`-like and `nextval()` calls are kept
/// as such, anything else is stored as SQL and evaluated per row.
fn column_default(s: &Session, e: &ast::Expr, ty: SqlType) -> DbResult<ColumnDefault> {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if matches!(
        lower.as_str(),
        "now()"
            | "current_timestamp"
            | "current_timestamp()"
            | "localtimestamp"
            | "current_date"
            | "transaction_timestamp()"
            | "statement_timestamp()"
    ) {
        return Ok(ColumnDefault::Now);
    }
    if let Some(v) =
        crate::handler::eval::const_datum(e, ty, &vec![], &orochi_common::zone::Zone::UTC)
    {
        return Ok(ColumnDefault::Const(v?));
    }
    // fold other constant expressions now if they have no volatile calls
    let ev = Evaluator::plan(s, std::slice::from_ref(e), &DFSchema::empty(), &vec![])?;
    if lower.contains('(') {
        return Ok(ColumnDefault::Expr(text));
    }
    let arrays = ev.evaluate(&empty_batch(1))?;
    Ok(ColumnDefault::Const(Datum::from_arrow(
        arrays[0].as_ref(),
        0,
        ty,
    )?))
}

fn index_column_name(c: &ast::IndexColumn) -> DbResult<String> {
    match &c.column.expr {
        ast::Expr::Identifier(i) => Ok(normalize_ident(i)),
        other => Err(not_supported(format!(
            "key on expression {other} is not supported"
        ))),
    }
}

pub async fn handle_create_table(
    s: &mut Session,
    ct: &ast::CreateTable,
) -> DbResult<StatementResult> {
    if ct.query.is_some() {
        return Err(not_supported("CREATE TABLE AS is not supported yet"));
    }
    let (schema, name) = object_name_parts(&ct.name)?;
    let schema = creation_schema(s, schema)?;
    s.check_schema(&schema, Privilege::Create)?;
    if s.instance.catalog.table(&schema, &name).is_some() {
        if ct.if_not_exists {
            return Ok(StatementResult::Command("CREATE TABLE".into()));
        }
        return Err(DbError::new(
            SqlState::DuplicateTable,
            format!("relation \"{name}\" already exists"),
        ));
    }
    let id = s.instance.catalog.allocate_table_id()?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut primary_key: Vec<String> = Vec::new();
    let mut sequences = Vec::new();
    for c in &ct.columns {
        let cname = normalize_ident(&c.name);
        if columns.iter().any(|x| x.name == cname) {
            return Err(DbError::new(
                SqlState::DuplicateColumn,
                format!("column \"{cname}\" specified more than once"),
            ));
        }
        let (ty, serial) = sql_type(&c.data_type)?;
        let mut col = ColumnDef::new(cname.clone(), ty);
        // GENERATED { ALWAYS | BY DEFAULT } AS IDENTITY: a sequence, as a serial has
        let identity = c.options.iter().find_map(|o| match &o.option {
            ast::ColumnOption::Generated {
                generated_as,
                sequence_options,
                generation_expr: None,
                ..
            } => Some((generated_as, sequence_options)),
            _ => None,
        });
        if let Some((generated_as, options)) = identity {
            col.identity = Some(match generated_as {
                ast::GeneratedAs::Always => orochi_common::schema::Identity::Always,
                ast::GeneratedAs::ByDefault => orochi_common::schema::Identity::ByDefault,
                ast::GeneratedAs::ExpStored => {
                    return Err(not_supported("generated columns are not supported yet"));
                }
            });
            if !ty.is_integer() {
                return Err(DbError::new(
                    SqlState::InvalidParameterValue,
                    "identity column type must be smallint, integer, or bigint",
                ));
            }
            if serial
                || c.options
                    .iter()
                    .any(|o| matches!(o.option, ast::ColumnOption::Default(_)))
            {
                return Err(DbError::new(
                    SqlState::SyntaxError,
                    format!(
                        "both default and identity specified for column \"{cname}\" of table \"{name}\""
                    ),
                ));
            }
            if options.as_ref().is_some_and(|o| !o.is_empty()) {
                return Err(not_supported(
                    "identity sequence options are not supported yet",
                ));
            }
        }
        if serial || identity.is_some() {
            let seq = format!("{name}_{cname}_seq");
            col.default = Some(ColumnDefault::Sequence(format!("{schema}.{seq}")));
            // as Postgres prints it under the default search path: qualified outside `public`
            let shown = if schema == "public" {
                seq.clone()
            } else {
                format!("{schema}.{seq}")
            };
            // an identity column has no default expression in Postgres' catalogs
            if col.identity.is_none() {
                col.default_sql = Some(format!("nextval('{shown}'::regclass)"));
            }
            col.nullable = false;
            let max = match ty {
                SqlType::Int2 => i16::MAX as i64,
                SqlType::Int4 => i32::MAX as i64,
                _ => i64::MAX,
            };
            sequences.push(SequenceDef {
                name: seq,
                schema: schema.clone(),
                reserved: 0,
                increment: 1,
                max_value: max,
                owned_by: Some((id, cname.clone())),
                owner: None,
            });
        }
        for opt in &c.options {
            match &opt.option {
                ast::ColumnOption::NotNull => col.nullable = false,
                ast::ColumnOption::Null => {}
                ast::ColumnOption::Generated {
                    generation_expr: None,
                    ..
                } if col.identity.is_some() => {}
                ast::ColumnOption::Default(e) => {
                    col.default = Some(column_default(s, e, ty)?);
                    col.default_sql = Some(default_as_postgres_prints_it(e, ty));
                }
                ast::ColumnOption::PrimaryKey(_) => {
                    if !primary_key.is_empty() {
                        return Err(DbError::new(
                            SqlState::InvalidTableDefinition,
                            format!("multiple primary keys for table \"{name}\" are not allowed"),
                        ));
                    }
                    primary_key.push(cname.clone());
                }
                other => {
                    return Err(not_supported(format!(
                        "column constraint {other} is not supported yet"
                    )));
                }
            }
        }
        columns.push(col);
    }
    for tc in &ct.constraints {
        match tc {
            ast::TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(DbError::new(
                        SqlState::InvalidTableDefinition,
                        format!("multiple primary keys for table \"{name}\" are not allowed"),
                    ));
                }
                for c in &pk.columns {
                    primary_key.push(index_column_name(c)?);
                }
            }
            other => {
                return Err(not_supported(format!(
                    "table constraint {other} is not supported yet"
                )));
            }
        }
    }
    let mut distribution: Option<String> = None;
    let options = match &ct.table_options {
        ast::CreateTableOptions::With(o)
        | ast::CreateTableOptions::Options(o)
        | ast::CreateTableOptions::Plain(o)
        | ast::CreateTableOptions::TableProperties(o) => o.clone(),
        ast::CreateTableOptions::None => vec![],
    };
    for o in &options {
        if let ast::SqlOption::KeyValue { key, value } = o {
            match normalize_ident(key).as_str() {
                "distribution_column" => {
                    distribution = Some(value.to_string().trim_matches('\'').to_lowercase())
                }
                "fillfactor" | "autovacuum_enabled" => {}
                other => {
                    return Err(DbError::new(
                        SqlState::InvalidParameterValue,
                        format!("unrecognized parameter \"{other}\""),
                    ));
                }
            }
        }
    }
    let hidden_rowid = primary_key.is_empty();
    let mut pk_idx = Vec::new();
    for k in &primary_key {
        let i = columns.iter().position(|c| &c.name == k).ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedColumn,
                format!("column \"{k}\" named in key does not exist"),
            )
        })?;
        if pk_idx.contains(&i) {
            return Err(DbError::new(
                SqlState::DuplicateColumn,
                format!("column \"{k}\" appears twice in primary key constraint"),
            ));
        }
        columns[i].nullable = false;
        pk_idx.push(i);
    }
    if hidden_rowid {
        let mut c = ColumnDef::new(ROWID_COLUMN, SqlType::Int8);
        c.hidden = true;
        c.nullable = false;
        columns.push(c);
        pk_idx.push(columns.len() - 1);
        ensure_rowid_sequence(s)?;
    }
    let distribution_column = match distribution {
        None => pk_idx[0],
        Some(d) => {
            let i = columns.iter().position(|c| c.name == d).ok_or_else(|| {
                DbError::new(
                    SqlState::UndefinedColumn,
                    format!("column \"{d}\" does not exist"),
                )
            })?;
            if !pk_idx.contains(&i) {
                return Err(DbError::new(
                    SqlState::InvalidTableDefinition,
                    format!("distribution column \"{d}\" must be part of the primary key"),
                ));
            }
            i
        }
    };
    let def = TableDef {
        id,
        schema,
        name,
        columns,
        primary_key: pk_idx,
        distribution_column,
        shard_count: s
            .settings
            .lock()
            .get("orochi.default_shard_count")?
            .parse()
            .map_err(|_| DbError::internal("orochi.default_shard_count is not a number"))?,
        hidden_rowid,
        version: 1,
        reference: false,
        workers: s.instance.service.placement_width(),
    };
    for seq in sequences {
        s.instance.catalog.create_sequence(seq)?;
    }
    s.instance.service.create_table(&def).await?;
    let id = def.id;
    s.instance.catalog.put_table(def)?;
    if s.role != crate::privilege::BOOTSTRAP_SUPERUSER {
        s.instance
            .catalog
            .put_table_acl(id, &crate::privilege::Acl::owned_by(&s.role))?;
    }
    Ok(StatementResult::Command("CREATE TABLE".into()))
}

fn ensure_rowid_sequence(s: &Session) -> DbResult<()> {
    if !s
        .instance
        .catalog
        .sequence_exists("pg_catalog", ROWID_SEQUENCE)
    {
        s.instance.catalog.create_sequence(SequenceDef {
            name: ROWID_SEQUENCE.into(),
            schema: "pg_catalog".into(),
            reserved: 0,
            increment: 1,
            max_value: i64::MAX,
            owned_by: None,
            owner: None,
        })?;
    }
    Ok(())
}

/// The schema a new object goes in: the one named, else the first of the search path; it
/// must exist.
fn creation_schema(s: &Session, named: Option<String>) -> DbResult<String> {
    let schema = named.unwrap_or_else(|| {
        s.search_path
            .first()
            .cloned()
            .unwrap_or_else(|| "public".into())
    });
    if !s.instance.catalog.schema_exists(&schema) {
        return Err(DbError::new(
            SqlState::InvalidSchemaName,
            format!("schema \"{schema}\" does not exist"),
        ));
    }
    Ok(schema)
}

/// `CREATE SEQUENCE [IF NOT EXISTS] name [AS type] [INCREMENT [BY] n] [START [WITH] n]
/// [MAXVALUE n | NO MAXVALUE] [CACHE n] [NO CYCLE]`: ascending sequences from 1 (or START).
pub fn handle_create_sequence(
    s: &Session,
    if_not_exists: bool,
    name: &ast::ObjectName,
    data_type: Option<&ast::DataType>,
    options: &[ast::SequenceOptions],
) -> DbResult<StatementResult> {
    let (schema, seq) = object_name_parts(name)?;
    let schema = creation_schema(s, schema)?;
    crate::privilege::check_schema(
        &s.instance.catalog,
        &s.access(),
        &schema,
        crate::privilege::Privilege::Create,
    )?;
    let exists = s.instance.catalog.sequence_exists(&schema, &seq)
        || s.instance.catalog.table(&schema, &seq).is_some();
    if exists {
        if if_not_exists {
            return Ok(StatementResult::Command("CREATE SEQUENCE".into()));
        }
        return Err(DbError::new(
            SqlState::DuplicateTable,
            format!("relation \"{seq}\" already exists"),
        ));
    }
    let mut max_value = match data_type.map(sql_type).transpose()?.map(|(t, _)| t) {
        None | Some(SqlType::Int8) => i64::MAX,
        Some(SqlType::Int4) => i32::MAX as i64,
        Some(SqlType::Int2) => i16::MAX as i64,
        Some(_) => {
            return Err(DbError::new(
                SqlState::InvalidParameterValue,
                "sequence type must be smallint, integer, or bigint",
            ));
        }
    };
    let number = |e: &ast::Expr, what: &str| -> DbResult<i64> {
        let text = match e {
            ast::Expr::Value(v) => v.value.to_string(),
            ast::Expr::UnaryOp {
                op: ast::UnaryOperator::Minus,
                expr,
            } => format!("-{expr}"),
            other => other.to_string(),
        };
        text.parse().map_err(|_| {
            DbError::new(
                SqlState::InvalidParameterValue,
                format!("{what} must be an integer"),
            )
        })
    };
    let (mut increment, mut start) = (1i64, None);
    for o in options {
        match o {
            ast::SequenceOptions::IncrementBy(e, _) => increment = number(e, "INCREMENT")?,
            ast::SequenceOptions::StartWith(e, _) => start = Some(number(e, "START")?),
            ast::SequenceOptions::MaxValue(Some(e)) => max_value = number(e, "MAXVALUE")?,
            ast::SequenceOptions::MaxValue(None)
            | ast::SequenceOptions::Cache(_)
            | ast::SequenceOptions::Cycle(false) => {}
            ast::SequenceOptions::MinValue(None) => {}
            ast::SequenceOptions::MinValue(Some(e)) if number(e, "MINVALUE")? <= 1 => {}
            other => {
                return Err(not_supported(format!(
                    "sequence option{other} is not supported yet"
                )));
            }
        }
    }
    if increment <= 0 {
        return Err(not_supported("descending sequences are not supported yet"));
    }
    let start = start.unwrap_or(1);
    if start < 1 || start > max_value {
        return Err(DbError::new(
            SqlState::InvalidParameterValue,
            format!("START value ({start}) cannot be less than MINVALUE (1)"),
        ));
    }
    s.instance.catalog.create_sequence(SequenceDef {
        name: seq,
        schema,
        // the first value handed out is reserved + increment
        reserved: start - increment,
        increment,
        max_value,
        owned_by: None,
        owner: Some(s.role.clone()),
    })?;
    Ok(StatementResult::Command("CREATE SEQUENCE".into()))
}

pub async fn handle_drop(
    s: &mut Session,
    object_type: &ast::ObjectType,
    if_exists: bool,
    names: &[ast::ObjectName],
    cascade: bool,
) -> DbResult<StatementResult> {
    match object_type {
        ast::ObjectType::Table => {
            // resolve all first: DROP TABLE a, b fails as a whole if one is missing
            let mut defs = Vec::new();
            for n in names {
                match resolve_table(s, n) {
                    Ok(d) => defs.push(d),
                    Err(_) if if_exists => {}
                    Err(e) => return Err(e),
                }
            }
            for d in &defs {
                s.check_table_owner(d)?;
            }
            for d in defs {
                s.instance.catalog.remove_table(d.id)?;
                s.instance.service.drop_table(d.id).await?;
            }
            Ok(StatementResult::Command("DROP TABLE".into()))
        }
        ast::ObjectType::Sequence => {
            let mut found = Vec::new();
            for n in names {
                let (schema, seq) = object_name_parts(n)?;
                let schema = match schema {
                    Some(schema) => Some(schema),
                    None => s
                        .search_path
                        .iter()
                        .find(|sc| s.instance.catalog.sequence_exists(sc, &seq))
                        .cloned(),
                };
                match schema.and_then(|sc| s.instance.catalog.sequence(&sc, &seq)) {
                    Some(def) => found.push(def),
                    None if if_exists => {}
                    None => {
                        return Err(DbError::new(
                            SqlState::UndefinedTable,
                            format!("sequence \"{seq}\" does not exist"),
                        ));
                    }
                }
            }
            for def in &found {
                if let Some((table, column)) = &def.owned_by {
                    let table = s.instance.catalog.table_by_id(*table);
                    return Err(DbError::new(
                        SqlState::DependentObjectsStillExist,
                        format!(
                            "cannot drop sequence {} because other objects depend on it",
                            def.name
                        ),
                    )
                    .with_detail(format!(
                        "default value for column {column} of table {} depends on sequence {}",
                        table.map(|t| t.name.clone()).unwrap_or_default(),
                        def.name
                    )));
                }
                let owner = def
                    .owner
                    .clone()
                    .unwrap_or_else(|| crate::privilege::BOOTSTRAP_SUPERUSER.into());
                s.access().check_owner(
                    &crate::privilege::Acl::owned_by(&owner),
                    crate::privilege::ObjectKind::Sequence,
                    &def.name,
                )?;
            }
            for def in found {
                s.instance.catalog.remove_sequence(&def.schema, &def.name)?;
            }
            Ok(StatementResult::Command("DROP SEQUENCE".into()))
        }
        ast::ObjectType::Schema => {
            for n in names {
                let (_, name) = object_name_parts(n)?;
                if !s.instance.catalog.schema_exists(&name) {
                    if if_exists {
                        continue;
                    }
                    return Err(DbError::new(
                        SqlState::InvalidSchemaName,
                        format!("schema \"{name}\" does not exist"),
                    ));
                }
                let access = s.access();
                access.check_owner(
                    &s.instance.catalog.schema_acl(&name),
                    crate::privilege::ObjectKind::Schema,
                    &name,
                )?;
                if cascade {
                    for t in s.instance.catalog.tables_in(&name) {
                        s.check_table_owner(&t)?;
                        s.instance.catalog.remove_table(t.id)?;
                        s.instance.service.drop_table(t.id).await?;
                    }
                }
                s.instance.catalog.drop_schema(&name)?;
            }
            Ok(StatementResult::Command("DROP SCHEMA".into()))
        }
        other => Err(not_supported(format!("DROP {other} is not supported yet"))),
    }
}

pub async fn handle_truncate(s: &mut Session, t: &ast::Truncate) -> DbResult<StatementResult> {
    let mut defs = Vec::new();
    for tt in &t.table_names {
        let def = resolve_table(s, &tt.name)?;
        s.check_table(&def, Privilege::Truncate)?;
        defs.push(def);
    }
    for d in defs {
        s.instance.service.truncate(d.id).await?;
    }
    Ok(StatementResult::Command("TRUNCATE TABLE".into()))
}

pub fn handle_create_schema(
    s: &mut Session,
    name: &ast::SchemaName,
    if_not_exists: bool,
) -> DbResult<StatementResult> {
    let (n, owner) = match name {
        ast::SchemaName::Simple(n) => (object_name_parts(n)?.1, None),
        ast::SchemaName::NamedAuthorization(n, o) => {
            (object_name_parts(n)?.1, Some(normalize_ident(o)))
        }
        ast::SchemaName::UnnamedAuthorization(i) => (normalize_ident(i), Some(normalize_ident(i))),
    };
    // CREATE on the database: its owner (the bootstrap superuser) or a superuser
    let access = s.access();
    if !access.superuser {
        return Err(crate::privilege::permission_denied_database(&s.database));
    }
    let owner = owner.unwrap_or_else(|| s.role.clone());
    if s.instance.catalog.role(&owner).is_none() {
        return Err(DbError::new(
            SqlState::UndefinedObject,
            format!("role \"{owner}\" does not exist"),
        ));
    }
    if s.instance.catalog.schema_exists(&n) {
        if if_not_exists {
            return Ok(StatementResult::Command("CREATE SCHEMA".into()));
        }
        return Err(DbError::new(
            SqlState::DuplicateSchema,
            format!("schema \"{n}\" already exists"),
        ));
    }
    s.instance.catalog.create_schema(&n)?;
    if owner != crate::privilege::BOOTSTRAP_SUPERUSER {
        s.instance
            .catalog
            .put_schema_acl(&n, &crate::privilege::Acl::owned_by(&owner))?;
    }
    Ok(StatementResult::Command("CREATE SCHEMA".into()))
}

pub async fn handle_alter_table(
    s: &mut Session,
    at: &ast::AlterTable,
    txn: TxnId,
) -> DbResult<StatementResult> {
    let def = match resolve_table(s, &at.name) {
        Ok(d) => d,
        Err(_) if at.if_exists => return Ok(StatementResult::Command("ALTER TABLE".into())),
        Err(e) => return Err(e),
    };
    s.check_table_owner(&def)?;
    let mut def = (*def).clone();
    for op in &at.operations {
        match op {
            ast::AlterTableOperation::AddColumn {
                column_def,
                if_not_exists,
                ..
            } => {
                let cname = normalize_ident(&column_def.name);
                if def.column_index(&cname).is_some() {
                    if *if_not_exists {
                        continue;
                    }
                    return Err(DbError::new(
                        SqlState::DuplicateColumn,
                        format!(
                            "column \"{cname}\" of relation \"{}\" already exists",
                            def.name
                        ),
                    ));
                }
                let (ty, serial) = sql_type(&column_def.data_type)?;
                if serial {
                    return Err(not_supported(
                        "ADD COLUMN of a serial type is not supported yet",
                    ));
                }
                let mut col = ColumnDef::new(cname, ty);
                for opt in &column_def.options {
                    match &opt.option {
                        ast::ColumnOption::NotNull => col.nullable = false,
                        ast::ColumnOption::Null => {}
                        ast::ColumnOption::Default(e) => {
                            col.default = Some(column_default(s, e, ty)?);
                            col.default_sql = Some(default_as_postgres_prints_it(e, ty));
                        }
                        other => {
                            return Err(not_supported(format!(
                                "column constraint {other} in ADD COLUMN is not supported yet"
                            )));
                        }
                    }
                }
                // existing rows get the default as their value (Postgres' attmissingval)
                col.missing = match &col.default {
                    Some(ColumnDefault::Const(d)) => d.clone(),
                    Some(ColumnDefault::Now) => {
                        Datum::Timestamptz(chrono::Utc::now().timestamp_micros()).coerce_to(ty)?
                    }
                    Some(_) => {
                        return Err(not_supported(
                            "ADD COLUMN with a volatile default is not supported yet",
                        ));
                    }
                    None => Datum::Null,
                };
                if !col.nullable && col.missing.is_null() && table_has_rows(s, &def, txn).await? {
                    return Err(DbError::new(
                        SqlState::NotNullViolation,
                        format!(
                            "column \"{}\" of relation \"{}\" contains null values",
                            col.name, def.name
                        ),
                    ));
                }
                def.columns.push(col);
            }
            ast::AlterTableOperation::DropColumn {
                column_names,
                if_exists,
                ..
            } => {
                for cn in column_names {
                    let cname = normalize_ident(cn);
                    let Some(i) = def.column_index(&cname) else {
                        if *if_exists {
                            continue;
                        }
                        return Err(DbError::new(
                            SqlState::UndefinedColumn,
                            format!(
                                "column \"{cname}\" of relation \"{}\" does not exist",
                                def.name
                            ),
                        ));
                    };
                    if def.primary_key.contains(&i) {
                        return Err(not_supported(format!(
                            "dropping primary-key column \"{cname}\" is not supported yet"
                        )));
                    }
                    def.columns[i].dropped = true;
                }
            }
            ast::AlterTableOperation::AddConstraint {
                constraint: ast::TableConstraint::PrimaryKey(pk),
                ..
            } => {
                let cols: Vec<String> = pk
                    .columns
                    .iter()
                    .map(index_column_name)
                    .collect::<DbResult<_>>()?;
                def = add_primary_key(s, def, &cols, txn).await?;
                continue;
            }
            other => {
                return Err(not_supported(format!(
                    "ALTER TABLE {other} is not supported yet"
                )));
            }
        }
    }
    def.version += 1;
    s.instance.service.alter_table(&def).await?;
    s.instance.catalog.put_table(def)?;
    Ok(StatementResult::Command("ALTER TABLE".into()))
}

pub async fn table_has_rows(s: &Session, def: &TableDef, txn: TxnId) -> DbResult<bool> {
    let mut stream = s
        .instance
        .service
        .scan(
            txn,
            ScanRequest {
                limit: Some(1),
                ..ScanRequest::full(def, vec![], 1)
            },
        )
        .await?;
    while let Some(b) = stream.try_next().await? {
        if b.num_rows() > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `ALTER TABLE … ADD PRIMARY KEY`: the table's rows are re-keyed into a new table id (so a
/// unique violation leaves the old table untouched), then the catalog switches to it.
async fn add_primary_key(
    s: &Session,
    old: TableDef,
    cols: &[String],
    _txn: TxnId,
) -> DbResult<TableDef> {
    if !old.hidden_rowid {
        return Err(DbError::new(
            SqlState::InvalidTableDefinition,
            format!(
                "multiple primary keys for table \"{}\" are not allowed",
                old.name
            ),
        ));
    }
    let mut new = old.clone();
    new.id = s.instance.catalog.allocate_table_id()?;
    let mut pk = Vec::new();
    for c in cols {
        let i = new.column_index(c).ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedColumn,
                format!("column \"{c}\" of relation \"{}\" does not exist", new.name),
            )
        })?;
        new.columns[i].nullable = false;
        pk.push(i);
    }
    new.primary_key = pk;
    new.distribution_column = new.primary_key[0];
    new.hidden_rowid = false;
    // the hidden row id stays as a dropped column so stored rows keep decoding
    if let Some(r) = new.columns.iter_mut().find(|c| c.hidden) {
        r.hidden = false;
        r.dropped = true;
    }
    new.version += 1;
    let check = |row: &[Datum]| -> DbResult<()> {
        for &k in &new.primary_key {
            if row[k].is_null() {
                return Err(DbError::new(
                    SqlState::NotNullViolation,
                    format!(
                        "column \"{}\" of relation \"{}\" contains null values",
                        new.columns[k].name, new.name
                    ),
                ));
            }
        }
        Ok(())
    };
    rewrite_table(s, &old, &new, check).await.map_err(|e| {
        if e.state == SqlState::UniqueViolation {
            DbError::new(
                SqlState::UniqueViolation,
                format!("could not create unique index \"{}_pkey\"", new.name),
            )
            .with_detail(
                e.detail
                    .unwrap_or_default()
                    .replace("already exists", "is duplicated"),
            )
        } else {
            e
        }
    })?;
    // put_table below (in the caller) bumps the version again; keep it consistent
    new.version -= 1;
    Ok(new)
}

/// Moves a table's rows into `new` (a definition of the same columns under a new table id,
/// keyed or placed differently), then switches the catalog to it and drops the old shards.
/// The rows go in as one bulk load that commits before the switch, so a failure (a row
/// `check` refuses, a duplicate key) leaves the old table as it was. The old table is frozen
/// first: once no open transaction has written to it, writes to it fail (55006) until it is
/// gone, so nothing committed to it is left behind (a writer still open after
/// [`REWRITE_WAIT`] fails the rewrite with 55P03 instead).
pub async fn rewrite_table(
    s: &Session,
    old: &TableDef,
    new: &TableDef,
    check: impl Fn(&[Datum]) -> DbResult<()>,
) -> DbResult<()> {
    s.instance
        .service
        .freeze_table(old.id, REWRITE_WAIT)
        .await?;
    let rewritten = copy_rows(s, old, new, check).await;
    if rewritten.is_err() {
        let _ = s.instance.service.unfreeze_table(old.id).await;
    }
    rewritten
}

/// How long a table rewrite waits for the open transactions that wrote to the table.
pub const REWRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn copy_rows(
    s: &Session,
    old: &TableDef,
    new: &TableDef,
    check: impl Fn(&[Datum]) -> DbResult<()>,
) -> DbResult<()> {
    s.instance.service.create_table(new).await?;
    let copy_txn = s.instance.new_txn_id();
    let result = async {
        let all: Vec<usize> = (0..old.columns.len()).collect();
        let mut stream = s
            .instance
            .service
            .scan(copy_txn, ScanRequest::full(old, all, 8192))
            .await?;
        while let Some(b) = stream.try_next().await? {
            let mut rows = Vec::with_capacity(b.num_rows());
            for r in 0..b.num_rows() {
                let row: Vec<Datum> = (0..old.columns.len())
                    .map(|c| Datum::from_arrow(b.column(c).as_ref(), r, old.columns[c].ty))
                    .collect::<DbResult<_>>()?;
                check(&row)?;
                rows.push(row);
            }
            // a bulk load into the new table: its keys are checked for duplicates at commit
            s.instance.service.load(copy_txn, new.id, rows).await?;
        }
        s.instance.service.commit(copy_txn).await
    }
    .await;
    if let Err(e) = result {
        s.instance.service.abort(copy_txn).await;
        s.instance.service.drop_table(new.id).await?;
        return Err(e);
    }
    s.instance.catalog.put_table(new.clone())?;
    s.instance.service.drop_table(old.id).await
}

/// A column default the way `pg_get_expr` prints it: a string constant carries a cast to the
/// column's type (`'x'::text`, `'x'::character varying`); anything else as written.
fn default_as_postgres_prints_it(e: &ast::Expr, ty: SqlType) -> String {
    match e {
        ast::Expr::Value(v)
            if matches!(
                v.value,
                ast::Value::SingleQuotedString(_) | ast::Value::EscapedStringLiteral(_)
            ) =>
        {
            format!("{e}::{}", crate::pgtypes::format_type(ty.pg_oid(), None))
        }
        _ => e.to_string(),
    }
}
