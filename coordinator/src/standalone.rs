//! Standalone mode: a coordinator with an in-process worker over the same data directory.

use std::fs::File;
use std::sync::Arc;

use anyhow::Context;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use orochi_worker::LocalShardService;
use orochi_worker::service::StoreOptions;

use crate::catalog::Catalog;
use crate::cluster::{ClusterShardService, RemoteWorker};
use crate::config::CoordinatorOptions;
use crate::session::Instance;

/// A started instance and the lock that keeps other processes off its data directory.
pub struct Standalone {
    pub instance: Arc<Instance>,
    _lock: File,
}

pub async fn open(options: CoordinatorOptions) -> anyhow::Result<Standalone> {
    options.validate().map_err(anyhow::Error::msg)?;
    let dir = options.data_dir.clone();
    let lock = orochi_worker::daemon::lock_data_dir(&dir)?;
    let catalog = Arc::new(
        Catalog::open_with(&dir.join("catalog"), &options.raft())
            .map_err(|e| anyhow::anyhow!("{}", e.message))?,
    );
    crate::pgwire::auth::apply_configured_passwords(&catalog, &options.passwords)
        .map_err(|e| anyhow::anyhow!("setting configured passwords: {}", e.message))?;
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
    let mut cluster = None;
    let service: Arc<dyn orochi_common::service::ShardService> =
        if options.workers.is_empty() && options.cluster_listen.is_none() {
            Arc::new(
                LocalShardService::open(
                    &dir.join("worker"),
                    &StoreOptions {
                        cache_bytes: options.row_cache_bytes(),
                        write_set_limit_bytes: options.write_set_limit_bytes(),
                        // plan fragments share the coordinator's query memory pool
                        query_runtime: Some(runtime.clone()),
                        conversion: orochi_worker::store::convert::ConversionPolicy::configured(
                            options.conversion_rows,
                            options.hot_tier_age_secs,
                            options.conversion_check_ms,
                        ),
                    },
                )
                .map_err(|e| anyhow::anyhow!("opening row store: {}", e.message))?,
            )
        } else {
            let c = connect_workers(&options.workers, &catalog, options.node_id).await?;
            cluster = Some(c.clone());
            c
        };
    if let (Some(cluster), Some(addr)) = (cluster, options.cluster_listen.as_deref()) {
        crate::registry::serve(cluster, addr).await?;
    }
    let instance = Arc::new(Instance::new(catalog, service, Arc::new(options), runtime));
    instance
        .reload_settings()
        .context("reading ALTER SYSTEM parameters")?;
    Ok(Standalone {
        instance,
        _lock: lock,
    })
}

/// Cluster mode: the configured workers, checked against the placement the catalog recorded,
/// with what a crash left prepared resolved.
async fn connect_workers(
    configured: &[String],
    catalog: &Arc<Catalog>,
    node: u64,
) -> anyhow::Result<Arc<ClusterShardService>> {
    let recorded = catalog
        .workers()
        .map_err(|e| anyhow::anyhow!("reading the worker list: {}", e.message))?;
    // without a configured list, the recorded one (workers that registered themselves)
    let addresses: &[String] = match (&recorded, configured.is_empty()) {
        (Some(r), true) => r,
        _ => configured,
    };
    let standalone_data =
        recorded.as_ref().is_some_and(|r| r.is_empty()) && !catalog.all_tables().is_empty();
    if standalone_data {
        anyhow::bail!(
            "this data directory holds a standalone server's tables (in its embedded worker); \
             it cannot be started as a cluster coordinator"
        );
    }
    match recorded.as_ref() {
        Some(r) if r != addresses => anyhow::bail!(
            "the data directory's tables are placed on workers {} but this start names {}; \
             shards cannot move between workers yet, so start with the recorded list",
            r.join(","),
            addresses.join(",")
        ),
        Some(_) => {}
        None => catalog
            .put_workers(addresses)
            .map_err(|e| anyhow::anyhow!("recording the worker list: {}", e.message))?,
    }
    let mut workers = Vec::new();
    for a in addresses {
        let w = RemoteWorker::new(a).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        match w.hello().await {
            Ok(version) => tracing::info!(worker = %a, %version, "worker connected"),
            Err(e) => {
                tracing::warn!(worker = %a, error = %e.message, "worker not reachable; statements that need its shards fail until it is")
            }
        }
        workers.push(w);
    }
    let service = Arc::new(ClusterShardService::new(workers, catalog.clone(), node));
    service.recover().await;
    Ok(service)
}
