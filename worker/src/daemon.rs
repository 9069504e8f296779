//! What both daemons (`orochi-coordinator`, `orochi-worker`) do the same way: logging, the
//! data-directory lock, the pid file, shutdown signals.

use std::fs::{File, TryLockError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Logs via `tracing` (level from `RUST_LOG`, default `info`, openraft's own `warn`). A panic (a bug: e.g. in a
/// connection task, which the accept loop survives) is logged as one error event with its
/// location and backtrace, not raw stderr text.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::capture();
        tracing::error!(panic = %info, %backtrace, "panic");
    }));
}

/// Creates `dir` if needed and locks it for this process; the lock lasts as long as the
/// returned file. A second process on the same directory is refused with a clear message.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let lock_path = dir.join("orochi.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "data directory {} is in use by another OrochiDB process (lock file {} is held)",
            dir.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
    }
}

/// Like `postmaster.pid`: who serves this data directory, and where. Tests and tools read it;
/// with `--listen 127.0.0.1:0` it is how they learn the port. Returns its path.
pub fn write_pid_file(dir: &Path, address: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = dir.join("orochi.pid");
    std::fs::write(&path, format!("{}\n{address}\n", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// Registers this worker (`advertise`, its Flight address) with a coordinator's cluster
/// listener, then sends a heartbeat every second, for the life of the process. A coordinator
/// that is down or restarting is retried every second; one that forgot this worker (a
/// heartbeat answered NOT_FOUND) is registered with again.
pub async fn register_with(coordinator: String, advertise: String) {
    use arrow_flight::Action;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use orochi_common::rpc::{HEARTBEAT_ACTION, PROTOCOL_VERSION, REGISTER_ACTION, Registration};

    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{coordinator}")) {
        Ok(e) => e.connect_timeout(std::time::Duration::from_secs(3)),
        Err(e) => {
            tracing::error!(%coordinator, error = %e, "invalid coordinator address: not registering");
            return;
        }
    };
    let mut client = FlightServiceClient::new(endpoint.connect_lazy());
    let body = serde_json::to_vec(&Registration {
        address: advertise.clone(),
        protocol: PROTOCOL_VERSION,
    })
    .expect("serializes");
    let mut registered = false;
    loop {
        let kind = if registered {
            HEARTBEAT_ACTION
        } else {
            REGISTER_ACTION
        };
        let action = Action {
            r#type: kind.into(),
            body: body.clone().into(),
        };
        match client.do_action(action).await {
            Ok(_) if !registered => {
                tracing::info!(%coordinator, address = %advertise, "registered with the coordinator");
                registered = true;
            }
            Ok(_) => {}
            Err(status) => {
                if registered {
                    tracing::warn!(%coordinator, error = %status.message(), "heartbeat failed");
                } else {
                    tracing::debug!(%coordinator, error = %status.message(), "registration failed; retrying");
                }
                registered = registered && status.code() != tonic::Code::NotFound;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
