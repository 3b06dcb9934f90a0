//! A real ClickHouse server on loopback ports, for tests.
//!
//! # How it works
//!
//! [`ClickHouseServer::start`] creates a temp dir, takes three fresh ports from
//! [`free_port`] (HTTP, native TCP and interserver HTTP, which the server opens even
//! without replication) and writes its own `config.xml` and `users.xml` there, so nothing
//! of the system-wide `/etc/clickhouse-server` is used. Every path the server writes to
//! lives inside the temp dir:
//!
//! ```text
//! config.xml, users.xml     generated here
//! data/                     <path>: databases, tables, preprocessed configs, status file
//! tmp/                      <tmp_path>
//! user_files/               <user_files_path>
//! format_schemas/           <format_schema_path>
//! logs/clickhouse-server.log, logs/clickhouse-server.err.log    the server's own logger
//! stdout.log                stdout and stderr of the process (see ChildProcess)
//! ```
//!
//! The config is written for Debian's `clickhouse-server` 18.16 (root element `<yandex>`,
//! which current releases still accept) and stays within what later releases understand.
//! Choices that matter:
//!
//! * `listen_host` is `127.0.0.1` only, so tests never expose a server.
//! * `mark_cache_size` and `uncompressed_cache_size` are 64 MiB instead of the shipped
//!   5 GiB and 8 GiB, and `max_memory_usage` per query is 2 GB, so the server fits on
//!   small CI machines next to parallel compiles.
//! * `timezone` is UTC, so date functions agree with timestamps computed by tests.
//! * No `query_log`, `part_log` or `remote_servers`: fewer background writes and no
//!   attempts to reach other hosts.
//! * `shutdown_wait_unfinished` is 2 s instead of 5 s: a test that stops the server
//!   wants it gone, not its running queries finished.
//! * User `default` without a password, reachable from loopback only, and user
//!   [`PASSWORD_USER`] with a password, for tests of credentials.
//!
//! As for etcd, the temp dir is created in `$ETCDMON_TEST_TMPDIR` if set, else in
//! `/dev/shm` when it exists, else in the system temp dir: ClickHouse fsyncs parts and
//! writes many small files, which is slow on a disk shared with compiles.
//!
//! # Readiness
//!
//! `start` and [`ClickHouseServer::start_again`] return once `GET /ping` answers `Ok.`.
//! 18.16 is usually ready in a second or two; the timeout is 60 s because a busy 2-core
//! machine can stall the start much longer. If the server exits or does not answer in
//! time, the error carries the tail of its stdout and of its error log. A failed bind
//! ("Address already in use": another process took a port between [`free_port`] and the
//! server's bind) restarts the whole attempt on fresh ports, up to three times.
//!
//! # Stop, restart, cleanup
//!
//! [`ClickHouseServer::stop`] sends SIGTERM and waits up to 5 s for a clean shutdown
//! before SIGKILL, keeping the data dir. 18.16 closes its listeners at once but then
//! waits, up to 15 s, for idle keep-alive connections of client pools (such as the
//! `clickhouse` crate's) to go away; every acknowledged INSERT is already in the data dir
//! by then, so cutting that wait short loses nothing. [`ClickHouseServer::start_again`]
//! starts the server on the same ports and data. [`ClickHouseServer::freeze`] and
//! [`ClickHouseServer::thaw`] SIGSTOP and SIGCONT it, for tests of timeouts. Dropping the
//! server SIGKILLs it (through [`ChildProcess`]) and then removes the temp dir. As with
//! every harness service, do not keep a server in a `static`: statics are never dropped.
//!
//! ```no_run
//! use etcdmon_testkit::ClickHouseServer;
//!
//! let mut server = ClickHouseServer::start()?;
//! server.query("CREATE TABLE t (x UInt32) ENGINE = MergeTree() ORDER BY x")?;
//! server.query("INSERT INTO t VALUES (1), (2)")?;
//! assert_eq!(server.query("SELECT sum(x) FROM t")?, "3\n");
//! server.stop()?;
//! server.start_again()?;
//! # anyhow::Ok(())
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::http::{http_get, http_post};
use crate::ports::free_port;
use crate::process::{log_tail, require_binary, ChildProcess};
use crate::service::{retry_on_taken_port, service_temp_dir, wait_ready};

