//! The coordinator's catalog: schemas, tables (with their shard layout), sequences, roles,
//! owners and ACLs of tables and schemas, the worker list, and the parameters set with
//! `ALTER SYSTEM`.
//!
//! The catalog is a replicated state machine (`crate::raft`): every change is a [`Command`]
//! appended to the Raft log (openraft, log and snapshots in sled under `<data-dir>/catalog`)
//! and applied, on every coordinator of the group, to the `catalog` tree and the in-memory
//! [`Inner`] derived from it. Standalone, the group has one member. A change returns once it
//! is committed (durable on a majority) and applied here; reads are served from the local copy.
//!
//! Not replicated: two-phase commit decisions (the `local` tree), which belong to the
//! coordinator that ran the transaction, and each coordinator's block of sequence values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::{TableDef, TableId};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::privilege::{Acl, Membership, RoleDef};
use crate::raft::{RaftNode, RaftOptions, RaftStatus};

/// Each coordinator reserves sequence values in blocks of this many through the log (Postgres
/// logs 32 at a time too), so `nextval` is usually a memory operation; a crash skips at most
/// one block.
const SEQUENCE_BLOCK: i64 = 32;
const SEQUENCE_BLOCK_MAX: i64 = 65_536;
/// The first object id handed out (Postgres' FirstNormalObjectId).
const FIRST_OBJECT_ID: TableId = 16384;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceDef {
    pub name: String,
    pub schema: String,
    /// Highest value reserved (by any coordinator).
    pub reserved: i64,
    pub increment: i64,
    pub max_value: i64,
    /// Table/column that owns it (SERIAL), dropped with the table.
    pub owned_by: Option<(TableId, String)>,
    /// The role that created it (CREATE SEQUENCE); `None`: its table's owner, or the
    /// bootstrap superuser.
    #[serde(default)]
    pub owner: Option<String>,
}

/// A change to the catalog, as the Raft log carries it. Applying one is deterministic: it
/// depends only on the replicated state, so every member computes the same outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Writes keys of the `catalog` tree atomically (`None`: remove), unless one of `absent`
    /// exists: then nothing ([`Outcome::Conflict`] names it).
    Write {
        writes: Vec<(String, Option<Vec<u8>>)>,
        absent: Vec<String>,
    },
    /// Hands out `count` consecutive object ids ([`Outcome::Ids`]: the first).
    AllocateIds { count: u64 },
    /// Reserves `values` more values of the sequence stored at `key`
    /// ([`Outcome::Reserved`]).
    ReserveSequence { key: String, values: i64 },
    /// Appends a worker to the worker list unless it is there ([`Outcome::Ids`]: its index),
    /// so workers registering through different coordinators get one order everywhere.
    AppendWorker { address: String },
    /// Decides a distributed transaction (two-phase commit) unless it is decided already:
    /// the first decision stands ([`Outcome::Decided`]: the one that holds), so the
    /// coordinator that ran it and one that resolves it after it died cannot disagree.
    Decide { txn: u64, commit: bool },
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// A key that had to be absent exists.
    Conflict(String),
    Ids(u64),
    /// The reserved values `first..=last` (in steps of the increment).
    Reserved {
        first: i64,
        last: i64,
    },
    /// The key the command needs does not exist.
    Missing,
    /// A transaction's decision: commit (`true`) or abort.
    Decided(bool),
}

#[derive(Default)]
struct Inner {
    schemas: BTreeSet<String>,
    tables: BTreeMap<(String, String), Arc<TableDef>>,
    next_table_id: TableId,
    roles: BTreeMap<String, RoleDef>,
    /// `table/{id}` or `schema/{name}` → owner and ACL; absent: owned by the bootstrap
    /// superuser with the default ACL (`public`: as initdb leaves it).
    acls: BTreeMap<String, Acl>,
    /// `seq/{schema}.{name}` → definition.
    sequences: BTreeMap<String, SequenceDef>,
    /// Role memberships (`GRANT role TO member`), by (role, member); stored under
    /// `member/["role","member"]`.
    members: BTreeMap<(String, String), Membership>,
}

fn member_key(role: &str, member: &str) -> String {
    format!("member/{}", serde_json::json!([role, member]))
}

/// Keys of the `catalog` tree and their new values (`None`: removed).
pub(crate) type Writes = Vec<(String, Option<Vec<u8>>)>;

fn table_acl_key(id: TableId) -> String {
    format!("table/{id}")
}

fn schema_acl_key(name: &str) -> String {
    format!("schema/{name}")
}

const DECISION_PREFIX: &str = "decision/";

fn decision_key(txn: u64) -> String {
    format!("{DECISION_PREFIX}{txn:020}")
}

fn sequence_key(schema: &str, name: &str) -> String {
    format!("seq/{schema}.{name}")
}

fn io(e: sled::Error) -> DbError {
    DbError::new(SqlState::IoError, format!("catalog storage: {e}"))
}

fn corrupt(what: &str, e: serde_json::Error) -> DbError {
    DbError::internal(format!("corrupt catalog entry {what}: {e}"))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalog entries serialize")
}

