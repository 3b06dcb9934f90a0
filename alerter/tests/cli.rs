//! The `etcdmon-alerter` command line: `--check-config` summarises a valid config
//! without printing secrets, and an invalid one exits 2 naming the field.

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("alerter.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_etcdmon-alerter"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .expect("run etcdmon-alerter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_summarises_without_secrets() {
    let (code, out, err) = check(
        r#"
        [storage]
        url = "clickhouse://127.0.0.1:8123/etcdmon"
        [storage.clickhouse]
        password = "s3cr3t-ch"
        [[receivers]]
        name = "hook"
        webhook = { url = "http://127.0.0.1:9/hook", hmac_secret = "s3cr3t-hmac" }
        [[receivers]]
        name = "log"
        log = {}
        [route]
        receiver = "hook"
        [[route.routes]]
        matchers = ['severity="info"']
        receiver = "log"
        "#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 receiver(s) (hook, log), 1 route(s)"),
        "{out}"
    );
    assert!(
        !out.contains("s3cr3t") && !err.contains("s3cr3t"),
        "{out}{err}"
    );
}

#[test]
fn an_invalid_config_exits_2_naming_the_field() {
    for (config, field) in [
        ("[route]\nreceiver = \"nobody\"\n[[receivers]]\nname = \"log\"\nlog = {}\n", "unknown receiver \"nobody\""),
        ("", "receivers"),
        ("[[receivers]]\nname = \"x\"\n", "exactly one of"),
        ("[[receivers]]\nname = \"x\"\nlog = {}\n[route]\nreceiver = \"x\"\nrepeat_interval = \"0s\"\n", "repeat_interval"),
        ("[flapping]\nwindow = \"soon\"\n", "flapping.window"),
    ] {
        let (code, _, err) = check(config);
        assert_eq!(code, 2, "{config}: {err}");
        assert!(err.contains(field), "{config}: {err}");
    }
}