/// How long `start` and `start_again` wait for `/ping`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits after SIGTERM before it sends SIGKILL (see the module docs for
/// why a short wait loses nothing).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one `/ping` probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Deadline of one [`ClickHouseServer::query`]; generous because a 2-core machine running
/// compiles can make even small merges slow.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines shown in errors, per log file.
const LOG_TAIL_LINES: usize = 20;
/// Mark cache and uncompressed cache size, instead of the shipped 5 GiB and 8 GiB.
const CACHE_BYTES: u64 = 64 << 20;

/// A ClickHouse server in a temp dir that is killed and removed on drop.
#[derive(Debug)]
pub struct ClickHouseServer {
    // Field order matters: the process drops (and dies) before the temp dir is removed.
    /// `None` after [`stop`](Self::stop).
    process: Option<ChildProcess>,
    binary: PathBuf,
    http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
    /// HTTPS port and its certificate and key, when started with TLS.
    https: Option<(u16, crate::TlsFiles)>,
    dir: TempDir,
}

/// A user of every test server that needs a password: (name, password).
pub const PASSWORD_USER: (&str, &str) = ("etcdmon", "etcdmon-testkit-password");

impl ClickHouseServer {
    /// Starts Debian's `clickhouse-server` with a generated config on fresh loopback ports
    /// and waits (60 s at most) until `GET /ping` answers `Ok.`.
    pub fn start() -> Result<ClickHouseServer> {
        Self::start_with_ports(&mut free_port, None)
    }

    /// [`start`](Self::start), also serving HTTPS (see [`https_url`](Self::https_url))
    /// with the server certificate of `tls` (for 127.0.0.1 and localhost).
    pub fn start_with_tls(tls: &crate::TlsFiles) -> Result<ClickHouseServer> {
        Self::start_with_ports(&mut free_port, Some(tls))
    }

    /// [`start`](Self::start) with the port source injectable, so the retry on a taken
    /// port can be tested.
    fn start_with_ports(
        next_port: &mut dyn FnMut() -> u16,
        tls: Option<&crate::TlsFiles>,
    ) -> Result<ClickHouseServer> {
        let binary = require_binary("clickhouse-server")?;
        retry_on_taken_port("clickhouse-server", || {
            Self::try_start(&binary, next_port, tls)
        })
    }

    /// The HTTPS interface, `https://localhost:PORT`, when started with TLS.
    pub fn https_url(&self) -> Option<String> {
        self.https
            .as_ref()
            .map(|(port, _)| format!("https://localhost:{port}"))
    }

    /// The HTTP interface, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTP port (what the `clickhouse` crate and Grafana talk to).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native protocol port (what `clickhouse-client` talks to).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The temp dir holding config, data and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data dir (`<path>` in the config), kept across [`stop`](Self::stop).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The process id while the server runs; `None` after [`stop`](Self::stop) or if it
    /// exited.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Runs one SQL statement through the HTTP interface (the SQL is the POST body) and
    /// returns the response body, e.g. `"18.16.1\n"` for `SELECT version()` (results come
    /// in the default `TabSeparated` format unless the SQL says `FORMAT ...`).
    ///
    /// A non-200 answer is an error carrying the server's message, such as
    /// `Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist`.
    pub fn query(&self, sql: &str) -> Result<String> {
        self.query_at(&format!("{}/", self.http_url()), sql)
    }

    /// [`query`](Self::query) with `database` as the default database, as a
    /// client (Grafana's datasource) that names one runs unqualified SQL.
    pub fn query_in(&self, database: &str, sql: &str) -> Result<String> {
        self.query_at(&format!("{}/?database={database}", self.http_url()), sql)
    }

