//! Raft between coordinators over Arrow Flight: each RPC is a `DoAction` whose type names it
//! and whose body is the openraft request as JSON; the one result's body is the JSON of
//! `Result<response, RaftError>`. A transport failure is `Unreachable` to openraft (it backs
//! off); a malformed request gets an error status.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::Stream;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use orochi_common::error::{DbError, DbResult, SqlState};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::TypeConfig;
use crate::catalog::{Command, Outcome};

const APPEND: &str = "raft.append";
const VOTE: &str = "raft.vote";
const SNAPSHOT: &str = "raft.snapshot";
const PROPOSE: &str = "raft.propose";
/// Answered by any running member: another coordinator checks it is alive.
const PING: &str = "raft.ping";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded change may take at the leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flight clients of the other members, by address (connected lazily, shared by openraft's
/// replication streams and forwarded proposals).
#[derive(Default)]
pub struct Peers {
    clients: Mutex<HashMap<String, Peer>>,
}

impl Peers {
    pub fn get(&self, addr: &str) -> DbResult<Peer> {
        let mut clients = self.clients.lock();
        if let Some(p) = clients.get(addr) {
            return Ok(p.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                DbError::new(
                    SqlState::InvalidParameterValue,
                    format!("invalid Raft peer address \"{addr}\": {e}"),
                )
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let peer = Peer {
            addr: addr.to_string(),
            client: FlightServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        };
        clients.insert(addr.to_string(), peer.clone());
        Ok(peer)
    }
}

#[derive(Clone)]
pub struct Peer {
    addr: String,
    client: FlightServiceClient<Channel>,
}

impl Peer {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let mut client = self.client.clone();
        let call = async move {
            let response = client
                .do_action(Action {
                    r#type: kind.to_string(),
                    body: body.into(),
                })
                .await
                .map_err(|s| s.message().to_string())?;
            let result = response
                .into_inner()
                .message()
                .await
                .map_err(|s| s.message().to_string())?
                .ok_or_else(|| "no reply".to_string())?;
            serde_json::from_slice(&result.body).map_err(|e| format!("malformed reply: {e}"))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r.map_err(|e| format!("Raft peer {}: {e}", self.addr)),
            Err(_) => Err(format!("Raft peer {}: timed out", self.addr)),
        }
    }

    /// Whether the member answers (within a second).
    pub async fn ping(&self) -> bool {
        self.call::<(), ()>(PING, &(), Duration::from_secs(1))
            .await
            .is_ok()
    }

    /// Forwards a change to the member believed to lead: `None` if it no longer does.
    pub async fn propose(&self, command: &Command) -> Result<Option<(Outcome, u64)>, String> {
        self.call(PROPOSE, command, PROPOSE_TIMEOUT).await
    }
}

pub struct Factory {
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Link {
        Link {
            target,
            peer: self.peers.get(&node.addr).map_err(|e| e.message),
        }
    }
}

/// The connection to one member.
pub struct Link {
    target: u64,
    peer: Result<Peer, String>,
}

fn unreachable<E: std::error::Error>(e: String) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
}

impl Link {
    async fn rpc<Req, Resp, E>(
        &self,
        kind: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let peer = self.peer.as_ref().map_err(|e| unreachable(e.clone()))?;
        let reply: Result<Resp, RaftError<u64, E>> = peer
            .call(kind, request, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(VOTE, &rpc, &option).await
    }
}

/// Serves this member's Raft RPCs on `addr` (in the background, for the life of the node).
pub async fn serve(raft: Raft<TypeConfig>, addr: &str) -> DbResult<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        DbError::new(
            SqlState::ConnectionFailure,
            format!("binding the Raft listener {addr}: {e}"),
        )
    })?;
    tracing::info!(address = %addr, "Raft listener: the other coordinators replicate the catalog here");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(
                FlightServiceServer::new(RaftService { raft })
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20),
            )
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Raft listener stopped");
        }
    });
    Ok(())
}

struct RaftService {
    raft: Raft<TypeConfig>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft request: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<Boxed<arrow_flight::Result>>, Status> {
    let body = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    let result = arrow_flight::Result { body: body.into() };
    Ok(Response::new(Box::pin(futures::stream::once(async {
        Ok(result)
    }))))
}

#[tonic::async_trait]
impl FlightService for RaftService {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        match action.r#type.as_str() {
            APPEND => reply(&self.raft.append_entries(decode(&action.body)?).await),
            VOTE => reply(&self.raft.vote(decode(&action.body)?).await),
            SNAPSHOT => reply(&self.raft.install_snapshot(decode(&action.body)?).await),
            PING => reply(&()),
            PROPOSE => {
                let command: Command = decode(&action.body)?;
                let forwarded = match self.raft.client_write(command).await {
                    Ok(r) => Some((r.data, r.log_id.index)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => None,
                    Err(e) => return Err(Status::unavailable(e.to_string())),
                };
                reply(&forwarded)
            }
            other => Err(Status::invalid_argument(format!(
                "unknown Raft action {other}"
            ))),
        }
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented("do_get"))
    }
    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put"))
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
}
