//! Accept loop and the per-connection pipelined frame loop.
//!
//! A connection reads whatever the socket has, executes every complete frame
//! in it, and answers the whole batch with one `write`: a client that
//! pipelines 16 requests costs one read and one write syscall, not 32.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use milena_protocol::{FrameCodec, FrameError, decode_request, peek_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::execute::{Later, execute};
use super::metrics::OpKind;
use super::{Node, Tally};
use crate::budget::{self, Receiving};
use crate::error::{WireError, check_hello, hello_response};
use crate::net;
use crate::tls::Stream;
use prometheus::local::LocalHistogram;

/// Initial read and write buffer capacity per connection.
const BUF_CAPACITY: usize = 16 * 1024;
/// Answers gathered before a batch is written out early.
const WBUF_FLUSH: usize = 1024 * 1024;
/// Buffers that grew past this for a large value are given back once empty,
/// so idle connections do not pin megabytes each.
const BUF_KEEP: usize = 256 * 1024;
/// How long a batch's answers wait for its writes' copies before they go
/// out without them (the copied writes are then answered on their own).
const COPY_WAIT: Duration = Duration::from_millis(1);
/// How long a connection may take to receive its last responses once
/// shutdown has begun.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Serves the binary protocol on `listener` until `shutdown` is cancelled,
/// then stops accepting, lets every connection finish the batch it is on,
/// and returns once all of them are closed.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let (max, counters) = (node.settings.max_connections, node.stats.conns.clone());
    let token = shutdown.clone();
    net::accept_loop(listener, max, counters, tracker, shutdown, move |stream| {
        let (node, shutdown) = (node.clone(), token.clone());
        async move { serve_connection(stream, &node, &shutdown).await }
    })
    .await;
}

