//! What the router answers itself: ping, members and membership changes
//! (join, leave, heartbeat), and refusals of node-only operations.

use bytes::Bytes;
use milena_protocol::{Body, Op, Response, Status, encode_response};
use std::sync::atomic::Ordering;

use super::Router;
use crate::error::WireError;
use crate::net;

/// Operations the router answers itself.
pub fn answer(router: &Router, id: u64, op: &Op<'_>) -> Bytes {
    let mut out = Vec::new();
    let result = match *op {
        Op::Ping => {
            respond(id, Body::Empty, &mut out);
            Ok(())
        }
        Op::Members => {
            members_response(router, id, &mut out);
            Ok(())
        }
        Op::Join { .. } => Err(WireError::Undecodable(
            "join is answered in the wrong place".into(),
        )),
        Op::Heartbeat { address } => valid_address(address)
            .and_then(|()| {
                router
                    .members
                    .heartbeat(address)
                    .map_err(|e| WireError::NotMember(e.to_string()))
            })
            .map(|_| members_response(router, id, &mut out)),
        Op::Leave { address } => router
            .leave_checked(address)
            .map(|_| respond(id, Body::Empty, &mut out)),
        Op::Hello { .. } => Err(WireError::DuplicateHello),
        Op::RoutedGet { .. } => Err(WireError::NodeOnly("routed get")),
        Op::RoutedPut { .. } => Err(WireError::NodeOnly("routed put")),
        Op::Peek { .. } => Err(WireError::NodeOnly("peek")),
        Op::HandoffGet { .. } => Err(WireError::NodeOnly("handoff get")),
        Op::FencedGet { .. } => Err(WireError::NodeOnly("fenced get")),
        Op::FencedPut { .. } => Err(WireError::NodeOnly("fenced put")),
        Op::FencedDelete { .. } => Err(WireError::NodeOnly("fenced delete")),
        Op::Replicate { .. } => Err(WireError::NodeOnly("replicate")),
        Op::Settle { .. } => Err(WireError::NodeOnly("settle")),
        Op::RoutedPutIf { .. } => Err(WireError::NodeOnly("routed conditional put")),
        Op::FencedPutIf { .. } => Err(WireError::NodeOnly("fenced conditional put")),
        Op::RoutedTtl { .. } => Err(WireError::NodeOnly("routed ttl")),
        Op::FencedTtl { .. } => Err(WireError::NodeOnly("fenced ttl")),
        // Handled by the caller; never answered here.
        Op::Get { .. }
        | Op::Put { .. }
        | Op::Delete { .. }
        | Op::PutIf { .. }
        | Op::Ttl { .. }
        | Op::Stats => Err(WireError::Undecodable(
            "operation answered in the wrong place".into(),
        )),
    };
    if let Err(e) = result {
        router.stats.errors.fetch_add(1, Ordering::Relaxed);
        e.respond(id, &mut out);
    }
    Bytes::from(out).slice(4..)
}

pub fn respond(id: u64, body: Body<'_>, out: &mut Vec<u8>) {
    encode_response(
        &Response {
            id,
            status: Status::Ok,
            body,
        },
        out,
    );
}

fn members_response(router: &Router, id: u64, out: &mut Vec<u8>) {
    let view = router.members.view();
    let body = Body::Members {
        epoch: view.epoch,
        addresses: view.ring.addresses().collect(),
    };
    respond(id, body, out);
}

/// Answers a join, once the address has been checked (which takes a
/// connection to it: never on a connection's read loop).
pub async fn join(router: &Router, id: u64, address: &str) -> Bytes {
    let mut out = Vec::new();
    match router.join_checked(address).await {
        Ok(_) => members_response(router, id, &mut out),
        Err(e) => {
            router.stats.errors.fetch_add(1, Ordering::Relaxed);
            e.respond(id, &mut out);
        }
    }
    Bytes::from(out).slice(4..)
}

fn valid_address(address: &str) -> Result<(), WireError> {
    net::parse_url(address)
        .map(|_| ())
        .map_err(WireError::BadAddress)
}
