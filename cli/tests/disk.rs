//! `etcdmon disk` on a real disk: every step reports, nothing is left behind,
//! the verdict and the exit status agree, and a disk whose fdatasync is slow
//! (strace delays every fdatasync of the process by 20 ms) fails.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn disk(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_etcdmon"))
        .arg("disk")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run etcdmon disk")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// On the disk the build uses (the harness's temp dir may be a tmpfs).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")
}

#[test]
fn a_run_reports_every_step_and_leaves_nothing_behind() {
    let dir = scratch();
    let out = disk(
        dir.path(),
        &[
            "--size",
            "64KiB",
            "--seq-size",
            "8MiB",
            "--reads",
            "200",
            "--output",
            "json",
        ],
    );
    let r = report(&out);
    // 65536 / 2300, rounded up.
    assert_eq!(r["fdatasync"]["writes"], 29, "{r}");
    let l = &r["fdatasync"]["latency"];
    let p = |k: &str| l[k].as_f64().expect(k);
    assert!(p("min") > 0.0 && p("min") <= p("p50") && p("p50") <= p("p99") && p("p99") <= p("max"));
    assert!(r["fdatasync"]["iops"].as_f64().expect("iops") > 0.0);
    assert_eq!(r["sequential_write"]["bytes"], 8 << 20);
    // Measured with O_DIRECT, or a reason why not (tmpfs has no O_DIRECT).
    assert!(
        r["random_read"]["reads"] == 200 || r["random_read_skipped"].is_string(),
        "{r}"
    );
    assert_eq!(
        out.status.success(),
        r["verdict"]["pass"] == true,
        "the exit status follows the verdict: {r}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1/3 fdatasync") && stderr.contains("100%"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn a_slow_fdatasync_fails_the_verdict() {
    let dir = scratch();
    let strace = etcdmon_testkit::require_binary("strace").expect("strace (scripts/setup)");
    let out = Command::new(strace)
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync"])
        .args(["-e", "inject=fdatasync:delay_exit=20000"])
        .arg(env!("CARGO_BIN_EXE_etcdmon"))
        .arg("disk")
        .arg("--dir")
        .arg(dir.path())
        .args(["--size", "32KiB", "--seq-size", "0", "--output", "json"])
        .output()
        .expect("run etcdmon disk under strace");
    let r = report(&out);
    assert!(!out.status.success(), "a FAIL verdict exits non-zero: {r}");
    assert_eq!(r["verdict"]["pass"], false, "{r}");
    let p99 = r["fdatasync"]["latency"]["p99"].as_f64().expect("p99");
    assert!(p99 >= 0.020, "every fdatasync took 20 ms more: {r}");
    assert!(
        r["verdict"]["reasons"][0]
            .as_str()
            .is_some_and(|s| s.contains(">= 10 ms")),
        "{r}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not meet etcd's guidance"));
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
}

#[test]
fn a_missing_directory_or_a_file_is_refused_with_the_reason() {
    let dir = scratch();
    let missing = disk(&dir.path().join("nope"), &[]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("--dir") && err.contains("nope"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let out = disk(&file, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
    assert_eq!(std::fs::read(&file).expect("read"), b"x", "untouched");
}
