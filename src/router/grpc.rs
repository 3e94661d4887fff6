//! The gRPC gateway: the `milena.Router` service over the router's own
//! member table and forwarding path, served on the router's port.

use std::sync::Arc;

use bytes::Bytes;
use milena_protocol::{Body, Op, Status as WireStatus, decode_response};
use tonic::{Request, Response, Status};

use super::Router;
use super::admit::Access;
use super::request::Kind;
use crate::error::WireError;
use crate::grpc::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, JoinRequest, JoinResponse,
    LeaveRequest, LeaveResponse, MembersRequest, MembersResponse, PutRequest, PutResponse,
    router_server,
};
use crate::net;

/// Metadata entry that carries `CLUSTER_TOKEN` on Join and Leave.
pub const TOKEN_METADATA: &str = "x-cluster-token";

/// The `milena.Router` service.
#[derive(Debug, Clone)]
pub struct Gateway {
    router: Arc<Router>,
}

impl Gateway {
    /// A gateway over `router`.
    pub fn new(router: Arc<Router>) -> Self {
        Gateway { router }
    }

    fn authorize<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        let offered = req
            .metadata()
            .get(TOKEN_METADATA)
            .and_then(|v| v.to_str().ok());
        match self.router.access(offered) {
            Ok(Access { cluster: true, .. }) => Ok(()),
            _ => Err(Status::unauthenticated(format!(
                "{what} needs the cluster token (CLUSTER_TOKEN) in `{TOKEN_METADATA}` metadata"
            ))),
        }
    }

    /// Data calls need `CLIENT_TOKEN` (or the cluster token) when the
    /// router has one, as `authorization: Bearer <token>` metadata.
    fn authorize_data<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let offered = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v));
        match self.router.access(offered) {
            Ok(Access { data: true, .. }) => Ok(()),
            _ => Err(Status::unauthenticated(
                "data calls need the client token (CLIENT_TOKEN) as `authorization: Bearer <token>` metadata",
            )),
        }
    }

    /// Sends a data operation down the router's forwarding path and waits
    /// for the node's answer (as a response body).
    async fn forward(
        &self,
        kind: Kind,
        key: &[u8],
        value: Option<&[u8]>,
        op: Op<'_>,
    ) -> Result<Bytes, Status> {
        self.router
            .call(kind, key, value, op)
            .await
            .map_err(|e| grpc_status(&e))
    }
}

/// The gRPC status for a wire error status: the one place the two
/// vocabularies meet. `Unavailable` (not applied, retry) is gRPC's
/// UNAVAILABLE, which retry policies retry; `Internal` (may have been
/// applied) is UNKNOWN, which they do not.
fn to_status(status: WireStatus, message: &str) -> Status {
    match status {
        WireStatus::RateLimited => Status::resource_exhausted(message),
        WireStatus::TooLarge | WireStatus::BadRequest => Status::invalid_argument(message),
        WireStatus::Unavailable => Status::unavailable(message),
        WireStatus::Unauthorized => Status::unauthenticated(message),
        WireStatus::Internal => Status::unknown(message),
        // Never reaches a client (the router routes it again); not applied.
        WireStatus::StaleRing => Status::unavailable(message),
        WireStatus::NotStored => Status::failed_precondition(message),
        WireStatus::Ok | WireStatus::NotFound => Status::internal(message),
    }
}

/// The gRPC status for an error the router itself gives.
fn grpc_status(e: &WireError) -> Status {
    to_status(e.status(), &e.to_string())
}

/// Decodes a node's (or the router's) answer; errors become gRPC statuses.
fn answer(body: &[u8]) -> Result<(WireStatus, Option<Vec<u8>>), Status> {
    let r = decode_response(body).map_err(|e| Status::internal(e.to_string()))?;
    match (r.status, r.body) {
        (WireStatus::Ok, Body::Value(v)) => Ok((WireStatus::Ok, Some(v.to_vec()))),
        (s @ (WireStatus::Ok | WireStatus::NotFound), _) => Ok((s, None)),
        (s, Body::Message(m)) => Err(to_status(s, m)),
        (s, _) => Err(to_status(s, s.as_str())),
    }
}

#[tonic::async_trait]
impl router_server::Router for Gateway {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.authorize(&req, "join")?;
        let address = &req.get_ref().address;
        net::parse_url(address)
            .map_err(|e| Status::invalid_argument(format!("invalid node address: {e}")))?;
        if self.router.in_etcd() {
            return Err(grpc_status(&WireError::MembershipInEtcd));
        }
        self.router
            .join_checked(address)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(JoinResponse {}))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        self.authorize(&req, "leave")?;
        let left = if self.router.in_etcd() {
            self.router.leave_in_etcd(&req.get_ref().address).await
        } else {
            self.router
                .leave_checked(&req.get_ref().address)
                .map(|_| ())
        };
        left.map_err(|e| match e {
            WireError::NotMember(m) => Status::not_found(m),
            e => grpc_status(&e),
        })?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.authorize_data(&req)?;
        let key = req.into_inner().key;
        let body = self
            .forward(Kind::Get, &key, None, Op::Get { key: &key })
            .await?;
        let (_, value) = answer(&body)?;
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.authorize_data(&req)?;
        let p = req.into_inner();
        // proto3 has no "unset": 0 means the node's default TTL.
        let ttl = (p.ttl_seconds != 0).then_some(p.ttl_seconds);
        let op = Op::Put {
            key: &p.key,
            value: &p.value,
            ttl,
        };
        let body = self.forward(Kind::Put, &p.key, Some(&p.value), op).await?;
        answer(&body)?;
        Ok(Response::new(PutResponse {}))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.authorize_data(&req)?;
        let key = req.into_inner().key;
        let body = self
            .forward(Kind::Delete, &key, None, Op::Delete { key: &key })
            .await?;
        let (status, _) = answer(&body)?;
        Ok(Response::new(DeleteResponse {
            deleted: status == WireStatus::Ok,
        }))
    }

    async fn members(
        &self,
        req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        // Node addresses are for clients and for the cluster alike.
        self.authorize_data(&req)
            .or_else(|_| self.authorize(&req, "members"))?;
        let view = self.router.members.view();
        Ok(Response::new(MembersResponse {
            addresses: view.ring.addresses().map(str::to_string).collect(),
        }))
    }
}
