//! The row store: one sled tree per shard (`t{table}.s{shard}`), keys in memcomparable order
//! ([`orochi_common::keycodec`]), values in the row encoding ([`orochi_common::rowcodec`]).
//! Table definitions live in the `meta` tree so stored rows can be decoded after a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::keycodec;
use orochi_common::rowcodec;
use orochi_common::schema::{ShardIndex, TableDef, TableId};
use orochi_common::service::Row;
use parking_lot::RwLock;
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// Errors of the storage layer, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening row store at {path}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("row store I/O on table {table}")]
    Io {
        table: TableId,
        #[source]
        source: sled::Error,
    },
    #[error("decoding stored definition of table {table}")]
    Meta {
        table: TableId,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            StoreError::Open { .. } | StoreError::Io { .. } => SqlState::IoError,
            StoreError::Meta { .. } => SqlState::InternalError,
        }
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        DbError::new(e.sqlstate(), msg)
    }
}

/// A table's definition and its shard trees.
pub struct TableEntry {
    pub def: TableDef,
    pub shards: Vec<sled::Tree>,
    types: Vec<orochi_common::types::SqlType>,
    key_types: Vec<orochi_common::types::SqlType>,
}

impl TableEntry {
    fn new(def: TableDef, shards: Vec<sled::Tree>) -> Self {
        let types = def.column_types();
        let key_types = def.key_types();
        TableEntry {
            def,
            shards,
            types,
            key_types,
        }
    }

    pub fn decode_row(&self, bytes: &[u8]) -> DbResult<Row> {
        rowcodec::decode_row(&self.types, |i| self.def.columns[i].missing.clone(), bytes)
    }

    pub fn encode_row(&self, row: &[Datum]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + row.len() * 8);
        rowcodec::encode_row(row, &mut out);
        out
    }

    /// The shard that owns an encoded primary key.
    pub fn shard_of_key(&self, key: &[u8]) -> DbResult<ShardIndex> {
        let values = keycodec::decode_key(&self.key_types, key)?;
        Ok(self
            .def
            .shard_of_value(&values[self.def.distribution_key_position()]))
    }

    pub fn tree(&self, shard: ShardIndex) -> DbResult<&sled::Tree> {
        self.shards
            .get(shard as usize)
            .ok_or_else(|| DbError::internal(format!("table {} has no shard {shard}", self.def.id)))
    }
}

fn tree_name(table: TableId, shard: ShardIndex) -> String {
    format!("t{table}.s{shard}")
}

/// One change to apply at commit.
pub struct Change {
    pub table: TableId,
    pub shard: ShardIndex,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub struct RowStore {
    db: sled::Db,
    meta: sled::Tree,
    tables: RwLock<HashMap<TableId, Arc<TableEntry>>>,
}

impl RowStore {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<RowStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        let store = RowStore {
            db,
            meta,
            tables: RwLock::new(HashMap::new()),
        };
        for item in store.meta.iter() {
            let (k, v) = item.map_err(open_err)?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let def: TableDef = serde_json::from_slice(&v)
                .map_err(|source| StoreError::Meta { table: id, source })?;
            let entry = store.open_entry(def)?;
            store.tables.write().insert(id, Arc::new(entry));
        }
        Ok(store)
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn open_entry(&self, def: TableDef) -> Result<TableEntry, StoreError> {
        let shards = (0..def.shard_count)
            .map(|s| self.db.open_tree(tree_name(def.id, s)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StoreError::Io {
                table: def.id,
                source,
            })?;
        Ok(TableEntry::new(def, shards))
    }

    fn save_def(&self, def: &TableDef) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(def).expect("table definitions serialize");
        self.meta
            .insert(def.id.to_be_bytes(), bytes)
            .map_err(|source| StoreError::Io {
                table: def.id,
                source,
            })?;
        Ok(())
    }

    pub fn create_table(&self, def: &TableDef) -> DbResult<()> {
        self.save_def(def)?;
        let entry = self.open_entry(def.clone())?;
        self.tables.write().insert(def.id, Arc::new(entry));
        Ok(())
    }

    pub fn alter_table(&self, def: &TableDef) -> DbResult<()> {
        self.create_table(def)
    }

    pub fn drop_table(&self, id: TableId) -> DbResult<()> {
        let Some(entry) = self.tables.write().remove(&id) else {
            return Ok(());
        };
        for s in 0..entry.def.shard_count {
            self.db
                .drop_tree(tree_name(id, s))
                .map_err(|source| StoreError::Io { table: id, source })?;
        }
        self.meta
            .remove(id.to_be_bytes())
            .map_err(|source| StoreError::Io { table: id, source })?;
        Ok(())
    }

    pub fn truncate(&self, id: TableId) -> DbResult<()> {
        let entry = self.table(id)?;
        for t in &entry.shards {
            t.clear()
                .map_err(|source| StoreError::Io { table: id, source })?;
        }
        Ok(())
    }

    pub fn table(&self, id: TableId) -> DbResult<Arc<TableEntry>> {
        self.tables.read().get(&id).cloned().ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedTable,
                format!("table {id} does not exist on this worker"),
            )
        })
    }

    /// Applies changes to several shards atomically (one sled transaction over their trees).
    /// Not durable until [`RowStore::flush`].
    pub fn apply(&self, changes: &[Change]) -> DbResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        // collect the distinct trees involved
        let mut trees: Vec<sled::Tree> = Vec::new();
        let mut tree_of_change = Vec::with_capacity(changes.len());
        let mut index: HashMap<(TableId, ShardIndex), usize> = HashMap::new();
        let tables = self.tables.read();
        for c in changes {
            let i = match index.get(&(c.table, c.shard)) {
                Some(i) => *i,
                None => {
                    let entry = tables.get(&c.table).ok_or_else(|| {
                        DbError::new(
                            SqlState::UndefinedTable,
                            format!("table {} was dropped by a concurrent transaction", c.table),
                        )
                    })?;
                    trees.push(entry.tree(c.shard)?.clone());
                    index.insert((c.table, c.shard), trees.len() - 1);
                    trees.len() - 1
                }
            };
            tree_of_change.push(i);
        }
        drop(tables);
        if trees.len() == 1 {
            let mut batch = sled::Batch::default();
            for c in changes {
                match &c.value {
                    Some(v) => batch.insert(c.key.as_slice(), v.as_slice()),
                    None => batch.remove(c.key.as_slice()),
                }
            }
            return trees[0].apply_batch(batch).map_err(|source| {
                StoreError::Io {
                    table: changes[0].table,
                    source,
                }
                .into()
            });
        }
        use sled::Transactional;
        let result: Result<(), TransactionError<()>> = trees.as_slice().transaction(|txs| {
            for (c, &ti) in changes.iter().zip(&tree_of_change) {
                match &c.value {
                    Some(v) => {
                        txs[ti].insert(c.key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        txs[ti].remove(c.key.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        result.map_err(|e| match e {
            TransactionError::Storage(source) => StoreError::Io {
                table: changes[0].table,
                source,
            }
            .into(),
            TransactionError::Abort(()) => DbError::internal("row store transaction aborted"),
        })
    }

    /// Makes every applied change durable (fsync).
    pub fn flush(&self) -> DbResult<()> {
        self.db
            .flush()
            .map_err(|source| StoreError::Io { table: 0, source })?;
        Ok(())
    }
}
