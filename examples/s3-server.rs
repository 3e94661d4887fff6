//! A local S3-compatible server (`s3s-fs`: a bucket per directory under
//! `--root`), for benchmarks, the reliability suite and trying the S3
//! tier without AWS. Not for production.
//!
//! ```text
//! cargo run --release --example s3-server -- --root /tmp/s3 --port 9000 --bucket cache
//! S3_BUCKET=cache S3_ENDPOINT=http://127.0.0.1:9000 \
//!   AWS_ACCESS_KEY_ID=milena AWS_SECRET_ACCESS_KEY=milena-secret ./milena-cache
//! ```

use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

include!("support/s3_atomic.rs");

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(arg(&args, "--root").unwrap_or_else(|| "target/s3".into()));
    let port: u16 = arg(&args, "--port")
        .unwrap_or_else(|| "9000".into())
        .parse()?;
    let bucket = arg(&args, "--bucket").unwrap_or_else(|| "cache".into());
    let access = arg(&args, "--access-key").unwrap_or_else(|| "milena".into());
    let secret = arg(&args, "--secret-key").unwrap_or_else(|| "milena-secret".into());
    std::fs::create_dir_all(root.join(&bucket))?;
    // Conditional writes decided atomically, as S3 does (s3s-fs alone
    // checks and writes in two steps).
    let mut b = s3s::service::S3ServiceBuilder::new(Serialized::new(
        s3s_fs::FileSystem::new(&root)
            .map_err(|e| format!("cannot serve {}: {e:?}", root.display()))?,
    ));
    b.set_auth(s3s::auth::SimpleAuth::from_single(access, secret));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "s3 server at http://{} (bucket {bucket}, root {})",
        listener.local_addr()?,
        root.display()
    );
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