/// The replicated part of the catalog: the `catalog` tree, and what is derived from it in
/// memory. The Raft state machine (`crate::raft::store`) writes the tree and calls
/// [`CatalogState::reflect`] for each key it changed.
pub struct CatalogState {
    pub(crate) tree: sled::Tree,
    inner: RwLock<Inner>,
    /// Bumped by every applied change, so caches of catalog contents know when to look again.
    version: std::sync::atomic::AtomicU64,
}

impl CatalogState {
    pub(crate) fn load(tree: sled::Tree) -> DbResult<CatalogState> {
        let state = CatalogState {
            tree,
            inner: RwLock::new(Inner::default()),
            version: Default::default(),
        };
        state.reload()?;
        Ok(state)
    }

    /// Rebuilds the in-memory catalog from the tree (at open, and after installing a snapshot).
    pub(crate) fn reload(&self) -> DbResult<()> {
        let mut inner = Inner {
            next_table_id: FIRST_OBJECT_ID,
            ..Default::default()
        };
        for item in self.tree.iter() {
            let (k, v) = item.map_err(io)?;
            reflect(&mut inner, &String::from_utf8_lossy(&k), Some(&v))?;
        }
        *self.inner.write() = inner;
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Brings the in-memory catalog up to keys the state machine just wrote.
    pub(crate) fn reflect(&self, changes: &[(String, Option<Vec<u8>>)]) -> DbResult<()> {
        let mut inner = self.inner.write();
        for (key, value) in changes {
            reflect(&mut inner, key, value.as_deref())?;
        }
        // transaction decisions are not catalog contents: caches need not look again
        if !changes.iter().all(|(k, _)| k.starts_with(DECISION_PREFIX)) {
            self.version
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// Applies `command` to the tree inside the state machine's transaction; returns the
    /// outcome and the keys written, for [`CatalogState::reflect`] once it commits.
    pub(crate) fn execute(
        &self,
        tx: &sled::transaction::TransactionalTree,
        command: &Command,
    ) -> Result<(Outcome, Writes), sled::transaction::UnabortableTransactionError> {
        match command {
            Command::Write { writes, absent } => {
                for key in absent {
                    if tx.get(key.as_bytes())?.is_some() {
                        return Ok((Outcome::Conflict(key.clone()), Vec::new()));
                    }
                }
                for (key, value) in writes {
                    match value {
                        Some(v) => tx.insert(key.as_bytes(), v.as_slice())?,
                        None => tx.remove(key.as_bytes())?,
                    };
                }
                Ok((Outcome::Done, writes.clone()))
            }
            Command::AllocateIds { count } => {
                let stored = tx
                    .get("next_table_id")?
                    .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
                    .unwrap_or(0);
                let first = stored.max(self.inner.read().next_table_id);
                let next = (first + count).to_be_bytes().to_vec();
                tx.insert("next_table_id", next.as_slice())?;
                Ok((
                    Outcome::Ids(first),
                    vec![("next_table_id".to_string(), Some(next))],
                ))
            }
            Command::Decide { txn, commit } => {
                let key = decision_key(*txn);
                if let Some(v) = tx.get(key.as_bytes())? {
                    return Ok((Outcome::Decided(v.as_ref() != b"a"), Vec::new()));
                }
                let v = if *commit {
                    b"c".to_vec()
                } else {
                    b"a".to_vec()
                };
                tx.insert(key.as_bytes(), v.as_slice())?;
                Ok((Outcome::Decided(*commit), vec![(key, Some(v))]))
            }
            Command::AppendWorker { address } => {
                let mut list: Vec<String> = tx
                    .get("workers")?
                    .and_then(|v| serde_json::from_slice(&v).ok())
                    .unwrap_or_default();
                if let Some(i) = list.iter().position(|a| a == address) {
                    return Ok((Outcome::Ids(i as u64), Vec::new()));
                }
                list.push(address.clone());
                let bytes = json(&list);
                tx.insert("workers", bytes.as_slice())?;
                Ok((
                    Outcome::Ids(list.len() as u64 - 1),
                    vec![("workers".to_string(), Some(bytes))],
                ))
            }
            Command::ReserveSequence { key, values } => {
                let Some(bytes) = tx.get(key.as_bytes())? else {
                    return Ok((Outcome::Missing, Vec::new()));
                };
                let Ok(mut def) = serde_json::from_slice::<SequenceDef>(&bytes) else {
                    return Ok((Outcome::Missing, Vec::new()));
                };
                let first = def.reserved.saturating_add(def.increment);
                def.reserved = def
                    .reserved
                    .saturating_add(values.saturating_mul(def.increment));
                let bytes = json(&def);
                tx.insert(key.as_bytes(), bytes.as_slice())?;
                Ok((
                    Outcome::Reserved {
                        first,
                        last: def.reserved,
                    },
                    vec![(key.clone(), Some(bytes))],
                ))
            }
        }
    }
}

/// One key's new value (`None`: removed), reflected in the in-memory catalog.
fn reflect(inner: &mut Inner, key: &str, value: Option<&[u8]>) -> DbResult<()> {
    if let Some(name) = key.strip_prefix("schema/") {
        match value {
            Some(_) => inner.schemas.insert(name.to_string()),
            None => inner.schemas.remove(name),
        };
    } else if let Some(id) = key.strip_prefix("table/") {
        let id: TableId = id
            .parse()
            .map_err(|_| DbError::internal(format!("corrupt catalog key {key}")))?;
        // a rename changes the map key
        inner.tables.retain(|_, t| t.id != id);
        if let Some(v) = value {
            let def: TableDef = serde_json::from_slice(v).map_err(|e| corrupt(key, e))?;
            inner.next_table_id = inner.next_table_id.max(def.id + 1);
            inner
                .tables
                .insert((def.schema.clone(), def.name.clone()), Arc::new(def));
        }
    } else if key.starts_with("seq/") {
        match value {
            Some(v) => {
                let def: SequenceDef = serde_json::from_slice(v).map_err(|e| corrupt(key, e))?;
                inner.sequences.insert(key.to_string(), def);
            }
            None => {
                inner.sequences.remove(key);
            }
        }
    } else if let Some(pair) = key.strip_prefix("member/") {
        let (role, member): (String, String) =
            serde_json::from_str(pair).map_err(|e| corrupt(key, e))?;
        match value {
            Some(v) => {
                let m: Membership = serde_json::from_slice(v).map_err(|e| corrupt(key, e))?;
                inner.members.insert((role, member), m);
            }
            None => {
                inner.members.remove(&(role, member));
            }
        }
    } else if let Some(name) = key.strip_prefix("role/") {
        match value {
            Some(v) => {
                let def: RoleDef = serde_json::from_slice(v).map_err(|e| corrupt(key, e))?;
                inner.roles.insert(def.name.clone(), def);
            }
            None => {
                inner.roles.remove(name);
            }
        }
    } else if let Some(object) = key.strip_prefix("acl/") {
        match value {
            Some(v) => {
                let acl: Acl = serde_json::from_slice(v).map_err(|e| corrupt(key, e))?;
                inner.acls.insert(object.to_string(), acl);
            }
            None => {
                inner.acls.remove(object);
            }
        }
    } else if key == "next_table_id"
        && let Some(v) = value
    {
        let id = u64::from_be_bytes(v.try_into().unwrap_or([0; 8]));
        inner.next_table_id = inner.next_table_id.max(id);
    }
    Ok(())
}

/// A coordinator's block of a sequence's values.
struct SeqBlock {
    /// Next value to hand out, and the last one of the block (`next > last`: none left).
    next: i64,
    last: i64,
    /// Values the next reservation takes: [`SEQUENCE_BLOCK`], doubled (up to
    /// [`SEQUENCE_BLOCK_MAX`]) while reservations come less than a second apart, so a bulk
    /// load numbering a million rows writes the log a few dozen times, not 30,000.
    block: i64,
    last_reserved: Option<std::time::Instant>,
}

pub struct Catalog {
    state: Arc<CatalogState>,
    db: sled::Db,
    raft: RaftNode,
    sequences: Mutex<BTreeMap<String, SeqBlock>>,
}

impl Catalog {
    /// A standalone catalog: a one-member Raft group.
    pub fn open(dir: &Path) -> DbResult<Catalog> {
        Catalog::open_with(dir, &RaftOptions::default())
    }

    pub fn open_with(dir: &Path, raft: &RaftOptions) -> DbResult<Catalog> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .open()
            .map_err(io)?;
        let tree = db.open_tree("catalog").map_err(io)?;
        let state = Arc::new(CatalogState::load(tree)?);
        let node = RaftNode::start(&db, state.clone(), raft)?;
        let catalog = Catalog {
            state,
            db,
            raft: node,
            sequences: Mutex::new(BTreeMap::new()),
        };
        // every member may try; the first one's wins (the others see a conflict). A member
        // of a group waits for a majority of it to be up: until then it cannot serve.
        loop {
            match catalog.bootstrap() {
                Err(e) if e.state == SqlState::ConnectionFailure && raft.peers.len() > 1 => {
                    tracing::warn!(
                        "waiting for a majority of the coordinators' Raft group: {}",
                        e.message
                    );
                }
                r => break r?,
            }
        }
        // commit decisions of a version that kept them in a tree of its own
        let local = catalog.db.open_tree("local").map_err(io)?;
        for item in local.scan_prefix(DECISION_PREFIX) {
            let (k, _) = item.map_err(io)?;
            if let Some(txn) = std::str::from_utf8(&k[DECISION_PREFIX.len()..])
                .ok()
                .and_then(|t| t.parse().ok())
            {
                catalog.decide(txn, true)?;
            }
            local.remove(&k).map_err(io)?;
        }
        Ok(catalog)
    }

    /// The `public` schema and the bootstrap superuser, created once for the whole group.
    fn bootstrap(&self) -> DbResult<()> {
        if !self.schema_exists("public") {
            match self.create_schema("public") {
                Err(e) if e.state == SqlState::DuplicateSchema => {}
                r => r?,
            }
        }
        let superuser = crate::privilege::BOOTSTRAP_SUPERUSER;
        if self.role(superuser).is_none() {
            let key = format!("role/{superuser}");
            self.write(
                vec![(key.clone(), Some(json(&RoleDef::bootstrap())))],
                vec![key],
            )?;
        }
        Ok(())
    }

    /// This member's view of the Raft group (`orochi_raft_status()`).
    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status()
    }

    /// Proposes a change and waits until it is committed and applied here.
    fn propose(&self, command: Command) -> DbResult<Outcome> {
        self.raft.propose(command)
    }

    fn write(
        &self,
        writes: Vec<(String, Option<Vec<u8>>)>,
        absent: Vec<String>,
    ) -> DbResult<Outcome> {
        if writes.is_empty() {
            return Ok(Outcome::Done);
        }
        self.propose(Command::Write { writes, absent })
    }

    /// Parameters set with `ALTER SYSTEM` (lower-case name → value as shown).
    pub fn system_settings(&self) -> DbResult<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for item in self.state.tree.scan_prefix("setting/") {
            let (k, v) = item.map_err(io)?;
            let name = String::from_utf8_lossy(&k["setting/".len()..]).to_string();
            out.insert(name, String::from_utf8_lossy(&v).to_string());
        }
        Ok(out)
    }

