//! Accept loop: one task per connection (owned by a `JoinSet`), a connection limit answered
//! with 53300, graceful shutdown that lets in-flight work finish for a grace period.

use std::sync::Arc;
use std::time::Duration;

use orochi_common::error::{DbError, SqlState};
use pgwire::api::ConnectionManager;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::pgwire::handler::Connection;
use crate::session::{Instance, Session};

pub async fn serve(
    listener: TcpListener,
    instance: Arc<Instance>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(instance.options.max_connections));
    let connections = Arc::new(ConnectionManager::new());
    let scram = crate::pgwire::auth::PasswordDb::scram(&instance.options.passwords);
    let mut tasks = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let _ = socket.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let instance = instance.clone();
                let connections = connections.clone();
                let scram = scram.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    tracing::debug!(%peer, "connection opened");
                    let conn = Connection::new(
                        Session::new(instance, "postgres".into(), "postgres".into()),
                        connections,
                        scram,
                    );
                    let session = conn.session();
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    // end any open transaction: releases its row locks
                    session.lock().await.close().await;
                    tracing::debug!(%peer, "connection closed");
                });
            }
            Err(_) => {
                tasks.spawn(reject_too_many(socket));
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = tasks.len(),
        "shutting down: waiting for in-flight sessions"
    );
    let grace = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => {
                tracing::warn!(remaining = tasks.len(), "cancelling sessions still running after the grace period");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
    Ok(())
}

/// Answers a connection over the limit the way Postgres does: FATAL 53300 after startup.
async fn reject_too_many(mut socket: TcpStream) {
    let read_packet = async |socket: &mut TcpStream| -> std::io::Result<Vec<u8>> {
        let len = socket.read_i32().await?;
        if !(8..=10_000).contains(&len) {
            return Err(std::io::Error::other("bad startup packet"));
        }
        let mut body = vec![0u8; len as usize - 4];
        socket.read_exact(&mut body).await?;
        Ok(body)
    };
    let result = async {
        let mut body = read_packet(&mut socket).await?;
        if body.len() == 4 && u32::from_be_bytes([body[0], body[1], body[2], body[3]]) == 80_877_103
        {
            socket.write_all(b"N").await?; // no TLS
            body = read_packet(&mut socket).await?;
        }
        let _ = body;
        let e = DbError::new(
            SqlState::TooManyConnections,
            "sorry, too many clients already",
        );
        let mut msg = Vec::new();
        for (tag, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', e.state.code()),
            (b'M', e.message.as_str()),
        ] {
            msg.push(tag);
            msg.extend_from_slice(value.as_bytes());
            msg.push(0);
        }
        msg.push(0);
        let mut out = vec![b'E'];
        out.extend_from_slice(&((msg.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&msg);
        socket.write_all(&out).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), result).await;
}
