//! Every shell block marked `<!-- run -->` in `docs/operations.md` runs, in
//! order, in one bash shell, with this build's binaries in place of
//! `./target/release` and free ports in place of the guide's: the operations guide's commands (start a router and
//! nodes, curl, milena-cli, grep the logs, add and remove a node, recover
//! from a killed node) work as written.

use tokio::process::Command;

const CACHE: &str = env!("CARGO_BIN_EXE_milena-cache");

/// The runnable blocks of a Markdown file, in order.
fn runnable_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- run -->" {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```bash",
            "a run marker must precede a bash block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[tokio::test]
async fn the_operations_guide_commands_work_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/operations.md")).expect("read doc");
    let blocks = runnable_blocks(&doc);
    assert!(
        blocks.len() >= 8,
        "found only {} runnable blocks",
        blocks.len()
    );
    let bin_dir = std::path::Path::new(CACHE)
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let work = std::env::temp_dir().join(format!("milena-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let mut script = String::from(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; rm -rf /tmp/milena-data' EXIT\nrm -rf /tmp/milena-data\n",
    );
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '--- block {}'\n", i + 1));
        script.push_str(&b.replace("./target/release/", &format!("{bin_dir}/")));
        script.push('\n');
    }
    // The documented ports (the guide's) may be taken on a test machine
    // (other tests bind port 0, and 50050 is in the ephemeral range):
    // run the same commands on free ports.
    let mut router_port = 0;
    for documented in ["50050", "50051", "50052", "50053", "9091", "9092", "9093"] {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if documented == "50050" {
            router_port = free;
        }
        script = script.replace(documented, &free.to_string());
    }
    // A hang guard, not a speed limit: a server that cannot start would
    // leave a documented `until` loop waiting for ever.
    let out = Command::new("timeout")
        .arg("600")
        .arg("bash")
        .arg("-c")
        .arg(&script)
        // milena-cli's default address is the guide's router port.
        .env("MILENA_ADDR", format!("http://localhost:{router_port}"))
        .current_dir(&work)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "a documented command failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // The blocks' own checks passed; a few answers the guide promises:
    assert!(stdout.contains("milena-router 0.1.0: ok"), "{stdout}");
    assert!(stdout.contains("world"), "{stdout}");
    assert!(stdout.contains("milena_cache_hits_total "), "{stdout}");
    assert!(stdout.contains("Join"), "{stdout}");
    assert!(stdout.contains("yes"), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}
