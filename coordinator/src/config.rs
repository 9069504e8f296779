//! Coordinator configuration: TOML file, then `OROCHI_*` environment, then flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorOptions {
    /// Address of the Postgres protocol listener.
    pub listen: String,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    /// Memory limit for all queries together (DataFusion memory pool), in bytes.
    pub query_memory_limit_bytes: usize,
    /// Row store page cache, in bytes.
    pub row_cache_bytes: u64,
    /// Threads of parallelism per query (0 = number of CPUs).
    pub query_parallelism: usize,
    /// Passwords by user (`[passwords]` table; `OROCHI_PASSWORD` sets `postgres`'s). Empty:
    /// trust authentication. Otherwise every login must pass SCRAM-SHA-256.
    pub passwords: BTreeMap<String, String>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            listen: "127.0.0.1:5432".into(),
            data_dir: PathBuf::from("./orochi-data"),
            max_connections: 100,
            query_memory_limit_bytes: 1 << 30,
            row_cache_bytes: 256 << 20,
            query_parallelism: 0,
            passwords: BTreeMap::new(),
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

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}
