//! Standalone mode: a coordinator with an in-process worker over the same data directory.

use std::fs::{File, TryLockError};
use std::sync::Arc;

use anyhow::Context;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use orochi_worker::LocalShardService;
use orochi_worker::service::StoreOptions;

use crate::catalog::Catalog;
use crate::config::CoordinatorOptions;
use crate::session::Instance;

/// A started instance and the lock that keeps other processes off its data directory.
pub struct Standalone {
    pub instance: Arc<Instance>,
    _lock: File,
}

pub fn open(options: CoordinatorOptions) -> anyhow::Result<Standalone> {
    options.validate().map_err(anyhow::Error::msg)?;
    let dir = options.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let lock_path = dir.join("orochi.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "data directory {} is in use by another OrochiDB process (lock file {} is held)",
            dir.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    let catalog = Arc::new(
        Catalog::open(&dir.join("catalog")).map_err(|e| anyhow::anyhow!("{}", e.message))?,
    );
    crate::pgwire::auth::apply_configured_passwords(&catalog, &options.passwords)
        .map_err(|e| anyhow::anyhow!("setting configured passwords: {}", e.message))?;
    let service = LocalShardService::open(
        &dir.join("worker"),
        &StoreOptions {
            cache_bytes: options.row_cache_bytes(),
            write_set_limit_bytes: options.write_set_limit_bytes(),
        },
    )
    .map_err(|e| anyhow::anyhow!("opening row store: {}", e.message))?;
    // operators that outgrow their share of the query memory pool spill here (emptied at
    // start: spill files of a previous process are garbage)
    let spill_dir = dir.join("tmp");
    let _ = std::fs::remove_dir_all(&spill_dir);
    std::fs::create_dir_all(&spill_dir)
        .with_context(|| format!("creating spill directory {}", spill_dir.display()))?;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(
            options.query_memory_limit_bytes() as usize,
        )))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill_dir])),
        )
        .build_arc()
        .context("building the query runtime")?;
    let instance = Arc::new(Instance::new(
        catalog,
        Arc::new(service),
        Arc::new(options),
        runtime,
    ));
    instance
        .reload_settings()
        .context("reading ALTER SYSTEM parameters")?;
    Ok(Standalone {
        instance,
        _lock: lock,
    })
}