    pub fn put_system_setting(&self, name: &str, value: Option<&str>) -> DbResult<()> {
        let value = value.map(|v| v.as_bytes().to_vec());
        self.write(vec![(format!("setting/{name}"), value)], vec![])?;
        Ok(())
    }

    pub fn clear_system_settings(&self) -> DbResult<()> {
        let writes = self
            .system_settings()?
            .into_keys()
            .map(|name| (format!("setting/{name}"), None))
            .collect();
        self.write(writes, vec![])?;
        Ok(())
    }

    pub fn role(&self, name: &str) -> Option<RoleDef> {
        self.state.inner.read().roles.get(name).cloned()
    }

    /// Whether `name` is a superuser role (no copy of the role: checked on every statement).
    pub fn is_superuser(&self, name: &str) -> bool {
        self.state
            .inner
            .read()
            .roles
            .get(name)
            .is_some_and(|r| r.superuser)
    }

    pub fn roles(&self) -> Vec<RoleDef> {
        self.state.inner.read().roles.values().cloned().collect()
    }

    /// Adds or replaces a role, durable on return.
    pub fn put_role(&self, def: RoleDef) -> DbResult<()> {
        self.write(
            vec![(format!("role/{}", def.name), Some(json(&def)))],
            vec![],
        )?;
        Ok(())
    }

