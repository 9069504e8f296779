//! `orochi-coordinator`: the Postgres-protocol front end of OrochiDB. With no workers configured
//! it runs standalone, with an embedded worker over the same data directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use orochi_coordinator::config::CoordinatorOptions;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: glibc keeps freed memory per thread arena, so a burst of
/// concurrent scans left the server's RSS hundreds of MiB above what it was using (measured in
/// docs/benchmarks.md, "Memory"); mimalloc returns freed pages to the OS. Built with `no_thp`:
/// on huge pages, one live allocation kept a whole 2 MiB page resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "orochi-coordinator",
    version,
    about = "OrochiDB coordinator (Postgres wire protocol, standalone by default)"
)]
struct Args {
    /// Address to listen on for Postgres clients [default: 127.0.0.1:5432]
    #[arg(long, env = "OROCHI_LISTEN")]
    listen: Option<String>,
    /// Data directory [default: ./orochi-data]
    #[arg(long, env = "OROCHI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, env = "OROCHI_CONFIG")]
    config: Option<PathBuf>,
    /// Maximum concurrent client connections
    #[arg(long, env = "OROCHI_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// A worker daemon's Flight address, host:port (repeatable; OROCHI_WORKER_HOSTS takes a
    /// comma-separated list). Without any, the coordinator runs standalone.
    #[arg(long = "worker", env = "OROCHI_WORKER_HOSTS", value_delimiter = ',')]
    workers: Vec<String>,
    /// Where workers register themselves (`orochi-worker --coordinator`), host:port. Set, the
    /// coordinator runs as a cluster even before the first worker registers.
    #[arg(long, env = "OROCHI_CLUSTER_LISTEN")]
    cluster_listen: Option<String>,
    /// This coordinator's id in the catalog's Raft group [default: 1]
    #[arg(long, env = "OROCHI_NODE_ID")]
    node_id: Option<u64>,
    /// Where this coordinator serves Raft to the other coordinators, host:port (by convention
    /// port 7000). Unset: the catalog is a one-member group.
    #[arg(long, env = "OROCHI_RAFT_LISTEN")]
    raft_listen: Option<String>,
    /// A member of the Raft group, ID=HOST:PORT (repeatable, this coordinator included;
    /// OROCHI_RAFT_PEERS takes a comma-separated list)
    #[arg(long = "raft-peer", env = "OROCHI_RAFT_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    raft_peers: Vec<(u64, String)>,
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT, got \"{s}\""))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("invalid Raft peer id \"{id}\""))?;
    Ok((id, addr.trim().to_string()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    orochi_worker::daemon::init_logging();
    let mut options = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            CoordinatorOptions::from_toml(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => CoordinatorOptions::default(),
    };
    if let Some(l) = args.listen {
        options.listen = l;
    }
    if let Some(d) = args.data_dir {
        options.data_dir = d;
    }
    if let Some(m) = args.max_connections {
        options.max_connections = m;
    }
    if !args.workers.is_empty() {
        options.workers = args.workers.clone();
    }
    if let Some(c) = args.cluster_listen.clone() {
        options.cluster_listen = Some(c);
    }
    if let Some(id) = args.node_id {
        options.node_id = id;
    }
    if let Some(l) = args.raft_listen.clone() {
        options.raft_listen = Some(l);
    }
    if !args.raft_peers.is_empty() {
        options.raft_peers = args.raft_peers.iter().cloned().collect();
    }
    if let Ok(password) = std::env::var("OROCHI_PASSWORD") {
        options.passwords.insert("postgres".into(), password);
    }
    // Row store reads and commits run on the blocking pool, one short task at a time (a scan is
    // one task per batch). A small pool bounds the threads, and each thread's stack and
    // allocator caches, however many scans run at once; tasks beyond it queue.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orochi")
        .max_blocking_threads((4 * cores).max(8))
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: CoordinatorOptions) -> anyhow::Result<()> {
    let listen = options.listen.clone();
    let standalone = orochi_coordinator::standalone::open(options).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let pid_file =
        orochi_worker::daemon::write_pid_file(&standalone.instance.options.data_dir, address)?;
    tracing::info!(%address, version = env!("CARGO_PKG_VERSION"), "OrochiDB standalone coordinator ready");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let signals = tokio::spawn(async move {
        orochi_worker::daemon::shutdown_signal().await;
        signal.cancel();
    });
    orochi_coordinator::pgwire::server::serve(listener, standalone.instance.clone(), shutdown)
        .await?;
    signals.abort();
    let _ = std::fs::remove_file(&pid_file);
    drop(standalone);
    tracing::info!("shut down cleanly");
    Ok(())
}
