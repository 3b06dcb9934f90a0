//! The workspace's own binaries for system tests that need more than their crate's.
//!
//! Cargo hands a test only its own package's binaries (`CARGO_BIN_EXE_*`). A test that
//! runs the collector, the agent and the alerter together asks for the others here:
//! [`workspace_bin`] runs `cargo build` for the binary (a no-op when it is fresh) and
//! returns its path.
//!
//! `cargo test --workspace` builds every package's binaries before any test starts, but
//! with the features its whole unit graph (dev-dependencies included) turns on, so a
//! `cargo build -p` of one package can find them stale and build dependencies again:
//! in a clean clone that cost the first such test a minute or two. `scripts/test` sets
//! `ETCDMON_TEST_BINS_BUILT=1`, and then an existing binary is taken as it is.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Serialises the builds of one test binary's threads (cargo would block on its lock
/// anyway; this keeps the error messages apart).
static BUILD: Mutex<()> = Mutex::new(());

/// Builds (if needed) binary `bin` of workspace package `package` with the profile the
/// tests were built with, and returns its path.
pub fn workspace_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    // target/<profile>/deps/<test-binary>: the binaries live in target/<profile>.
    let exe = std::env::current_exe().context("locate the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary is not in target/<profile>/deps")?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .context("no target dir above the profile dir")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile dir name")?;
    let built = profile_dir.join(bin);
    if std::env::var_os("ETCDMON_TEST_BINS_BUILT").is_some_and(|v| v == "1") && built.exists() {
        return Ok(built);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .with_context(|| format!("run cargo build for {bin}"))?;
    if !status.success() {
        bail!("cargo build -p {package} --bin {bin} failed with {status}");
    }
    let path = profile_dir.join(bin);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}
