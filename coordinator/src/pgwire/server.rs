//! Accept loop: one task per connection (owned by a `JoinSet`), a connection limit answered
//! with 53300, graceful shutdown that lets in-flight work finish for a grace period.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use orochi_common::error::{DbError, SqlState};
use pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::messages::response::TransactionStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;

use crate::pgwire::handler::{Connection, Prepared};
use crate::pgwire::io::CoalescingIo;
use crate::session::{Instance, Session};

pub async fn serve(
    listener: TcpListener,
    instance: Arc<Instance>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(instance.options.max_connections));
    let connections = Arc::new(ConnectionManager::new());
    let authenticator = Arc::new(crate::pgwire::auth::Authenticator::new(
        instance.catalog.clone(),
        hba_rules(&instance.options).map_err(std::io::Error::other)?,
    ));
    let tls = tls_acceptor(&instance.options).map_err(std::io::Error::other)?;
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
                let authenticator = authenticator.clone();
                let tls = tls.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    tracing::debug!(%peer, "connection opened");
                    let conn = Connection::new(
                        Session::new(instance, "postgres".into(), "postgres".into()),
                        connections,
                        authenticator,
                    );
                    let session = conn.session();
                    // A panic while decoding a client's bytes (pgwire's decoders have some,
                    // e.g. on a length field below 4) must end only this connection, and
                    // still run the cleanup below: its transaction's row locks.
                    let served =
                        std::panic::AssertUnwindSafe(process_connection(socket, conn, tls))
                            .catch_unwind()
                            .await;
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "connection ended with an error")
                        }
                        Err(_) => tracing::error!(
                            %peer,
                            "connection task panicked (see the panic message above); \
                             the connection was closed and its transaction rolled back"
                        ),
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

/// How long a client has to finish start-up and authentication (Postgres:
/// `authentication_timeout`, 1 minute).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The access rules: `hba_file`, or the defaults (see [`crate::pgwire::auth`]).
fn hba_rules(
    options: &crate::config::CoordinatorOptions,
) -> Result<crate::pgwire::auth::HbaRules, String> {
    match &options.hba_file {
        Some(path) => crate::pgwire::auth::HbaRules::load(path),
        None => Ok(crate::pgwire::auth::HbaRules::default_for(
            !options.passwords.is_empty(),
        )),
    }
}

/// The TLS acceptor when `tls_cert_file` and `tls_key_file` are set.
fn tls_acceptor(
    options: &crate::config::CoordinatorOptions,
) -> Result<Option<TlsAcceptor>, String> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&options.tls_cert_file, &options.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err("tls_cert_file and tls_key_file must be set together".into()),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading TLS certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading TLS private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

type TlsAcceptor = pgwire::tokio::tokio_rustls::TlsAcceptor;

/// One client connection: pgwire's TLS negotiation (accepted when a certificate is
/// configured), then its message dispatch, over a [`CoalescingIo`] so each round trip's
/// replies go out in one `send`. This is pgwire's own `process_socket` loop with that one
/// change.
async fn process_connection(
    socket: TcpStream,
    conn: Arc<Connection>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let startup_timeout = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_timeout);
    let negotiated = tokio::select! {
        _ = &mut startup_timeout => return Ok(()),
        s = pgwire::tokio::server::negotiate_tls::<Prepared>(socket, tls) => s?,
    };
    let Some(framed) = negotiated else {
        return Ok(());
    };
    let old = framed.into_parts();
    let mut parts = FramedParts::new(CoalescingIo::new(old.io), old.codec);
    parts.read_buf = old.read_buf;
    parts.write_buf = old.write_buf;
    let mut socket = Framed::from_parts(parts);

    let handler = conn.handler();
    let cancel_handler = conn.cancel_handler();
    let error_handler = conn.error_handler();
    loop {
        let msg = if matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        ) {
            tokio::select! {
                _ = &mut startup_timeout => None,
                msg = socket.next() => msg,
            }
        } else if let Some((after, error)) =
            (matches!(socket.state(), PgWireConnectionState::ReadyForQuery)
                && socket.read_buffer().is_empty())
            .then(|| handler.idle_timeout())
            .flatten()
        {
            // idle_in_transaction_session_timeout / idle_session_timeout: the session goes,
            // and with it (below, in the caller) its transaction and row locks
            tokio::select! {
                msg = socket.next() => msg,
                _ = tokio::time::sleep(after) => {
                    let info = crate::pgwire::error::fatal_info(&error);
                    let _ = socket
                        .send(pgwire::messages::PgWireBackendMessage::ErrorResponse(info.into()))
                        .await;
                    break;
                }
            }
        } else {
            socket.next().await
        };
        let Some(Ok(msg)) = msg else { break };
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => msg.is_extended_query(),
        };
        let is_cancel_request = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
        if let Err(mut e) = pgwire::tokio::server::process_message(
            msg,
            &mut socket,
            handler.clone(),
            handler.clone(),
            handler.clone(),
            handler.clone(),
            cancel_handler.clone(),
        )
        .await
        {
            error_handler.on_error(&socket, &mut e);
            let is_fatal = e.is_fatal();
            pgwire::tokio::server::process_error(&mut socket, e, is_extended_query).await?;
            if is_fatal {
                break;
            }
        }
        if is_cancel_request {
            break;
        }
        // The session is the authority on transaction state. pgwire derives it from response
        // kinds and has no way back from a failed block to an open one (ROLLBACK TO
        // SAVEPOINT): make its state, and the ReadyForQuery just written, agree.
        if matches!(socket.state(), PgWireConnectionState::ReadyForQuery)
            && let Some(status) = handler.transaction_status()
            && status != socket.transaction_status()
        {
            socket.set_transaction_status(status);
            socket.get_mut().set_pending_ready_status(match status {
                TransactionStatus::Idle => b'I',
                TransactionStatus::Transaction => b'T',
                TransactionStatus::Error => b'E',
            });
        }
    }
    // send whatever is still buffered (a FATAL error, the last replies) before closing
    let _ = socket.close().await;
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
