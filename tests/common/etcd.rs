//! A real etcd (Debian's `etcd-server`, installed by scripts/test.sh) on
//! loopback ports, in a temporary data directory; never a mock.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use milena::config::EtcdArgs;

/// A running single-member etcd.
pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Client port.
    pub port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl EtcdServer {
    /// Starts etcd and returns once it serves clients.
    pub fn start() -> EtcdServer {
        // etcd binds ports it is given, picked free a moment before; another
        // test may take one meanwhile, so a failed start tries new ports.
        for _ in 0..5 {
            let mut s = EtcdServer {
                child: None,
                dir: tempfile::tempdir().expect("etcd data dir"),
                port: free_port(),
                peer_port: free_port(),
            };
            if s.try_spawn() {
                return s;
            }
        }
        panic!("etcd exited before serving, five times");
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "etcd exited before serving");
    }

    /// Starts etcd on this server's ports; false if it exits first.
    fn try_spawn(&mut self) -> bool {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect(
                "the tests need etcd (Debian package etcd-server; scripts/test.sh installs it)",
            );
        // Ready when it says so: no sleeps.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("ready to serve client requests") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        true
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings naming this etcd and `prefix`, with a lease of `lease` s.
    pub fn args(&self, prefix: &str, lease: u64) -> EtcdArgs {
        self.args_via(&self.endpoint(), prefix, lease)
    }

    /// As [`EtcdServer::args`], reaching etcd through `endpoint` (a proxy).
    pub fn args_via(&self, endpoint: &str, prefix: &str, lease: u64) -> EtcdArgs {
        EtcdArgs {
            etcd_endpoints: vec![endpoint.to_string()],
            etcd_prefix: prefix.to_string(),
            etcd_lease_seconds: lease,
            ..EtcdArgs::default()
        }
    }

    /// Kills etcd (SIGKILL) and starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills etcd.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
