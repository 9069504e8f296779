//! Coordinator configuration: TOML file, then `OROCHI_*` environment, then flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// What `memory_limit_bytes` must keep outside the query pool and the row cache.
pub const MEMORY_RESERVE_BYTES: u64 = 192 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorOptions {
    /// Address of the Postgres protocol listener.
    pub listen: String,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    /// The memory the server is sized to stay within (resident set), in bytes. The query pool
    /// and the row cache are carved out of it; the rest is for connections, in-flight batches
    /// and the row store's own bookkeeping [default: a quarter of the machine's memory, or of
    /// the cgroup's limit when that is lower (containers), at least 2 GiB].
    /// Hard-coded 2 GiB before: its 256 MiB row cache was smaller than pgbench scale 10's
    /// working set (docs/benchmarks.md).
    pub memory_limit_bytes: u64,
    /// Memory limit for all queries together (DataFusion memory pool), in bytes
    /// [default: half of `memory_limit_bytes`]. A query over its share spills or fails with
    /// 53200.
    pub query_memory_limit_bytes: Option<u64>,
    /// Row store page cache, in bytes [default: an eighth of `memory_limit_bytes`].
    pub row_cache_bytes: Option<u64>,
    /// Host-based access rules (Postgres' `pg_hba.conf` format). Without one: trust on
    /// loopback, SCRAM-SHA-256 elsewhere (everywhere, once `[passwords]` are configured).
    pub hba_file: Option<PathBuf>,
    /// TLS server certificate chain (PEM). With `tls_key_file`, clients may use TLS
    /// (`sslmode=require`/`verify-full`); `hostssl` rules can then demand it.
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    /// What uncommitted writes of all open transactions may hold together, in bytes
    /// [default: a quarter of `memory_limit_bytes`]; a write past it fails with 53200.
    pub write_set_limit_bytes: Option<u64>,
    /// Threads of parallelism per query (0 = number of CPUs).
    pub query_parallelism: usize,
    /// Passwords set at start-up (`[passwords]` table; `OROCHI_PASSWORD` sets `postgres`'s):
    /// each user's role gets it (created with LOGIN if missing), and, without an
    /// `hba_file`, every login must then pass SCRAM-SHA-256.
    pub passwords: BTreeMap<String, String>,
    /// Worker daemons (`host:port`, their Flight address). Empty (and no `cluster_listen`):
    /// standalone, with an embedded worker. A table's shard *i* lives on worker *i mod N* of
    /// the workers there were when it was created, so the list only grows (the catalog
    /// remembers it).
    pub workers: Vec<String>,
    /// Where workers register themselves and send heartbeats (`orochi-worker
    /// --coordinator`), Arrow Flight. Set: cluster mode, even before any worker registered.
    pub cluster_listen: Option<String>,
    /// This coordinator's id in the catalog's Raft group [default: 1].
    pub node_id: u64,
    /// Where this coordinator serves the other coordinators' Raft RPCs (`host:port`; 7000 by
    /// convention). Unset: the catalog is a one-member group.
    pub raft_listen: Option<String>,
    /// Every coordinator of the Raft group, this one included, by id (`--raft-peer
    /// ID=ADDR`). The group is formed at the first start of its lowest-numbered member and
    /// keeps that membership.
    pub raft_peers: BTreeMap<u64, String>,
    /// Live rows in a shard's row store that make the embedded worker convert them into a
    /// columnar segment in the background; 0: never by size [default: 100000].
    pub conversion_rows: Option<u64>,
    /// Age of a shard's oldest unconverted write that makes it converted; 0: never by age
    /// [default: 86400 s, a day, as `orochi.hot_tier_age`].
    pub hot_tier_age_secs: Option<u64>,
    /// How often shards are checked for conversion, in ms; 0: no background conversion
    /// [default: 10000].
    pub conversion_check_ms: Option<u64>,
}

