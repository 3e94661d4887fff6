//! The deployment files, checked statically (no Docker engine or cluster
//! here): `scripts/check-deploy.py` parses every YAML file, compares the
//! variables and ports of the compose file and the Kubernetes manifests
//! with what the binaries accept (their `--help`), and validates the
//! manifests against the Kubernetes schemas. `scripts/test.sh` installs
//! its Python packages (PyYAML, kubernetes-validate).

const CACHE: &str = env!("CARGO_BIN_EXE_milena-cache");

#[test]
fn deployment_files_agree_with_the_binaries() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = std::path::Path::new(CACHE).parent().expect("bin dir");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/scripts/check-deploy.py"))
        .arg(bin_dir)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "scripts/check-deploy.py failed (run scripts/test.sh to install PyYAML and kubernetes-validate):\n{stderr}"
    );
    assert!(stdout.contains("deployment files: ok"), "{stdout}");
}