    /// Drops a role and its memberships, both ways.
    pub fn remove_role(&self, name: &str) -> DbResult<()> {
        let mut writes = vec![(format!("role/{name}"), None)];
        writes.extend(
            self.state
                .inner
                .read()
                .members
                .keys()
                .filter(|(r, m)| r == name || m == name)
                .map(|(r, m)| (member_key(r, m), None)),
        );
        self.write(writes, vec![])?;
        Ok(())
    }

    /// Every membership, in the order granted (or last changed).
    pub fn memberships(&self) -> Vec<Membership> {
        let mut all: Vec<Membership> = self.state.inner.read().members.values().cloned().collect();
        all.sort_by_key(|m| m.seq);
        all
    }

    pub fn membership(&self, role: &str, member: &str) -> Option<Membership> {
        let key = (role.to_string(), member.to_string());
        self.state.inner.read().members.get(&key).cloned()
    }

    /// Adds or replaces a membership, durable on return.
    pub fn put_membership(&self, m: &Membership) -> DbResult<()> {
        let seq = 1 + self
            .state
            .inner
            .read()
            .members
            .values()
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        let m = Membership { seq, ..m.clone() };
        self.write(
            vec![(member_key(&m.role, &m.member), Some(json(&m)))],
            vec![],
        )?;
        Ok(())
    }

    pub fn remove_membership(&self, role: &str, member: &str) -> DbResult<()> {
        self.write(vec![(member_key(role, member), None)], vec![])?;
        Ok(())
    }