/// A quarter of the memory this process may use: physical memory, or the cgroup's limit
/// (v2 `memory.max`, v1 `memory.limit_in_bytes`) when lower; at least 2 GiB (what the
/// default budgets need to pass [`CoordinatorOptions::validate`]).
pub fn default_memory_limit_bytes() -> u64 {
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|t| t.trim().parse::<u64>().ok())
    .min();
    let available = match (physical, cgroup) {
        (Some(p), Some(c)) => p.min(c),
        (Some(p), None) => p,
        (None, Some(c)) => c,
        (None, None) => 8 << 30,
    };
    (available / 4).max(2 << 30)
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            listen: "127.0.0.1:5432".into(),
            data_dir: PathBuf::from("./orochi-data"),
            max_connections: 100,
            memory_limit_bytes: default_memory_limit_bytes(),
            query_memory_limit_bytes: None,
            row_cache_bytes: None,
            write_set_limit_bytes: None,
            hba_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            query_parallelism: 0,
            passwords: BTreeMap::new(),
            workers: Vec::new(),
            cluster_listen: None,
            node_id: 1,
            raft_listen: None,
            raft_peers: BTreeMap::new(),
            conversion_rows: None,
            hot_tier_age_secs: None,
            conversion_check_ms: None,
        }
    }
}

impl CoordinatorOptions {
    pub fn query_parallelism(&self) -> usize {
        if self.query_parallelism > 0 {
            self.query_parallelism
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }

    pub fn query_memory_limit_bytes(&self) -> u64 {
        self.query_memory_limit_bytes
            .unwrap_or(self.memory_limit_bytes / 2)
    }

    pub fn row_cache_bytes(&self) -> u64 {
        self.row_cache_bytes.unwrap_or(self.memory_limit_bytes / 8)
    }

    pub fn write_set_limit_bytes(&self) -> u64 {
        self.write_set_limit_bytes
            .unwrap_or(self.memory_limit_bytes / 4)
    }

    /// The catalog's Raft membership.
    pub fn raft(&self) -> crate::raft::RaftOptions {
        crate::raft::RaftOptions {
            node_id: self.node_id,
            listen: self.raft_listen.clone(),
            peers: self.raft_peers.clone(),
        }
    }

    /// Checks that the carved-out budgets leave room for the server itself.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 || self.node_id >= crate::session::MAX_COORDINATORS {
            return Err(format!(
                "node_id must be between 1 and {}",
                crate::session::MAX_COORDINATORS - 1
            ));
        }
        if let Some((id, _)) = self
            .raft_peers
            .iter()
            .find(|(id, _)| **id == 0 || **id >= crate::session::MAX_COORDINATORS)
        {
            return Err(format!("Raft peer id {id} is out of range"));
        }
        if self.raft_peers.len() > 1 && self.raft_listen.is_none() {
            return Err("a Raft group of several coordinators needs raft_listen".into());
        }
        let carved =
            self.query_memory_limit_bytes() + self.row_cache_bytes() + self.write_set_limit_bytes();
        if carved + MEMORY_RESERVE_BYTES > self.memory_limit_bytes {
            return Err(format!(
                "query_memory_limit_bytes ({}) + row_cache_bytes ({}) + write_set_limit_bytes \
                 ({}) must leave at least {} MiB of memory_limit_bytes ({}) for connections and \
                 bookkeeping",
                self.query_memory_limit_bytes(),
                self.row_cache_bytes(),
                self.write_set_limit_bytes(),
                MEMORY_RESERVE_BYTES >> 20,
                self.memory_limit_bytes
            ));
        }
        Ok(())
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_budgets_are_valid() {
        let o = CoordinatorOptions::default();
        assert!(o.memory_limit_bytes >= 2 << 30);
        o.validate().expect("the defaults fit their own limit");
        assert_eq!(o.row_cache_bytes(), o.memory_limit_bytes / 8);
    }
}
