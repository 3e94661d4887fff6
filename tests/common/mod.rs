//! Shared helpers: real servers on port 0 and a raw protocol socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use milena::node::{Node, NodeSettings};
use milena::protocol::{
    Body, FrameCodec, MAGIC, Op, PROTOCOL_VERSION, Request, Status, decode_response, encode_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A node serving on a loopback port.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestNode {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels the node and waits until every connection is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("node task");
    }
}

/// Starts a node; the listener is bound before this returns, so clients
/// may connect at once.
pub async fn start_node_with(node: Node) -> TestNode {
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let node = Arc::new(node);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(milena::node::run(listener, node.clone(), shutdown.clone()));
    TestNode {
        addr,
        node,
        shutdown,
        task,
    }
}

pub async fn start_node(settings: NodeSettings) -> TestNode {
    start_node_with(Node::new(settings)).await
}

pub fn small_settings() -> NodeSettings {
    NodeSettings {
        max_key: 250,
        max_value: 4096,
        ..NodeSettings::default()
    }
}

/// An owned, test-friendly view of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub id: u64,
    pub status: Status,
    pub value: Option<Vec<u8>>,
    pub message: Option<String>,
}

/// A raw protocol connection, for sending exactly the bytes a test wants.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(64 << 20),
        }
    }

    /// Connects and completes the hello.
    pub async fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(0, hello_op()).await;
        let r = raw.recv().await.expect("hello answer");
        assert_eq!(r.status, Status::Ok, "{r:?}");
        raw
    }

    pub async fn send(&mut self, id: u64, op: Op<'_>) {
        let mut out = Vec::new();
        encode_request(&Request { id, op }, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next response, or `None` once the server has closed.
    pub async fn recv(&mut self) -> Option<Resp> {
        loop {
            if let Some(frame) = self.codec.decode_frame(&mut self.buf).expect("frame") {
                let r = decode_response(&frame).expect("response");
                return Some(Resp {
                    id: r.id,
                    status: r.status,
                    value: match r.body {
                        Body::Value(v) => Some(v.to_vec()),
                        _ => None,
                    },
                    message: match r.body {
                        Body::Message(m) => Some(m.to_string()),
                        _ => None,
                    },
                });
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server closes; panics if it answers with more frames
    /// than `max_frames` first.
    pub async fn expect_closed(&mut self) {
        assert!(self.recv().await.is_none(), "expected the server to close");
    }
}

pub fn hello_op() -> Op<'static> {
    Op::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        token: None,
    }
}
