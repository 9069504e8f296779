//! The worker daemon's Arrow Flight server: [`ShardService`] calls from coordinators, in the
//! protocol of [`orochi_common::rpc`]. It trusts nothing it receives: a body that does not
//! decode, or names a table or shard this worker does not have, is answered with an error
//! status, never a panic.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use orochi_common::error::{DbError, SqlState};
use orochi_common::rpc::{
    ACTION, Call, LoadTicket, PROTOCOL_VERSION, Reply, ScanTicket, WireError,
};
use orochi_common::service::ShardService;
use tonic::{Request, Response, Status, Streaming};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A [`DbError`] as a gRPC status (the message is the JSON [`WireError`]).
pub fn status_of(e: &DbError) -> Status {
    let code = match e.state {
        SqlState::InternalError | SqlState::IoError => tonic::Code::Internal,
        _ => tonic::Code::Aborted,
    };
    Status::new(
        code,
        serde_json::to_string(&WireError::from(e)).unwrap_or_else(|_| e.message.clone()),
    )
}

fn bad_request(what: impl std::fmt::Display) -> Status {
    status_of(&DbError::new(
        SqlState::ProtocolViolation,
        format!("malformed worker request: {what}"),
    ))
}

/// Serves a shard service over Flight.
pub struct WorkerFlight {
    service: Arc<dyn ShardService>,
    /// Drawn at start: sent with every reply ([`orochi_common::rpc::BOOT_HEADER`]).
    boot: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl WorkerFlight {
    pub fn new(service: Arc<dyn ShardService>) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // a random 64-bit number (std's hasher keys are random per process)
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let boot = h.finish().to_string().parse().expect("digits are ASCII");
        WorkerFlight { service, boot }
    }

    async fn call(&self, call: Call) -> Result<Reply, DbError> {
        let s = &self.service;
        Ok(match call {
            Call::Hello => Reply::Hello {
                protocol: PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            Call::CreateTable { table } => {
                s.create_table(&table).await?;
                Reply::Done
            }
            Call::AlterTable { table } => {
                s.alter_table(&table).await?;
                Reply::Done
            }
            Call::DropTable { table } => {
                s.drop_table(table).await?;
                Reply::Done
            }
            Call::Truncate { table } => {
                s.truncate(table).await?;
                Reply::Done
            }
            Call::FreezeTable { table, timeout_ms } => {
                s.freeze_table(table, std::time::Duration::from_millis(timeout_ms))
                    .await?;
                Reply::Done
            }
            Call::UnfreezeTable { table } => {
                s.unfreeze_table(table).await?;
                Reply::Done
            }
            Call::Get {
                txn,
                table,
                keys,
                lock,
                lock_timeout_ms,
            } => Reply::Rows(
                s.get(
                    txn,
                    table,
                    &keys,
                    lock,
                    lock_timeout_ms.map(std::time::Duration::from_millis),
                )
                .await?,
            ),
            Call::Write { txn, req } => Reply::Written(s.write(txn, req).await?),
            Call::Commit { txn } => {
                s.commit(txn).await?;
                Reply::Done
            }
            Call::Abort { txn } => {
                s.abort(txn).await;
                Reply::Done
            }
            Call::Savepoint { txn } => Reply::Savepoint(s.savepoint(txn).await?),
            Call::RollbackTo { txn, savepoint } => {
                s.rollback_to(txn, savepoint).await?;
                Reply::Done
            }
            Call::ShardStats { table } => Reply::Stats(s.shard_stats(table).await?),
            Call::Prepare { txn } => {
                s.prepare(txn).await?;
                Reply::Done
            }
            Call::CommitPrepared { txn } => {
                s.commit_prepared(txn).await?;
                Reply::Done
            }
            Call::AbortPrepared { txn } => {
                s.abort_prepared(txn).await?;
                Reply::Done
            }
            Call::ListPrepared => Reply::Prepared(s.prepared().await?),
            Call::AbortOpen { below } => {
                let n = s.abort_open(below).await?;
                if n > 0 {
                    tracing::info!(
                        transactions = n,
                        "a coordinator restarted: its open transactions were rolled back"
                    );
                }
                Reply::Done
            }
        })
    }
}

#[tonic::async_trait]
impl FlightService for WorkerFlight {
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
        if action.r#type != ACTION {
            return Err(bad_request(format_args!(
                "unknown action {:?}",
                action.r#type
            )));
        }
        let call: Call = serde_json::from_slice(&action.body).map_err(bad_request)?;
        let reply = self.call(call).await.map_err(|e| status_of(&e))?;
        let body = serde_json::to_vec(&reply)
            .map_err(|e| status_of(&DbError::internal(format!("encoding a reply: {e}"))))?;
        let result = arrow_flight::Result { body: body.into() };
        let mut response = Response::new(futures::stream::iter([Ok(result)]).boxed());
        response
            .metadata_mut()
            .insert(orochi_common::rpc::BOOT_HEADER, self.boot.clone());
        Ok(response)
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket: ScanTicket =
            serde_json::from_slice(&request.into_inner().ticket).map_err(bad_request)?;
        let batches = self
            .service
            .scan(ticket.txn, ticket.req)
            .await
            .map_err(|e| status_of(&e))?;
        let batches = batches.map_err(|e| FlightError::Tonic(Box::new(status_of(&e))));
        let stream = FlightDataEncoderBuilder::new()
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                other => status_of(&DbError::internal(format!("encoding a batch: {other}"))),
            });
        Ok(Response::new(stream.boxed()))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let t = ActionType {
            r#type: ACTION.into(),
            description: "an orochi_common::rpc::Call as JSON".into(),
        };
        Ok(Response::new(futures::stream::iter([Ok(t)]).boxed()))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake: no authentication yet"))
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

    /// A bulk load: the first message's descriptor names the transaction and table
    /// ([`LoadTicket`]); each batch is loaded as it arrives.
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| bad_request("a load without data"))?;
        let ticket: LoadTicket = match &first.flight_descriptor {
            Some(d) => serde_json::from_slice(&d.cmd).map_err(bad_request)?,
            None => return Err(bad_request("a load without a descriptor")),
        };
        let data = futures::stream::once(async { Ok(first) })
            .chain(input)
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        loop {
            let batch = match batches.try_next().await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(FlightError::Tonic(s)) => return Err(*s),
                Err(e) => return Err(bad_request(e)),
            };
            self.service
                .load_batch(ticket.txn, ticket.table, batch)
                .await
                .map_err(|e| status_of(&e))?;
        }
        let done = serde_json::to_vec(&Reply::Done).expect("a reply serializes");
        let result = PutResult {
            app_metadata: done.into(),
        };
        let mut response = Response::new(futures::stream::iter([Ok(result)]).boxed());
        response
            .metadata_mut()
            .insert(orochi_common::rpc::BOOT_HEADER, self.boot.clone());
        Ok(response)
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
}

