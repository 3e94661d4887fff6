//! A client connection's writer: answers as they come, in whatever order
//! nodes give them, gathered into as few writes as possible.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::request::{Answer, ReplyRx};
use crate::tls::Stream;

/// How long a connection may take to receive its last answers once
/// shutdown has begun.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Answers gathered into one write at most.
const BATCH_BYTES: usize = 256 * 1024;
/// A buffer that grew past this for a large answer is given back, so an
/// idle connection does not pin it.
const BUF_KEEP: usize = 1024 * 1024;

/// Writes answers as they come, gathering whatever is queued into one write.
pub async fn write_loop(
    mut wr: WriteHalf<Stream>,
    mut rx: ReplyRx,
    shutdown: CancellationToken,
    stall: Duration,
) {
    // Grows with the first answers; an idle connection holds almost nothing.
    let mut buf: Vec<u8> = Vec::new();
    // Slots of the answers in `buf`, freed once they are written.
    let mut slots: Vec<OwnedSemaphorePermit> = Vec::new();
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = &mut grace => break,
        };
        let mut bodies = take(&mut buf, &mut slots, first);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Some(m) => bodies += take(&mut buf, &mut slots, m),
                None => break,
            }
        }
        // A client that reads nothing for `stall` (FRAME_TIMEOUT_SECONDS)
        // is gone for our purposes: its unread answers are not held for ever.
        let write = tokio::select! {
            r = tokio::time::timeout(stall, wr.write_all(&buf)) => r,
            _ = &mut grace => break,
        };
        if !matches!(write, Ok(Ok(()))) {
            break;
        }
        rx.written(bodies);
        slots.clear();
        buf.clear();
        if buf.capacity() > BUF_KEEP {
            buf = Vec::new();
        }
    }
    rx.close();
    // Bounded: sending a TLS close_notify to a peer that reads nothing
    // would otherwise wait for ever.
    let _ = tokio::time::timeout(DRAIN_GRACE, wr.shutdown()).await;
}

/// Appends an answer to the batch; returns its body's length.
fn take(buf: &mut Vec<u8>, slots: &mut Vec<OwnedSemaphorePermit>, (body, slot): Answer) -> usize {
    push_framed(buf, &body);
    slots.extend(slot);
    body.len()
}

fn push_framed(buf: &mut Vec<u8>, body: &[u8]) {
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
}