    fn query_at(&self, url: &str, sql: &str) -> Result<String> {
        let response = http_post(url, sql.as_bytes(), QUERY_TIMEOUT)
            .with_context(|| format!("ClickHouse query {:?}", abbreviate(sql)))?;
        if response.status != 200 {
            bail!(
                "ClickHouse query {:?} failed with HTTP {}: {}",
                abbreviate(sql),
                response.status,
                response.body.trim()
            );
        }
        Ok(response.body)
    }

    /// Stops the server gracefully: SIGTERM, then SIGKILL if it has not exited within
    /// 5 s. The data dir is kept for [`start_again`](Self::start_again). Stopping a
    /// stopped server does nothing.
    pub fn stop(&mut self) -> Result<()> {
        let Some(process) = self.process.take() else {
            return Ok(());
        };
        if process.is_stopped() {
            // A frozen process would not act on SIGTERM until continued.
            process.resume()?;
        }
        if let Some(pid) = process.pid() {
            let pid = i32::try_from(pid).context("pid does not fit in pid_t")?;
            // Safe against pid reuse: only this guard reaps the child and it has not done
            // so (pid() just checked), so the pid is still ours, at worst a zombie.
            match kill(Pid::from_raw(pid), Signal::SIGTERM) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(e).context("send SIGTERM to clickhouse-server"),
            }
        }
        if process.wait_timeout(STOP_TIMEOUT)?.is_none() {
            process
                .kill()
                .context("SIGKILL clickhouse-server after SIGTERM timed out")?;
        }
        Ok(())
    }

    /// Freezes the server with SIGSTOP: its ports stay open and connects still succeed,
    /// but nothing is answered, like a server stuck on a dead disk. Undo with
    /// [`thaw`](Self::thaw).
    pub fn freeze(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("freeze clickhouse-server: it is stopped")?
            .stop()
    }

    /// Continues a server frozen by [`freeze`](Self::freeze) (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("thaw clickhouse-server: it is stopped")?
            .resume()
    }

    /// Starts the server again on the same ports and data dir (stopping it first if it
    /// still runs) and waits until `/ping` answers.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()?;
        self.wait_ready()
            .context("start clickhouse-server again on its old ports and data")
    }

    /// A `clickhouse-client` command preset with `--host 127.0.0.1 --port <tcp_port>`;
    /// add e.g. `--query "SELECT 1"`.
    pub fn client_command(&self) -> Command {
        // A missing client should fail when the command is run, with the usual spawn
        // error, not when the server starts: most tests never need it.
        let client = require_binary("clickhouse-client")
            .unwrap_or_else(|_| PathBuf::from("clickhouse-client"));
        let mut command = Command::new(client);
        command
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.tcp_port.to_string());
        command
    }

    /// The tail of the process's stdout/stderr and of the server's error log.
    pub fn log_tail(&self, lines: usize) -> String {
        let stdout = self.stdout_log();
        let errlog = self.dir.path().join("logs/clickhouse-server.err.log");
        format!(
            "--- {} ---\n{}--- {} ---\n{}",
            stdout.display(),
            log_tail(&stdout, lines),
            errlog.display(),
            log_tail(&errlog, lines)
        )
    }

    fn try_start(
        binary: &Path,
        next_port: &mut dyn FnMut() -> u16,
        tls: Option<&crate::TlsFiles>,
    ) -> Result<ClickHouseServer> {
        let dir = service_temp_dir("clickhouse")?;
        for sub in ["data", "tmp", "user_files", "format_schemas", "logs"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        }
        let mut server = ClickHouseServer {
            process: None,
            binary: binary.to_owned(),
            http_port: next_port(),
            tcp_port: next_port(),
            interserver_port: next_port(),
            https: tls.map(|t| (next_port(), t.clone())),
            dir,
        };
        server.write_config()?;
        server.spawn()?;
        server.wait_ready()?;
        Ok(server)
    }

    fn stdout_log(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            // The server resolves a few relative paths against its working directory;
            // keep those inside the temp dir too.
            .current_dir(self.dir.path());
        let process = ChildProcess::spawn("clickhouse-server", command, &self.stdout_log())?;
        self.process = Some(process);
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let url = format!("{}/ping", self.http_url());
        let process = self
            .process
            .as_ref()
            .context("clickhouse-server is not running")?;
        wait_ready(
            &format!(
                "clickhouse-server in {} to answer GET /ping",
                self.dir.path().display()
            ),
            process,
            READY_TIMEOUT,
            &|| self.log_tail(LOG_TAIL_LINES),
            || match http_get(&url, PROBE_TIMEOUT) {
                Ok(r) if r.status == 200 && r.body.trim() == "Ok." => Ok(()),
                Ok(r) => Err(format!("answered {} {:?}", r.status, r.body)),
                Err(e) => Err(format!("{e:#}")),
            },
        )
    }

    fn write_config(&self) -> Result<()> {
        let root = self.dir.path();
        let path = |sub: &str| xml_escape(&format!("{}/", root.join(sub).display()));
        let file = |name: &str| xml_escape(&root.join(name).display().to_string());
        let config = format!(
            r#"<?xml version="1.0"?>
<!-- Generated by etcdmon-testkit for one test server; see tests/src/clickhouse.rs. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{log}</log>
        <errorlog>{errorlog}</errorlog>
        <size>50M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>{https}
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>{cache}</uncompressed_cache_size>
    <mark_cache_size>{cache}</mark_cache_size>
    <path>{data}</path>
    <tmp_path>{tmp}</tmp_path>
    <user_files_path>{user_files}</user_files_path>
    <format_schema_path>{format_schemas}</format_schema_path>
    <users_config>{users}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <shutdown_wait_unfinished>2</shutdown_wait_unfinished>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"#,
            log = file("logs/clickhouse-server.log"),
            errorlog = file("logs/clickhouse-server.err.log"),
            http = self.http_port,
            tcp = self.tcp_port,
            interserver = self.interserver_port,
            https = self
                .https
                .as_ref()
                .map_or(String::new(), |(port, tls)| format!(
                    "
    <https_port>{port}</https_port>
    <openSSL>
        <server>
            <certificateFile>{}</certificateFile>
            <privateKeyFile>{}</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>",
                    xml_escape(&tls.server_cert.display().to_string()),
                    xml_escape(&tls.server_key.display().to_string()),
                )),
            cache = CACHE_BYTES,
            data = path("data"),
            tmp = path("tmp"),
            user_files = path("user_files"),
            format_schemas = path("format_schemas"),
            users = file("users.xml"),
        );
        let users = r#"<?xml version="1.0"?>
<!-- Generated by etcdmon-testkit for one test server; see tests/src/clickhouse.rs. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <etcdmon>
            <password>etcdmon-testkit-password</password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </etcdmon>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#;
        for (name, text) in [("config.xml", config.as_str()), ("users.xml", users)] {
            let path = root.join(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        // `process` drops first (ChildProcess SIGKILLs and reaps it), then `dir` is
        // removed. SIGKILL rather than a graceful stop: the data is thrown away anyway,
        // and a test that panics should not wait for a shutdown.
        if let Some(process) = self.process.take() {
            let _ = process.kill();
        }
    }
}

/// Escapes text for an XML element body.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The first line of `sql`, cut at 200 characters, for error messages.
fn abbreviate(sql: &str) -> String {
    let line = sql.trim().lines().next().unwrap_or_default();
    let mut out = String::new();
    for (i, c) in line.chars().enumerate() {
        if i == 200 {
            let _ = write!(out, "...");
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_retries_on_fresh_ports_when_a_port_is_taken() {
        // A held port comes first, so the first bind fails.
        let (_squatter, taken, mut ports) = crate::service::taken_port_first();
        let server = ClickHouseServer::start_with_ports(&mut ports, None).unwrap();
        assert_ne!(server.http_port(), taken);
        assert_eq!(server.query("SELECT 1").unwrap(), "1\n");
    }

    #[test]
    fn xml_escape_and_abbreviate() {
        assert_eq!(xml_escape("/tmp/a&b<c>"), "/tmp/a&amp;b&lt;c&gt;");
        assert_eq!(abbreviate("  SELECT 1\nFROM x"), "SELECT 1");
        assert_eq!(abbreviate(&"x".repeat(300)).len(), 203);
    }
}