/// An accepted connection as a stream: after the TLS handshake when the
/// node has TLS (bounded by the hello timeout); `None`, counted as a
/// protocol error, if that fails.
pub(super) async fn accept_stream(tcp: TcpStream, node: &Node) -> Option<Stream> {
    let Some(tls) = &node.settings.tls else {
        return Some(Stream::Plain(tcp));
    };
    match tokio::time::timeout(node.settings.hello_timeout, tls.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(Stream::Server(Box::new(s))),
        Ok(Err(e)) => {
            node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// What the frame loop does after a frame.
enum Flow {
    Continue,
    /// The stream is out of sync or the peer misbehaved: flush and close.
    Close,
}

/// Runs one connection: hello, then pipelined requests, until the peer
/// closes, misbehaves, or the node shuts down.
async fn serve_connection(
    tcp: TcpStream,
    node: &Arc<Node>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let Some(mut stream) = accept_stream(tcp, node).await else {
        return Ok(());
    };
    let mut codec = FrameCodec::new(node.settings.max_frame());
    let mut rbuf = BytesMut::with_capacity(BUF_CAPACITY);
    let mut wbuf: Vec<u8> = Vec::with_capacity(BUF_CAPACITY);
    let mut tally = Tally::default();
    let mut latency = node.metrics.local_histograms();
    let mut greeted = false;
    // Answers that needed the tier arrive here, in whatever order they finish.
    let (late_tx, mut late_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    // Answers waiting for copies, polled by this task: no task per write.
    let mut here: FuturesUnordered<super::execute::Deferred> = FuturesUnordered::new();
    let hello_timeout = node.settings.hello_timeout;
    let hello_deadline = tokio::time::sleep(hello_timeout);
    tokio::pin!(hello_deadline);

    // Set when a batch stopped early (to flush a large answer, or at the
    // in-flight cap): frames may still wait in `rbuf`, so process them
    // before reading again.
    let mut backlog = false;
    // Answers being prepared by the tier for this connection. At
    // `MAX_INFLIGHT_PER_CONNECTION` the connection stops reading (and
    // decoding) until some arrive, so a client pipelining misses against a
    // slow tier holds a bounded number of tasks, not one per frame sent.
    let max_inflight = node.settings.max_inflight;
    let mut inflight = 0usize;
    let mut receiving = Receiving::new(node.settings.frame_timeout);
    loop {
        if backlog && shutdown.is_cancelled() {
            break;
        }
        // A large frame is read only with room in the node-wide budget;
        // without it the connection waits here (backpressure).
        if let Some(bytes) = receiving.to_hold(&rbuf) {
            if !greeted {
                // A hello is small: a large first frame holds no budget.
                node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                WireError::HelloRequired.respond(0, &mut wbuf);
                let _ = write_batch(&mut stream, &wbuf, shutdown).await;
                break;
            }
            tokio::select! {
                held = node.settings.buffered.hold(bytes) => receiving.hold(held),
                _ = shutdown.cancelled() => break,
            }
        }
        let room = inflight < max_inflight;
        let n = if backlog && room {
            1
        } else {
            tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,

            _ = budget::until(receiving.deadline()) => {
                node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                node.stats.errors.fetch_add(1, Ordering::Relaxed);
                WireError::FrameTimeout(receiving.timeout().as_secs()).respond(0, &mut wbuf);
                let _ = write_batch(&mut stream, &wbuf, shutdown).await;
                break;
            }
            late = late_rx.recv() => {
                // The channel stays open while `late_tx` lives (this loop).
                if let Some(mut answers) = late {
                    inflight = inflight.saturating_sub(1);
                    while let Ok(more) = late_rx.try_recv() {
                        inflight = inflight.saturating_sub(1);
                        answers.extend_from_slice(&more);
                    }
                    write_batch(&mut stream, &answers, shutdown).await?;
                }
                continue;
            }
            Some(mut answers) = here.next(), if !here.is_empty() => {
                inflight = inflight.saturating_sub(1);
                while let Some(Some(more)) = here.next().now_or_never() {
                    inflight = inflight.saturating_sub(1);
                    answers.extend_from_slice(&more);
                }
                write_batch(&mut stream, &answers, shutdown).await?;
                continue;
            }
            r = stream.read_buf(&mut rbuf), if room && !backlog => r?,
            // After the read: a hello that has arrived is taken even if
            // this task looks at it late (a busy node).
            _ = &mut hello_deadline, if !greeted => {
                node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                node.stats.errors.fetch_add(1, Ordering::Relaxed);
                WireError::HelloTimeout(hello_timeout.as_secs()).respond(0, &mut wbuf);
                stream.write_all(&wbuf).await?;
                break;
            }
            }
        };
        backlog = false;
        if n == 0 {
            if !rbuf.is_empty() {
                node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                node.stats.errors.fetch_add(1, Ordering::Relaxed);
                debug!(pending = rbuf.len(), "peer closed in the middle of a frame");
            }
            break;
        }
        // Latency runs from the read that brought a request in to the write
        // that carried its answer out: two clock reads per batch.
        let batch_start = std::time::Instant::now();
        let mut flow = Flow::Continue;
        let mut completed = false;
        let mut copying = 0usize;
        let mut frames = 0usize;
        loop {
            // Bound the answer buffer: a batch of small gets for large
            // values would otherwise grow it to gigabytes before one write.
            if wbuf.len() >= WBUF_FLUSH || inflight >= max_inflight {
                backlog = true;
                break;
            }
            match codec.decode_frame(&mut rbuf) {
                Ok(Some(frame)) => {
                    completed = true;
                    frames += 1;
                    let later;
                    (flow, later) = handle_frame(node, &frame, &mut greeted, &mut wbuf, &mut tally);
                    match later {
                        Some(Later::Spawn(work)) => {
                            inflight += 1;
                            let tx = late_tx.clone();
                            tokio::spawn(async move {
                                let _ = tx.send(work.await);
                            });
                        }
                        Some(Later::Here(work)) => {
                            inflight += 1;
                            copying += 1;
                            here.push(work);
                        }
                        None => {}
                    }
                    if let Flow::Close = flow {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let err = match e {
                        FrameError::TooLarge { .. } => WireError::FrameTooLarge(e.to_string()),
                        FrameError::Io(_) => WireError::Undecodable(e.to_string()),
                    };
                    node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tally.errors += 1;
                    err.respond(0, &mut wbuf);
                    flow = Flow::Close;
                    break;
                }
            }
        }
        // Frames left whole in `rbuf` by the in-flight cap are not a
        // request still arriving: no clock for them.
        receiving.decoded(if backlog { &[] } else { &rbuf }, completed);
        // Writes of this batch wait for their copies (a round trip to the
        // successors). When they are most of the batch, its other answers
        // wait with them for a moment, so that one write carries all (and
        // the peer reads once); a batch of mostly reads is answered now,
        // its reads not held up by a write's round trip. A batch of writes
        // alone has nothing to answer now: the loop below writes their
        // answers when the copies come back, with no timer armed (arming
        // one per batch costs a wake-up of the runtime's driver).
        if copying > 0 && copying < frames && copying * 2 >= frames && !matches!(flow, Flow::Close)
        {
            let deadline = tokio::time::sleep(COPY_WAIT);
            tokio::pin!(deadline);
            while copying > 0 {
                tokio::select! {
                    biased;
                    Some(answer) = here.next() => {
                        inflight = inflight.saturating_sub(1);
                        copying -= 1;
                        wbuf.extend_from_slice(&answer);
                    }
                    () = &mut deadline => break,
                }
            }
        }
        // Counters first, so a client that has its answer sees them counted.
        let batch = tally;
        node.stats.fold(&mut tally);
        if !wbuf.is_empty() {
            write_batch(&mut stream, &wbuf, shutdown).await?;
            wbuf.clear();
            if wbuf.capacity() > BUF_KEEP {
                wbuf = Vec::with_capacity(BUF_CAPACITY);
            }
        }
        record_latency(&mut latency, &batch, batch_start.elapsed().as_secs_f64());
        if let Flow::Close = flow {
            break;
        }
        if rbuf.is_empty() && rbuf.capacity() > BUF_KEEP {
            rbuf = BytesMut::with_capacity(BUF_CAPACITY);
        }
    }
    node.stats.fold(&mut tally);
    // Let the peer read what we wrote before the FIN (errors included).
    let _ = stream.shutdown().await;
    Ok(())
}

/// Adds one observation per request of the batch to the connection's local
/// histograms and flushes them (one atomic add per touched series).
fn record_latency(hists: &mut [LocalHistogram; 4], t: &Tally, secs: f64) {
    let other = t.requests.saturating_sub(t.gets + t.puts + t.deletes);
    for (kind, n) in [
        (OpKind::Get, t.gets),
        (OpKind::Put, t.puts),
        (OpKind::Delete, t.deletes),
        (OpKind::Other, other),
    ] {
        let h = &mut hists[kind as usize];
        for _ in 0..n {
            h.observe(secs);
        }
        if n > 0 {
            h.flush();
        }
    }
}

/// Writes a batch of responses. A peer that stops reading holds only its own
/// connection; at shutdown it gets [`DRAIN_GRACE`] to take its answers.
async fn write_batch(
    stream: &mut Stream,
    buf: &[u8],
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    tokio::select! {
        r = stream.write_all(buf) => r,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_GRACE).await;
        } => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "peer did not read its responses before shutdown",
        )),
    }
}

fn handle_frame(
    node: &Arc<Node>,
    frame: &[u8],
    greeted: &mut bool,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> (Flow, Option<Later>) {
    let req = match decode_request(frame) {
        Ok(req) => req,
        Err(e) => {
            let flow = protocol_error(
                node,
                WireError::Undecodable(e.to_string()),
                frame,
                out,
                tally,
            );
            return (flow, None);
        }
    };
    if *greeted {
        let later = execute(node, req.id, req.op, out, tally);
        return (Flow::Continue, later);
    }
    let err = match check_hello(&req.op) {
        Ok(_token) => {
            *greeted = true;
            hello_response(req.id, node.hello_name(), out);
            return (Flow::Continue, None);
        }
        Err(e) => e,
    };
    (protocol_error(node, err, frame, out, tally), None)
}

fn protocol_error(
    node: &Node,
    err: WireError,
    frame: &[u8],
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Flow {
    debug!(error = %err, "protocol error; closing connection");
    node.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    tally.errors += 1;
    err.respond(peek_id(frame).unwrap_or(0), out);
    Flow::Close
}
