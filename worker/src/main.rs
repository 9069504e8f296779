//! `orochi-worker`: a worker daemon. It owns shards in its data directory and serves them to
//! coordinators over Arrow Flight (gRPC).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow_flight::flight_service_server::FlightServiceServer;
use clap::Parser;
use orochi_worker::LocalShardService;
use orochi_worker::flight::WorkerFlight;
use orochi_worker::service::StoreOptions;
use orochi_worker::store::convert::ConversionPolicy;

/// See the coordinator: mimalloc returns freed pages to the OS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "orochi-worker",
    version,
    about = "OrochiDB worker (owns shards, serves coordinators over Arrow Flight)"
)]
struct Args {
    /// Address to listen on for coordinators [default: 127.0.0.1:5433]
    #[arg(long, env = "OROCHI_WORKER_LISTEN")]
    listen: Option<String>,
    /// Data directory [default: ./orochi-worker-data]
    #[arg(long, env = "OROCHI_WORKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A coordinator's cluster listener (its `--cluster-listen`), host:port: the worker
    /// registers itself there and sends a heartbeat every second
    #[arg(long, env = "OROCHI_WORKER_COORDINATOR")]
    coordinator: Option<String>,
    /// The address coordinators dial, if not the listen address (e.g. behind 0.0.0.0)
    #[arg(long, env = "OROCHI_WORKER_ADVERTISE")]
    advertise: Option<String>,
    /// TOML configuration file
    #[arg(long, env = "OROCHI_WORKER_CONFIG")]
    config: Option<PathBuf>,
}

/// The worker's configuration file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    coordinator: Option<String>,
    advertise: Option<String>,
    /// Row store page cache, in bytes [default: 256 MiB].
    row_cache_bytes: Option<u64>,
    /// What the write sets of all open transactions may hold together [default: 512 MiB].
    write_set_limit_bytes: Option<u64>,
    /// What the plan fragments running here (filters, partial aggregates) may hold
    /// together; past it a query fails with 53200 [default: 1 GiB].
    query_memory_bytes: Option<u64>,
    /// Live rows in a shard's row store that make the background job convert them into a
    /// columnar segment; 0: never by size [default: 100000].
    conversion_rows: Option<u64>,
    /// Age of a shard's oldest unconverted write that makes it converted; 0: never by age
    /// [default: 86400, a day, as `orochi.hot_tier_age`].
    hot_tier_age_secs: Option<u64>,
    /// How often shards are checked for conversion, in ms; 0: no background conversion
    /// [default: 10000].
    conversion_check_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    orochi_worker::daemon::init_logging();
    let config: WorkerConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => WorkerConfig::default(),
    };
    let listen = args
        .listen
        .or(config.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:5433".into());
    let data_dir = args
        .data_dir
        .or(config.data_dir.clone())
        .unwrap_or_else(|| "./orochi-worker-data".into());
    let defaults = StoreOptions::default();
    let store = StoreOptions {
        cache_bytes: config.row_cache_bytes.unwrap_or(defaults.cache_bytes),
        write_set_limit_bytes: config
            .write_set_limit_bytes
            .unwrap_or(defaults.write_set_limit_bytes),
        query_runtime: Some(
            datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::new(
                    datafusion::execution::memory_pool::FairSpillPool::new(
                        config.query_memory_bytes.unwrap_or(1 << 30) as usize,
                    ),
                ))
                .build_arc()
                .context("building the fragment runtime")?,
        ),
        conversion: ConversionPolicy::configured(
            config.conversion_rows,
            config.hot_tier_age_secs,
            config.conversion_check_ms,
        ),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orochi-worker")
        .build()?
        .block_on(run(
            listen,
            data_dir,
            store,
            args.coordinator.or(config.coordinator),
            args.advertise.or(config.advertise),
        ))
}

async fn run(
    listen: String,
    data_dir: PathBuf,
    store: StoreOptions,
    coordinator: Option<String>,
    advertise: Option<String>,
) -> anyhow::Result<()> {
    let _lock = orochi_worker::daemon::lock_data_dir(&data_dir)?;
    let service = LocalShardService::open(&data_dir.join("worker"), &store)
        .map_err(|e| anyhow::anyhow!("opening row store: {}", e.message))?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let pid_file = orochi_worker::daemon::write_pid_file(&data_dir, address)?;
    tracing::info!(%address, version = env!("CARGO_PKG_VERSION"), "OrochiDB worker ready");
    if let Some(coordinator) = coordinator {
        let advertise = advertise.unwrap_or_else(|| address.to_string());
        if address.ip().is_unspecified() && advertise == address.to_string() {
            anyhow::bail!(
                "listening on {address}: say with --advertise which address coordinators dial"
            );
        }
        tokio::spawn(orochi_worker::daemon::register_with(coordinator, advertise));
    }
    let flight = FlightServiceServer::new(WorkerFlight::new(Arc::new(service)))
        .max_decoding_message_size(256 << 20);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .add_service(flight)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            orochi_worker::daemon::shutdown_signal(),
        )
        .await
        .context("serving Flight")?;
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("shut down cleanly");
    Ok(())
}
