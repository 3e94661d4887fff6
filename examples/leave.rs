//! The operations guide's "Removing Cache Nodes" snippet, as written.
//!
//! `cargo run --example leave -- [ROUTER_URL] [NODE_URL]` (defaults are the
//! guide's: http://localhost:50050 and http://localhost:50053).

use milena::grpc::{LeaveRequest, RouterClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let router = args
        .next()
        .unwrap_or_else(|| "http://localhost:50050".into());
    let node = args
        .next()
        .unwrap_or_else(|| "http://localhost:50053".into());

    // Example client code
    let mut client = RouterClient::connect(router).await?;
    client
        .leave(LeaveRequest {
            address: node.to_string(),
        })
        .await?;
    println!("left: {node}");
    Ok(())
}