#[cfg(test)]
mod tests {
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::flight_service_server::FlightServiceServer;
    use orochi_common::datum::Datum;
    use orochi_common::service::ScanRequest;

    use super::*;
    use crate::LocalShardService;
    use crate::service::StoreOptions;

    async fn action(
        client: &mut FlightServiceClient<tonic::transport::Channel>,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<Reply, Status> {
        let mut results = client
            .do_action(Action {
                r#type: kind.into(),
                body: body.into(),
            })
            .await?
            .into_inner();
        let r = results.message().await?.expect("one result");
        Ok(serde_json::from_slice(&r.body).expect("a reply"))
    }

    fn sqlstate(s: &Status) -> String {
        serde_json::from_str::<WireError>(s.message())
            .map(|w| w.sqlstate)
            .unwrap_or_else(|_| format!("not a WireError: {}", s.message()))
    }

    /// Hostile or wrong requests get an error status with a SQLSTATE; the worker keeps
    /// serving (a panic would end the connection or the process).
    #[tokio::test]
    async fn malformed_requests_get_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let service = LocalShardService::open(dir.path(), &StoreOptions::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FlightServiceServer::new(WorkerFlight::new(Arc::new(
                    service,
                ))))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = FlightServiceClient::new(channel);

        let e = action(&mut client, "nope", b"{}".to_vec())
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "08P01");
        for garbage in [
            b"".to_vec(),
            b"\xff\x00garbage".to_vec(),
            b"{\"Get\":{\"txn\":1}}".to_vec(),
            br#"{"Write":{"txn":1,"req":{"table":1,"ops":[{"Insert":{"row":[{"Int4":1e99}]}}],"lock_timeout":null}}}"#.to_vec(),
        ] {
            let e = action(&mut client, ACTION, garbage).await.unwrap_err();
            assert_eq!(sqlstate(&e), "08P01", "{e:?}");
        }
        // well-formed, but about a table this worker does not have
        let call = Call::Get {
            txn: 1,
            table: 999,
            keys: vec![vec![1, 2, 3]],
            lock: true,
            lock_timeout_ms: None,
        };
        let e = action(&mut client, ACTION, serde_json::to_vec(&call).unwrap())
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42P01");