    /// `role` and the roles it is a member of, directly or through others. With `inheriting`,
    /// only those whose privileges it has: membership is not followed out of a role without
    /// INHERIT (Postgres 15's `roles_is_member_of` with ROLERECURSE_PRIVS).
    pub fn roles_of(&self, role: &str, inheriting: bool) -> Vec<String> {
        let inner = self.state.inner.read();
        let mut out = vec![role.to_string()];
        let mut i = 0;
        while i < out.len() {
            let current = out[i].clone();
            i += 1;
            if inheriting && !inner.roles.get(&current).is_some_and(|r| r.inherit) {
                continue;
            }
            for (r, _) in inner.members.keys().filter(|(_, m)| *m == current) {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// `ALTER ROLE from RENAME TO to`: the role, and every owner and ACL entry naming it.
    pub fn rename_role(&self, from: &str, to: &str) -> DbResult<()> {
        let writes = {
            let inner = self.state.inner.read();
            let Some(mut def) = inner.roles.get(from).cloned() else {
                return Ok(());
            };
            def.name = to.to_string();
            // Postgres clears an MD5 password on rename (the name is its salt); SCRAM's is kept
            let mut writes = vec![
                (format!("role/{from}"), None),
                (format!("role/{to}"), Some(json(&def))),
            ];
            for ((r, m), membership) in &inner.members {
                if r == from || m == from || membership.grantor == from {
                    let rename = |n: &String| if n == from { to.to_string() } else { n.clone() };
                    let renamed = Membership {
                        role: rename(r),
                        member: rename(m),
                        grantor: rename(&membership.grantor),
                        ..membership.clone()
                    };
                    writes.push((member_key(r, m), None));
                    writes.push((
                        member_key(&renamed.role, &renamed.member),
                        Some(json(&renamed)),
                    ));
                }
            }
            for (object, acl) in &inner.acls {
                if acl.owner == from || acl.mentions(from) {
                    let mut acl = acl.clone();
                    acl.rename_role(from, to);
                    writes.push((format!("acl/{object}"), Some(json(&acl))));
                }
            }
            writes
        };
        match self.write(writes, vec![format!("role/{to}")])? {
            Outcome::Conflict(_) => Err(DbError::new(
                SqlState::DuplicateObject,
                format!("role \"{to}\" already exists"),
            )),
            _ => Ok(()),
        }
    }

    /// What `role` owns or is mentioned in, as Postgres' DROP ROLE detail lists it.
    pub fn role_dependencies(&self, role: &str) -> Vec<String> {
        let inner = self.state.inner.read();
        let mut out = Vec::new();
        let name_of = |object: &str| -> Option<String> {
            if let Some(id) = object.strip_prefix("table/") {
                let id: TableId = id.parse().ok()?;
                let t = inner.tables.values().find(|t| t.id == id)?;
                Some(format!("table {}", t.name))
            } else {
                let s = object.strip_prefix("schema/")?;
                inner.schemas.contains(s).then(|| format!("schema {s}"))
            }
        };
        for (object, acl) in &inner.acls {
            let Some(name) = name_of(object) else {
                continue;
            };
            if acl.owner == role {
                out.push(format!("owner of {name}"));
            }
            if acl.mentions(role) {
                out.push(format!("privileges for {name}"));
            }
        }
        out
    }

    /// Owner and ACL of a table.
    pub fn table_acl(&self, id: TableId) -> Acl {
        self.state
            .inner
            .read()
            .acls
            .get(&table_acl_key(id))
            .cloned()
            .unwrap_or_else(|| Acl::owned_by(crate::privilege::BOOTSTRAP_SUPERUSER))
    }

    /// Owner and ACL of a schema.
    pub fn schema_acl(&self, name: &str) -> Acl {
        self.state
            .inner
            .read()
            .acls
            .get(&schema_acl_key(name))
            .cloned()
            .unwrap_or_else(|| {
                if name == "public" {
                    Acl::public_schema()
                } else {
                    Acl::owned_by(crate::privilege::BOOTSTRAP_SUPERUSER)
                }
            })
    }

    pub fn put_table_acl(&self, id: TableId, acl: &Acl) -> DbResult<()> {
        self.put_acl(table_acl_key(id), acl)
    }

    pub fn put_schema_acl(&self, name: &str, acl: &Acl) -> DbResult<()> {
        self.put_acl(schema_acl_key(name), acl)
    }

    fn put_acl(&self, object: String, acl: &Acl) -> DbResult<()> {
        self.write(vec![(format!("acl/{object}"), Some(json(acl)))], vec![])?;
        Ok(())
    }

    pub fn schema_exists(&self, name: &str) -> bool {
        self.state.inner.read().schemas.contains(name)
    }

    pub fn schemas(&self) -> Vec<String> {
        self.state.inner.read().schemas.iter().cloned().collect()
    }

    pub fn create_schema(&self, name: &str) -> DbResult<()> {
        let key = format!("schema/{name}");
        match self.write(vec![(key.clone(), Some(Vec::new()))], vec![key])? {
            Outcome::Conflict(_) => Err(DbError::new(
                SqlState::DuplicateSchema,
                format!("schema \"{name}\" already exists"),
            )),
            _ => Ok(()),
        }
    }

    pub fn drop_schema(&self, name: &str) -> DbResult<()> {
        if self
            .state
            .inner
            .read()
            .tables
            .keys()
            .any(|(s, _)| s == name)
        {
            return Err(DbError::new(
                SqlState::DependentObjectsStillExist,
                format!("cannot drop schema {name} because other objects depend on it"),
            ));
        }
        self.write(
            vec![
                (format!("schema/{name}"), None),
                (format!("acl/{}", schema_acl_key(name)), None),
            ],
            vec![],
        )?;
        Ok(())
    }

    /// The worker list shards were placed on (cluster mode), once recorded.
    pub fn workers(&self) -> DbResult<Option<Vec<String>>> {
        match self.state.tree.get("workers").map_err(io)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("workers", e)),
        }
    }

    /// Appends a worker to the recorded list (unless it is there); its index in the list.
    pub fn append_worker(&self, address: &str) -> DbResult<usize> {
        match self.propose(Command::AppendWorker {
            address: address.to_string(),
        })? {
            Outcome::Ids(i) => Ok(i as usize),
            other => Err(DbError::internal(format!(
                "recording a worker: unexpected outcome {other:?}"
            ))),
        }
    }

    /// Changes whenever the catalog does (here: a change applied, from any coordinator).
    pub fn version(&self) -> u64 {
        self.state
            .version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn put_workers(&self, workers: &[String]) -> DbResult<()> {
        self.write(vec![("workers".into(), Some(json(&workers)))], vec![])?;
        Ok(())
    }

    /// Decides a distributed transaction (two-phase commit), durably and replicated to the
    /// coordinators' Raft group: from here on recovery, by any coordinator, finishes it the
    /// same way wherever it is still prepared. Returns the decision that holds: an earlier
    /// one stands (a coordinator that found the transaction in doubt after its own
    /// coordinator died may have aborted it).
    pub fn decide(&self, txn: u64, commit: bool) -> DbResult<bool> {
        match self.propose(Command::Decide { txn, commit })? {
            Outcome::Decided(d) => Ok(d),
            other => Err(DbError::internal(format!(
                "deciding transaction {txn}: unexpected outcome {other:?}"
            ))),
        }
    }

    /// Forgets decisions once every participant applied them.
    pub fn forget_decisions(&self, txns: &[u64]) -> DbResult<()> {
        let writes = txns.iter().map(|&t| (decision_key(t), None)).collect();
        self.write(writes, vec![]).map(|_| ())
    }

    /// The recorded decisions: transaction → commit (`true`) or abort.
    pub fn decisions(&self) -> BTreeMap<u64, bool> {
        self.state
            .tree
            .scan_prefix(DECISION_PREFIX)
            .filter_map(|item| item.ok())
            .filter_map(|(k, v)| {
                let txn = std::str::from_utf8(&k[DECISION_PREFIX.len()..])
                    .ok()?
                    .parse()
                    .ok()?;
                Some((txn, v.as_ref() != b"a"))
            })
            .collect()
    }

    /// Whether coordinator `node` of the Raft group is running.
    pub fn coordinator_alive(&self, node: u64) -> bool {
        self.raft.member_alive(node)
    }

    /// How many coordinators the Raft group has.
    pub fn coordinator_count(&self) -> usize {
        self.raft.member_count()
    }

    pub fn table(&self, schema: &str, name: &str) -> Option<Arc<TableDef>> {
        self.state
            .inner
            .read()
            .tables
            .get(&(schema.to_string(), name.to_string()))
            .cloned()
    }

    pub fn table_by_id(&self, id: TableId) -> Option<Arc<TableDef>> {
        self.state
            .inner
            .read()
            .tables
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    pub fn tables_in(&self, schema: &str) -> Vec<Arc<TableDef>> {
        self.state
            .inner
            .read()
            .tables
            .values()
            .filter(|t| t.schema == schema)
            .cloned()
            .collect()
    }

    pub fn all_tables(&self) -> Vec<Arc<TableDef>> {
        self.state.inner.read().tables.values().cloned().collect()
    }

    /// An object id from the counter tables use too (Postgres has one OID counter).
    pub fn allocate_oid(&self) -> DbResult<u32> {
        let id = self.allocate_table_id()?;
        u32::try_from(id).map_err(|_| DbError::internal("object ids exhausted"))
    }

    pub fn allocate_table_id(&self) -> DbResult<TableId> {
        match self.propose(Command::AllocateIds { count: 1 })? {
            Outcome::Ids(id) => Ok(id),
            other => Err(DbError::internal(format!(
                "allocating an object id: unexpected outcome {other:?}"
            ))),
        }
    }

    /// Adds or replaces a table definition.
    pub fn put_table(&self, def: TableDef) -> DbResult<()> {
        self.write(
            vec![(format!("table/{}", def.id), Some(json(&def)))],
            vec![],
        )?;
        Ok(())
    }

    /// Removes a table, its ACL and the sequences it owns.
    pub fn remove_table(&self, id: TableId) -> DbResult<()> {
        let mut writes = vec![
            (format!("table/{id}"), None),
            (format!("acl/{}", table_acl_key(id)), None),
        ];
        let owned: Vec<String> = self
            .state
            .inner
            .read()
            .sequences
            .iter()
            .filter(|(_, s)| s.owned_by.as_ref().is_some_and(|(t, _)| *t == id))
            .map(|(k, _)| k.clone())
            .collect();
        let mut blocks = self.sequences.lock();
        for key in owned {
            blocks.remove(&key);
            writes.push((key, None));
        }
        drop(blocks);
        self.write(writes, vec![])?;
        Ok(())
    }

    pub fn create_sequence(&self, def: SequenceDef) -> DbResult<()> {
        let key = sequence_key(&def.schema, &def.name);
        match self.write(vec![(key.clone(), Some(json(&def)))], vec![key])? {
            Outcome::Conflict(_) => Err(DbError::new(
                SqlState::DuplicateTable,
                format!("relation \"{}\" already exists", def.name),
            )),
            _ => Ok(()),
        }
    }

    pub fn sequence(&self, schema: &str, name: &str) -> Option<SequenceDef> {
        self.state
            .inner
            .read()
            .sequences
            .get(&sequence_key(schema, name))
            .cloned()
    }

    /// Drops a sequence (DROP SEQUENCE), durable on return.
    pub fn remove_sequence(&self, schema: &str, name: &str) -> DbResult<()> {
        let key = sequence_key(schema, name);
        self.sequences.lock().remove(&key);
        self.write(vec![(key, None)], vec![])?;
        Ok(())
    }

    pub fn sequence_exists(&self, schema: &str, name: &str) -> bool {
        self.state
            .inner
            .read()
            .sequences
            .contains_key(&sequence_key(schema, name))
    }

    /// Every sequence (serial and identity columns' included).
    pub fn sequences(&self) -> Vec<SequenceDef> {
        self.state
            .inner
            .read()
            .sequences
            .values()
            .cloned()
            .collect()
    }

    /// `nextval`: the next value of a sequence, from this coordinator's block of it; a new
    /// block is reserved through the log when that one is used up.
    pub fn nextval(&self, schema: &str, name: &str) -> DbResult<i64> {
        let key = sequence_key(schema, name);
        let Some(def) = self.state.inner.read().sequences.get(&key).cloned() else {
            return Err(DbError::new(
                SqlState::UndefinedTable,
                format!("relation \"{name}\" does not exist"),
            ));
        };
        let mut blocks = self.sequences.lock();
        let seq = blocks.entry(key.clone()).or_insert(SeqBlock {
            next: 1,
            last: 0,
            block: SEQUENCE_BLOCK,
            last_reserved: None,
        });
        if seq.next > seq.last {
            let busy = seq
                .last_reserved
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
            seq.block = if busy {
                (seq.block * 2).min(SEQUENCE_BLOCK_MAX)
            } else {
                SEQUENCE_BLOCK
            };
            seq.last_reserved = Some(std::time::Instant::now());
            match self.propose(Command::ReserveSequence {
                key,
                values: seq.block,
            })? {
                Outcome::Reserved { first, last } => {
                    seq.next = first;
                    seq.last = last;
                }
                _ => {
                    return Err(DbError::new(
                        SqlState::UndefinedTable,
                        format!("relation \"{name}\" does not exist"),
                    ));
                }
            }
        }
        let value = seq.next;
        if value > def.max_value {
            return Err(DbError::new(
                SqlState::ObjectNotInPrerequisiteState,
                format!(
                    "nextval: reached maximum value of sequence \"{name}\" ({})",
                    def.max_value
                ),
            ));
        }
        seq.next = value.saturating_add(def.increment);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(cat: &Catalog) {
        cat.create_sequence(SequenceDef {
            name: "s".into(),
            schema: "public".into(),
            reserved: 0,
            increment: 1,
            max_value: i64::MAX,
            owned_by: None,
            owner: None,
        })
        .unwrap();
    }

    /// Memberships: followed transitively, not out of a NOINHERIT role for privileges; kept
    /// across a restart, renamed with their roles, dropped with either side.
    #[test]
    fn role_memberships_inherit_rename_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let member = |role: &str, member: &str| Membership {
            role: role.into(),
            member: member.into(),
            grantor: "postgres".into(),
            admin_option: false,
            seq: 0,
        };
        {
            let cat = Catalog::open(dir.path()).unwrap();
            for (oid, name) in [(20_000, "a"), (20_001, "b"), (20_002, "c")] {
                cat.put_role(RoleDef::new(oid, name)).unwrap();
            }
            let mut noinherit = RoleDef::new(20_003, "n");
            noinherit.inherit = false;
            cat.put_role(noinherit).unwrap();
            // a ∈ b ∈ c; n ∈ b
            cat.put_membership(&member("b", "a")).unwrap();
            cat.put_membership(&member("c", "b")).unwrap();
            cat.put_membership(&member("b", "n")).unwrap();
            assert_eq!(cat.roles_of("a", true), ["a", "b", "c"]);
            assert_eq!(cat.roles_of("n", true), ["n"]);
            assert_eq!(cat.roles_of("n", false), ["n", "b", "c"]);
            assert_eq!(cat.roles_of("c", false), ["c"]);
        }
        let cat = Catalog::open(dir.path()).unwrap();
        assert_eq!(cat.roles_of("a", true), ["a", "b", "c"]);
        cat.rename_role("b", "bee").unwrap();
        assert_eq!(cat.roles_of("a", true), ["a", "bee", "c"]);
        let order: Vec<(String, String)> = cat
            .memberships()
            .into_iter()
            .map(|m| (m.role, m.member))
            .collect();
        assert_eq!(order.len(), 3);
        cat.remove_role("bee").unwrap();
        assert!(cat.memberships().is_empty());
        assert_eq!(cat.roles_of("a", true), ["a"]);
    }

    /// A sequence used in bulk reserves ever larger blocks, so numbering many rows writes the
    /// log rarely; values stay consecutive, and a restart never reissues one.
    #[test]
    fn busy_sequences_reserve_larger_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        sequence(&cat);
        let mut reservations = 0;
        let mut reserved = 0;
        for expected in 1..=200_000 {
            assert_eq!(cat.nextval("public", "s").unwrap(), expected);
            let now = cat.sequences.lock()[&sequence_key("public", "s")].last;
            if now != reserved {
                reservations += 1;
                reserved = now;
            }
        }
        assert!(reservations < 20, "{reservations} reservations");
        drop(cat);
        let cat = Catalog::open(dir.path()).unwrap();
        assert!(cat.nextval("public", "s").unwrap() > 200_000);
    }

    /// Every change goes through the log: after a restart the catalog is what was applied,
    /// the log has advanced, and conflicting creations fail without changing anything.
    #[test]
    fn changes_survive_restart_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let before = cat.raft_status().applied_index;
        cat.create_schema("s1").unwrap();
        let err = cat.create_schema("s1").unwrap_err();
        assert_eq!(err.state, SqlState::DuplicateSchema);
        cat.put_system_setting("work_mem", Some("8MB")).unwrap();
        let a = cat.allocate_table_id().unwrap();
        let b = cat.allocate_table_id().unwrap();
        assert_eq!(b, a + 1);
        let status = cat.raft_status();
        assert_eq!(status.role, "leader");
        assert!(status.applied_index >= before + 5, "{status:?}");
        drop(cat);
        let cat = Catalog::open(dir.path()).unwrap();
        assert!(cat.schema_exists("s1"));
        assert_eq!(
            cat.system_settings()
                .unwrap()
                .get("work_mem")
                .map(String::as_str),
            Some("8MB")
        );
        assert!(cat.allocate_table_id().unwrap() > b);
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Three members in one process, over loopback: a change made through any member (a
    /// follower forwards it) is applied on all; one member down, the other two go on; back, it
    /// catches up — by a snapshot once the log it missed was purged.
    #[test]
    fn a_three_member_group_replicates_and_catches_up() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let peers: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let options = |id: u64| RaftOptions {
            node_id: id,
            listen: Some(peers[&id].clone()),
            peers: peers.clone(),
        };
        let open = |id: u64| {
            let dir = dirs[id as usize - 1].path().to_path_buf();
            let o = options(id);
            std::thread::spawn(move || Catalog::open_with(&dir, &o).unwrap())
        };
        // members start together: each waits for a majority before its bootstrap
        let starting: Vec<_> = (1..=3).map(open).collect();
        let mut members: Vec<Option<Catalog>> = starting
            .into_iter()
            .map(|h| Some(h.join().unwrap()))
            .collect();
        let leader = members[0]
            .as_ref()
            .unwrap()
            .raft_status()
            .leader_id
            .unwrap();
        for m in members.iter().flatten() {
            let st = m.raft_status();
            assert_eq!(st.members.len(), 3, "{st:?}");
            assert_eq!(st.leader_id, Some(leader), "{st:?}");
        }
        // through every member, the leader and the followers alike
        for (i, m) in members.iter().flatten().enumerate() {
            m.create_schema(&format!("s{i}")).unwrap();
            assert!(
                m.schema_exists(&format!("s{i}")),
                "read-your-writes on member {i}"
            );
        }
        let err = members[2]
            .as_ref()
            .unwrap()
            .create_schema("s0")
            .unwrap_err();
        assert_eq!(err.state, SqlState::DuplicateSchema);
        for m in members.iter().flatten() {
            wait_until("schemas on every member", || {
                (0..3).all(|i| m.schema_exists(&format!("s{i}")))
            });
        }
        // object ids are handed out once, whoever asks
        let ids: BTreeSet<TableId> = members
            .iter()
            .flatten()
            .map(|m| m.allocate_table_id().unwrap())
            .collect();
        assert_eq!(ids.len(), 3);

        // a follower goes down; the others keep a majority
        let down = (1..=3u64).find(|id| *id != leader).unwrap();
        members[down as usize - 1] = None;
        let up: Vec<&Catalog> = members.iter().flatten().collect();
        for i in 0..1200 {
            up[i % 2]
                .put_system_setting("work_mem", Some(&format!("{i}kB")))
                .unwrap();
        }
        up[0].create_schema("after").unwrap();
        // the leader's log was compacted past what the member missed
        wait_until("a snapshot on the leader", || {
            let l = members[leader as usize - 1].as_ref().unwrap();
            l.raft.status().applied_index > 1100
        });
        members[down as usize - 1] = Some(open(down).join().unwrap());
        let back = members[down as usize - 1].as_ref().unwrap();
        wait_until("the restarted member catches up", || {
            back.schema_exists("after")
        });
        assert_eq!(
            back.system_settings()
                .unwrap()
                .get("work_mem")
                .map(String::as_str),
            Some("1199kB")
        );
        let st = back.raft_status();
        assert_eq!(st.role, "follower");
        assert!(st.snapshot_index > 900, "caught up by a snapshot: {st:?}");
        // the same catalog everywhere
        let first = members[0].as_ref().unwrap();
        for m in members.iter().flatten() {
            wait_until("identical catalogs", || {
                m.schemas() == first.schemas()
                    && m.system_settings().unwrap() == first.system_settings().unwrap()
            });
        }
    }
}
