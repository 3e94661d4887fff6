//! `milena-cli`: Milena's redis-cli. Talks to a router or a node.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use milena::client::{Client, ClientError};

#[derive(Parser, Debug)]
#[command(
    name = "milena-cli",
    version,
    about = "Command-line client for Milena routers and nodes"
)]
struct Cli {
    /// Router or node URL (http://host:port; https:// for TLS).
    #[arg(
        long,
        env = "MILENA_ADDR",
        default_value = "http://localhost:50050",
        global = true
    )]
    addr: String,

    /// CA certificate (PEM) to trust for https:// addresses.
    #[arg(long, env = "TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for servers that require mutual TLS.
    #[arg(long, env = "TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// Key (PEM) of --tls-cert.
    #[arg(long, env = "TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Token for cluster operations (join/leave).
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// Token for data operations, when the router has CLIENT_TOKEN (the cluster token also serves).
    #[arg(long, env = "CLIENT_TOKEN", hide_env_values = true, global = true)]
    client_token: Option<String>,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the value of KEY (exit 1 with "not found" on stderr if missing).
    Get {
        /// The key.
        key: String,
    },
    /// Store VALUE under KEY ('-' reads the value from stdin).
    Put {
        /// The key.
        key: String,
        /// The value, or '-' for stdin.
        value: String,
        /// Seconds to live (0 = never expire; default: the node's TTL_SECONDS).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Delete KEY.
    Del {
        /// The key.
        key: String,
    },
    /// List a router's ring members.
    Members,
    /// Ask a router to remove the node at ADDRESS from its ring.
    Leave {
        /// The node's address as it joined, e.g. http://10.0.0.5:50051.
        address: String,
    },
    /// Check the server answers.
    Ping,
    /// Print the server's counters.
    Stats,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let tls = if cli.addr.starts_with("https://") {
        let config = milena::tls::client_config_from_files(
            cli.tls_ca.as_deref(),
            cli.tls_cert.as_deref(),
            cli.tls_key.as_deref(),
        )
        .map_err(|e| ClientError::Address(e.to_string()))?;
        Some(config)
    } else {
        None
    };
    let opts = milena::client::ClientOptions {
        // One token per connection: the cluster token grants data too.
        token: cli.token.clone().or_else(|| cli.client_token.clone()),
        tls,
        ..Default::default()
    };
    let client = match Client::connect_with(&cli.addr, opts).await {
        Ok(c) => c,
        Err(e) => {
            // Say where: a wrong port or a forgotten MILENA_ADDR is the usual cause.
            eprintln!(
                "error: cannot reach {} ({e}); set --addr or MILENA_ADDR",
                cli.addr
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Get { key } => match client.get(key.as_bytes()).await? {
            Some(v) => {
                stdout.write_all(&v)?;
                // Scripts get the value byte for byte; people get a newline.
                if std::io::stdout().is_terminal() {
                    stdout.write_all(b"\n")?;
                }
            }
            None => {
                eprintln!("not found");
                return Ok(ExitCode::from(1));
            }
        },
        Cmd::Put { key, value, ttl } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                buf
            } else {
                value.into_bytes()
            };
            client.put(key.as_bytes(), &value, ttl).await?;
            writeln!(stdout, "OK")?;
        }
        Cmd::Del { key } => {
            if client.delete(key.as_bytes()).await? {
                writeln!(stdout, "deleted")?;
            } else {
                writeln!(stdout, "not found")?;
            }
        }
        Cmd::Members => {
            let (_epoch, members) = client.members().await?;
            for m in members {
                writeln!(stdout, "{m}")?;
            }
        }
        Cmd::Leave { address } => {
            client.leave(&address).await?;
            writeln!(stdout, "OK")?;
        }
        Cmd::Ping => writeln!(stdout, "PONG ({})", client.server())?,
        Cmd::Stats => {
            for (name, value) in client.stats().await? {
                writeln!(stdout, "{name} {value}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
