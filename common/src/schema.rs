//! Table and column definitions: what the coordinator's catalog stores and what a worker needs
//! to encode, decode and route rows.

use serde::{Deserialize, Serialize};

use crate::datum::Datum;
use crate::types::SqlType;

pub type TableId = u64;
pub type ShardIndex = u32;

/// Name of the hidden row-id column added to tables without a primary key.
pub const ROWID_COLUMN: &str = "__orochi_rowid";

/// How a column's value is filled in when an INSERT does not name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ColumnDefault {
    /// A constant, already coerced to the column type.
    Const(Datum),
    /// `now()` / `CURRENT_TIMESTAMP` / `CURRENT_DATE` / ... evaluated per statement.
    Now,
    /// `nextval('<sequence>')` (SERIAL/BIGSERIAL).
    Sequence(String),
    /// Any other expression, kept as SQL text and evaluated by the coordinator.
    Expr(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    pub default: Option<ColumnDefault>,
    /// The default as Postgres would print it (`pg_get_expr`), for catalogs and `\d`.
    pub default_sql: Option<String>,
    /// Dropped columns keep their slot so stored rows still decode.
    pub dropped: bool,
    /// The hidden row id of tables without a primary key.
    pub hidden: bool,
    /// Value of this column in rows written before it was added (`attmissingval`).
    pub missing: Datum,
    /// `GENERATED { ALWAYS | BY DEFAULT } AS IDENTITY` (its values come from the column's
    /// sequence, as a serial's do).
    #[serde(default)]
    pub identity: Option<Identity>,
}

/// An identity column's kind (`pg_attribute.attidentity` 'a' or 'd').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Identity {
    /// An INSERT may not give it a value, nor an UPDATE change it.
    Always,
    ByDefault,
}

impl Identity {
    pub fn attidentity(self) -> &'static str {
        match self {
            Identity::Always => "a",
            Identity::ByDefault => "d",
        }
    }

    /// As `\d` and `information_schema` spell it.
    pub fn generation(self) -> &'static str {
        match self {
            Identity::Always => "ALWAYS",
            Identity::ByDefault => "BY DEFAULT",
        }
    }
}

impl ColumnDef {
    pub fn new(name: impl Into<String>, ty: SqlType) -> Self {
        ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            default: None,
            default_sql: None,
            dropped: false,
            hidden: false,
            missing: Datum::Null,
            identity: None,
        }
    }

    /// Visible to SQL (`SELECT *`, INSERT without a column list).
    pub fn is_visible(&self) -> bool {
        !self.dropped && !self.hidden
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub id: TableId,
    pub schema: String,
    pub name: String,
    /// Physical column list: every column ever added, in order (see [`crate::rowcodec`]).
    pub columns: Vec<ColumnDef>,
    /// Physical indexes of the primary-key columns, in key order.
    pub primary_key: Vec<usize>,
    /// Physical index of the distribution column (a primary-key column).
    pub distribution_column: usize,
    pub shard_count: u32,
    /// Whether the primary key is the hidden row id (no user primary key).
    pub hidden_rowid: bool,
    /// Bumped by every ALTER so caches can tell stale definitions.
    pub version: u32,
    /// A reference table (`create_reference_table`): one shard, a full copy on every worker;
    /// writes go to every copy in one transaction, reads to one.
    #[serde(default)]
    pub reference: bool,
    /// How many workers the shards are placed over (cluster mode): shard *i* lives on worker
    /// *i* mod `workers` of the cluster's worker list, which only grows. 0: standalone.
    #[serde(default)]
    pub workers: u32,
}

impl TableDef {
    pub fn column_types(&self) -> Vec<SqlType> {
        self.columns.iter().map(|c| c.ty).collect()
    }

    pub fn key_types(&self) -> Vec<SqlType> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].ty)
            .collect()
    }

    /// Physical indexes of the visible columns, in order.
    pub fn visible_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| self.columns[i].is_visible())
            .collect()
    }

    /// Physical index of a visible column by (already case-folded) name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.is_visible() && c.name == name)
    }

    /// Position of the distribution column inside the primary key.
    pub fn distribution_key_position(&self) -> usize {
        self.primary_key
            .iter()
            .position(|&c| c == self.distribution_column)
            .expect("distribution column is a primary-key column")
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Encodes the primary key of a full physical row.
    pub fn encode_key(&self, row: &[Datum]) -> Vec<u8> {
        let refs: Vec<&Datum> = self.primary_key.iter().map(|&i| &row[i]).collect();
        crate::keycodec::encode_key(&refs)
    }

    /// Shard owning a full physical row.
    pub fn shard_of_row(&self, row: &[Datum]) -> ShardIndex {
        self.shard_of_value(&row[self.distribution_column])
    }

    /// Shard owning rows whose distribution column equals `value`.
    pub fn shard_of_value(&self, value: &Datum) -> ShardIndex {
        let encoded = crate::keycodec::encode_key(&[value]);
        crate::hash::shard_for_hash(crate::hash::hash_key(&encoded), self.shard_count)
    }
}