        // a table, then a key that does not decode and a shard that does not exist
        let def = crate::store::tests::table();
        let create = Call::CreateTable { table: def.clone() };
        action(&mut client, ACTION, serde_json::to_vec(&create).unwrap())
            .await
            .unwrap();
        let call = Call::Get {
            txn: 1,
            table: 16384,
            keys: vec![vec![0xff]],
            lock: false,
            lock_timeout_ms: None,
        };
        let e = action(&mut client, ACTION, serde_json::to_vec(&call).unwrap())
            .await
            .unwrap_err();
        assert!(!sqlstate(&e).starts_with("not"), "{e:?}");
        for ticket in [
            b"not json".to_vec(),
            serde_json::to_vec(&ScanTicket {
                txn: 1,
                req: ScanRequest {
                    shards: vec![99],
                    ..ScanRequest::full(&def, vec![0], 1024)
                },
            })
            .unwrap(),
            serde_json::to_vec(&ScanTicket {
                txn: 1,
                req: ScanRequest::full(&def, vec![7], 1024),
            })
            .unwrap(),
            // plan fragments that are not protobuf, empty, or not a plan
            serde_json::to_vec(&ScanTicket {
                txn: 1,
                req: ScanRequest {
                    fragment: Some(b"\xff\xfe not a plan".to_vec()),
                    ..ScanRequest::full(&def, vec![0], 1024)
                },
            })
            .unwrap(),
            serde_json::to_vec(&ScanTicket {
                txn: 1,
                req: ScanRequest {
                    fragment: Some(Vec::new()),
                    ..ScanRequest::full(&def, vec![0], 1024)
                },
            })
            .unwrap(),
            // a second input without a fragment to read it
            serde_json::to_vec(&ScanTicket {
                txn: 1,
                req: ScanRequest {
                    more_inputs: vec![orochi_common::service::ScanInput {
                        table: def.id,
                        projection: vec![0],
                    }],
                    ..ScanRequest::full(&def, vec![0], 1024)
                },
            })
            .unwrap(),
        ] {
            let Err(e) = client
                .do_get(Ticket {
                    ticket: ticket.into(),
                })
                .await
            else {
                panic!("a malformed scan was accepted");
            };
            assert!(!sqlstate(&e).starts_with("not"), "{e:?}");
        }

        // loads (DoPut): no descriptor, a descriptor that is not a ticket, a batch of
        // another shape, data that is not Arrow IPC
        let encode = |desc: Option<FlightDescriptor>, batch: arrow::record_batch::RecordBatch| async move {
            FlightDataEncoderBuilder::new()
                .with_flight_descriptor(desc)
                .build(futures::stream::once(async { Ok(batch) }))
                .try_collect::<Vec<FlightData>>()
                .await
                .unwrap()
        };
        let ticket = |txn| {
            FlightDescriptor::new_cmd(
                serde_json::to_vec(&LoadTicket { txn, table: 16384 }).unwrap(),
            )
        };
        let good = |k: i64| {
            let mut b = crate::batch::BatchBuilder::new(&def, &[0, 1], 1);
            b.push([Datum::Int8(k), Datum::Int8(k)].iter()).unwrap();
            b.finish().unwrap()
        };
        let narrow = {
            let mut b = crate::batch::BatchBuilder::new(&def, &[0], 1);
            b.push([Datum::Int8(1)].iter()).unwrap();
            b.finish().unwrap()
        };
        let garbage = vec![FlightData {
            flight_descriptor: Some(ticket(2)),
            data_header: b"\xff\xff\xff\xff garbage".to_vec().into(),
            ..Default::default()
        }];
        for data in [
            encode(None, good(1)).await,
            encode(
                Some(FlightDescriptor::new_cmd(b"not json".to_vec())),
                good(1),
            )
            .await,
            encode(Some(ticket(2)), narrow).await,
            garbage,
            Vec::new(),
        ] {
            let Err(e) = client.do_put(futures::stream::iter(data)).await else {
                panic!("a malformed load was accepted");
            };
            assert!(!sqlstate(&e).starts_with("not"), "{e:?}");
        }
        // a well-formed load commits
        let put = client
            .do_put(futures::stream::iter(
                encode(Some(ticket(3)), good(5)).await,
            ))
            .await
            .unwrap();
        let answer = put.into_inner().message().await.unwrap().unwrap();
        assert!(matches!(
            serde_json::from_slice(&answer.app_metadata).unwrap(),
            Reply::Done
        ));
        action(
            &mut client,
            ACTION,
            serde_json::to_vec(&Call::Commit { txn: 3 }).unwrap(),
        )
        .await
        .unwrap();
        let call = Call::Get {
            txn: 4,
            table: 16384,
            keys: vec![def.encode_key(&[Datum::Int8(5), Datum::Int8(0)])],
            lock: false,
            lock_timeout_ms: None,
        };
        let got = action(&mut client, ACTION, serde_json::to_vec(&call).unwrap()).await;
        assert!(
            matches!(&got, Ok(Reply::Rows(r)) if r == &vec![Some(vec![Datum::Int8(5), Datum::Int8(5)])]),
            "{got:?}"
        );

        // still serving
        match action(
            &mut client,
            ACTION,
            serde_json::to_vec(&Call::Hello).unwrap(),
        )
        .await
        .unwrap()
        {
            Reply::Hello { protocol, .. } => assert_eq!(protocol, PROTOCOL_VERSION),
            other => panic!("{other:?}"),
        }
    }
}
