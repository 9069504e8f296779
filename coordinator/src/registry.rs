//! The coordinator's cluster listener (`--cluster-listen`): workers started with
//! `--coordinator` register themselves here and then send a heartbeat every second
//! (`orochi_common::rpc::{REGISTER_ACTION, HEARTBEAT_ACTION}`). Arrow Flight, like the
//! workers' own service, so one client and one server stack serve both directions.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt};
use orochi_common::rpc::{
    HEARTBEAT_ACTION, PROTOCOL_VERSION, REGISTER_ACTION, Registered, Registration,
};
use orochi_worker::flight::status_of;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::ClusterShardService;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Starts serving registrations on `addr` (in the background, for the life of the process).
pub async fn serve(cluster: Arc<ClusterShardService>, addr: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the cluster listener {addr}: {e}"))?;
    tracing::info!(address = %addr, "cluster listener: workers register here");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(FlightServiceServer::new(Registry { cluster }))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "cluster listener stopped");
        }
    });
    Ok(())
}

struct Registry {
    cluster: Arc<ClusterShardService>,
}

#[tonic::async_trait]
impl FlightService for Registry {
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
        let reg: Registration = serde_json::from_slice(&action.body)
            .map_err(|e| Status::invalid_argument(format!("malformed registration: {e}")))?;
        if reg.protocol != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker speaks protocol {}, this coordinator {PROTOCOL_VERSION}",
                reg.protocol
            )));
        }
        let node = match action.r#type.as_str() {
            REGISTER_ACTION => self
                .cluster
                .register(&reg.address)
                .await
                .map_err(|e| status_of(&e))?,
            HEARTBEAT_ACTION => self.cluster.heartbeat(&reg.address).ok_or_else(|| {
                Status::not_found(format!("worker {} is not registered", reg.address))
            })?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?}"
                )));
            }
        };
        let body = serde_json::to_vec(&Registered { node }).expect("serializes");
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(futures::stream::iter([Ok(result)]).boxed()))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let types = [REGISTER_ACTION, HEARTBEAT_ACTION].map(|t| {
            Ok(ActionType {
                r#type: t.into(),
                description: "an orochi_common::rpc::Registration as JSON".into(),
            })
        });
        Ok(Response::new(futures::stream::iter(types).boxed()))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented("do_get"))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
}
