//! A real NATS server with JetStream on loopback ports, for tests.
//!
//! # How it works
//!
//! [`NatsServer::start`] creates a temp dir, takes two fresh ports from [`free_port`] (the
//! client port and the HTTP monitoring port) and writes a `nats.conf` there, so no
//! system-wide configuration is read. Everything the server writes lives in the temp dir:
//!
//! ```text
//! nats.conf        generated here
//! jetstream/       JetStream store_dir: streams, consumers and their state
//! stdout.log       the server's log (it logs to stderr; see ChildProcess)
//! ```
//!
//! The config is written for Debian's `nats-server` 2.9 and stays within what later
//! releases understand. Choices that matter:
//!
//! * Both listeners bind `127.0.0.1` only, so tests never expose a server.
//! * JetStream is on, with `max_memory_store` 64 MiB and `max_file_store` 1 GiB instead of
//!   the defaults (75 % of RAM and most of the disk): the server reserves a stream's
//!   `max_bytes` against these limits, so they are big enough for a few streams with
//!   production-sized limits, and small enough to fit on a CI machine.
//! * A fixed `server_name`, because JetStream keys its store layout on it: a server
//!   started again with a different (random) name would not find its streams.
//!
//! As for etcd and ClickHouse, the temp dir is created in `$ETCDMON_TEST_TMPDIR` if set,
//! else in `/dev/shm` when it exists, else in the system temp dir, so JetStream's writes
//! do not wait for a disk shared with compiles.
//!
//! # Readiness
//!
//! `start` and [`NatsServer::start_again`] return once `GET /healthz` on the monitoring
//! port answers 200; on 2.9 that includes JetStream having loaded its store, so a stream
//! created before a restart is usable as soon as they return. If the server exits or
//! does not answer within 30 s, the error carries the tail of its log. A failed bind
//! ("address already in use": another process took a port between [`free_port`] and the
//! server's bind) restarts the attempt on fresh ports, up to three times.
//!
//! # Stop, restart, cleanup
//!
//! [`NatsServer::stop`] sends SIGTERM (nats-server shuts down cleanly, flushing
//! JetStream's files) and SIGKILLs after 5 s; the store dir is kept.
//! [`NatsServer::start_again`] starts it on the same ports and store, so clients that
//! reconnect find their streams and durable consumers again. [`NatsServer::freeze`] and
//! [`NatsServer::thaw`] SIGSTOP and SIGCONT it, for tests of timeouts. Dropping the server
//! SIGKILLs it (through [`ChildProcess`]) and removes the temp dir.
//!
//! # Talking to it without a client library
//!
//! [`NatsServer::request`] sends one request over a fresh connection with a minimal,
//! blocking implementation of the NATS text protocol, which is enough for JetStream's JSON
//! API (`$JS.API.STREAM.INFO.<name>`, ...). Tests of the harness use it instead of a
//! client crate, so the harness does not depend on the code under test.
//!
//! ```no_run
//! use etcdmon_testkit::NatsServer;
//! use std::time::Duration;
//!
//! let mut server = NatsServer::start()?;
//! let config = r#"{"name":"S","subjects":["s.>"],"storage":"file"}"#;
//! server.request("$JS.API.STREAM.CREATE.S", config.as_bytes(), Duration::from_secs(5))?;
//! server.stop()?;
//! server.start_again()?; // the stream is still there
//! # anyhow::Ok(())
//! ```

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::http::http_get;
use crate::ports::free_port;
use crate::process::{log_tail, require_binary, ChildProcess};
use crate::service::{retry_on_taken_port, service_temp_dir, wait_ready};
use crate::tls::TlsFiles;

/// How long `start` and `start_again` wait for `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one `/healthz` probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Log lines shown in errors.
const LOG_TAIL_LINES: usize = 30;
/// Largest reply [`NatsServer::request`] accepts; JetStream API answers are a few KiB.
const MAX_REPLY_BYTES: usize = 8 << 20;

/// A `nats-server -js` in a temp dir that is killed and removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    // Field order matters: the process drops (and dies) before the temp dir is removed.
    /// `None` after [`stop`](Self::stop).
    process: Option<ChildProcess>,
    binary: PathBuf,
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    security: NatsSecurity,
    /// Its place in a [`NatsCluster`]; `None` for a single server.
    route: Option<Route>,
}

/// A server's part of a cluster's config: its name and route port, and its peers'.
#[derive(Debug, Clone)]
struct Route {
    index: usize,
    port: u16,
    peers: Vec<u16>,
}

/// TLS and login a [`NatsServer`] demands of its clients (none by default).
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// Serve TLS with the server certificate of these files (CA, server cert and key).
    pub tls: Option<TlsFiles>,
    /// Also demand a client certificate signed by the same CA (`verify: true`).
    pub verify_clients: bool,
    /// Demand this token (`authorization { token }`).
    pub token: Option<String>,
    /// Demand this user and password (`authorization { user, password }`).
    pub user: Option<(String, String)>,
    /// Demand the NKey user with this public key (`U...`).
    pub nkey: Option<String>,
}

impl NatsServer {
    /// Starts Debian's `nats-server` with JetStream on fresh loopback ports and waits
    /// (30 s at most) until `GET /healthz` on the monitoring port answers 200.
    pub fn start() -> Result<NatsServer> {
        Self::start_with_ports(&mut free_port, &NatsSecurity::default())
    }

    /// [`start`](Self::start) with TLS and/or a login demanded of clients. The
    /// monitoring port stays plain HTTP; [`request`](Self::request) (no TLS, no auth)
    /// does not work against such a server.
    pub fn start_secured(security: NatsSecurity) -> Result<NatsServer> {
        Self::start_with_ports(&mut free_port, &security)
    }

    /// [`start`](Self::start) with the port source injectable, so the retry on a taken
    /// port can be tested.
    fn start_with_ports(
        next_port: &mut dyn FnMut() -> u16,
        security: &NatsSecurity,
    ) -> Result<NatsServer> {
        let binary = require_binary("nats-server")?;
        retry_on_taken_port("nats-server", || {
            Self::try_start(&binary, next_port, security)
        })
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The monitoring base URL, `http://127.0.0.1:PORT`, without a trailing slash; e.g.
    /// `GET {monitor_url}/jsz?streams=true&consumers=true` shows JetStream's state.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The temp dir holding config, store and log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store dir, kept across [`stop`](Self::stop).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
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

    /// Stops the server gracefully: SIGTERM, then SIGKILL if it has not exited within
    /// 5 s. The store dir is kept for [`start_again`](Self::start_again). Stopping a
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
                Err(e) => return Err(e).context("send SIGTERM to nats-server"),
            }
        }
        if process.wait_timeout(STOP_TIMEOUT)?.is_none() {
            process
                .kill()
                .context("SIGKILL nats-server after SIGTERM timed out")?;
        }
        Ok(())
    }

    /// Kills the server with SIGKILL, as a crashed machine would stop; the store dir
    /// is kept for [`start_again`](Self::start_again). Killing a stopped server does
    /// nothing.
    pub fn kill(&mut self) -> Result<()> {
        match self.process.take() {
            Some(process) => process.kill().context("SIGKILL nats-server"),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same ports and store dir (stopping it first if it
    /// still runs) and waits until `/healthz` answers.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()?;
        self.wait_ready()
            .context("start nats-server again on its old ports and store")
    }

    /// Freezes the server with SIGSTOP: its ports stay open and connects still succeed,
    /// but nothing is answered. Undo with [`thaw`](Self::thaw).
    pub fn freeze(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("freeze nats-server: it is stopped")?
            .stop()
    }

    /// Continues a server frozen by [`freeze`](Self::freeze) (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("thaw nats-server: it is stopped")?
            .resume()
    }

    /// The tail of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_path();
        format!("--- {} ---\n{}", log.display(), log_tail(&log, lines))
    }

    /// Publishes `payload` to `subject` with a reply inbox over a fresh connection and
    /// returns the first reply's payload, e.g. the JSON answer of a JetStream API request
    /// such as `$JS.API.STREAM.INFO.<name>`. `timeout` bounds the whole exchange; a
    /// subject nobody answers is an error after it.
    ///
    /// This is a deliberately minimal NATS client (no headers, no TLS, no auth): enough
    /// for tests to create or inspect JetStream state independently of the client library
    /// under test.
    pub fn request(&self, subject: &str, payload: &[u8], timeout: Duration) -> Result<String> {
        nats_request(self.port, subject, payload, timeout)
            .with_context(|| format!("NATS request to {subject} on {}", self.url()))
    }

    fn try_start(
        binary: &Path,
        next_port: &mut dyn FnMut() -> u16,
        security: &NatsSecurity,
    ) -> Result<NatsServer> {
        let server = Self::spawn_with(binary, next_port, security, None)?;
        server.wait_ready()?;
        Ok(server)
    }

    /// Writes the config of member `index` of a cluster whose members' route ports
    /// are `routes`, and spawns it without waiting (a clustered server is healthy
    /// only once it has met the others). See [`NatsCluster`](crate::NatsCluster).
    pub(crate) fn spawn_cluster_member(
        index: usize,
        routes: &[u16],
        next_port: &mut dyn FnMut() -> u16,
    ) -> Result<NatsServer> {
        let route = Route {
            index,
            port: routes[index],
            peers: routes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, p)| *p)
                .collect(),
        };
        let binary = require_binary("nats-server")?;
        Self::spawn_with(&binary, next_port, &NatsSecurity::default(), Some(route))
    }

    /// A server on fresh ports in a fresh temp dir, its config written and its
    /// process spawned (not yet waited for).
    fn spawn_with(
        binary: &Path,
        next_port: &mut dyn FnMut() -> u16,
        security: &NatsSecurity,
        route: Option<Route>,
    ) -> Result<NatsServer> {
        let mut server = NatsServer {
            process: None,
            binary: binary.to_owned(),
            port: next_port(),
            monitor_port: next_port(),
            dir: service_temp_dir("nats")?,
            security: security.clone(),
            route,
        };
        server.write_config()?;
        server.spawn()?;
        Ok(server)
    }

    /// `server_name` in the config: fixed (JetStream keys its store on it), and
    /// distinct per cluster member (JetStream requires that).
    fn server_name(&self) -> String {
        match &self.route {
            Some(route) => format!("etcdmon-test-{}", route.index),
            None => "etcdmon-test".to_owned(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path());
        let process = ChildProcess::spawn("nats-server", command, &self.log_path())?;
        self.process = Some(process);
        Ok(())
    }

    /// Waits (30 s at most) until `GET /healthz` answers 200.
    pub(crate) fn wait_ready(&self) -> Result<()> {
        let url = format!("{}/healthz", self.monitor_url());
        let process = self
            .process
            .as_ref()
            .context("nats-server is not running")?;
        wait_ready(
            &format!(
                "nats-server in {} to answer GET /healthz",
                self.dir.path().display()
            ),
            process,
            READY_TIMEOUT,
            &|| self.log_tail(LOG_TAIL_LINES),
            || match http_get(&url, PROBE_TIMEOUT) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("answered {} {:?}", r.status, r.body)),
                Err(e) => Err(format!("{e:#}")),
            },
        )
    }

    fn write_config(&self) -> Result<()> {
        let mut config = format!(
            "# Generated by etcdmon-testkit for one test server; see tests/src/nats.rs.\n\
             server_name: {name}\n\
             listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             jetstream {{\n\
             \x20   store_dir: {store}\n\
             \x20   max_memory_store: 64MB\n\
             \x20   max_file_store: 1GB\n\
             }}\n",
            name = self.server_name(),
            port = self.port,
            monitor = self.monitor_port,
            // The config format accepts JSON strings, so a path with spaces or quotes
            // is written safely with Debug-style escaping of a plain string.
            store = quote(&self.store_dir().display().to_string()),
        );
        if let Some(route) = &self.route {
            let peers: Vec<String> = route
                .peers
                .iter()
                .map(|p| quote(&format!("nats-route://127.0.0.1:{p}")))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: etcdmon-test\n  listen: \"127.0.0.1:{}\"\n  routes: [ {} ]\n}}\n",
                route.port,
                peers.join(", ")
            ));
        }
        let sec = &self.security;
        if let Some(tls) = &sec.tls {
            config.push_str(&format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n}}\n",
                quote(&tls.server_cert.display().to_string()),
                quote(&tls.server_key.display().to_string()),
                quote(&tls.ca_cert.display().to_string()),
                sec.verify_clients,
            ));
        }
        match (&sec.token, &sec.user) {
            _ if sec.nkey.is_some() => config.push_str(&format!(
                "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
                quote(sec.nkey.as_deref().unwrap_or_default())
            )),
            (Some(token), _) => config.push_str(&format!(
                "authorization {{\n  token: {}\n}}\n",
                quote(token)
            )),
            (None, Some((user, password))) => config.push_str(&format!(
                "authorization {{\n  user: {}\n  password: {}\n}}\n",
                quote(user),
                quote(password)
            )),
            (None, None) => {}
        }
        let path = self.config_path();
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // `process` drops first (ChildProcess SIGKILLs and reaps it), then `dir` is
        // removed. SIGKILL rather than a graceful stop: the store is thrown away anyway.
        if let Some(process) = self.process.take() {
            let _ = process.kill();
        }
    }
}

/// A double-quoted string for the NATS config format (which takes JSON-style strings).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One request-reply exchange over the NATS text protocol on a fresh connection.
fn nats_request(port: u16, subject: &str, payload: &[u8], timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no reply within {timeout:?}");
        }
        Ok(left)
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect to {addr}"))?;
    stream.set_write_timeout(Some(left()?))?;
    let mut writer = stream.try_clone().context("clone socket")?;
    let mut reader = BufReader::new(stream);

    // The server greets with INFO before anything else.
    let mut line = String::new();
    read_line(&mut reader, &mut line, &left)?;
    if !line.starts_with("INFO ") {
        bail!("expected INFO from the server, got {:?}", line.trim_end());
    }
    // Unique per process and call, so concurrent requests never share an inbox.
    let inbox = format!(
        "_INBOX.etcdmon_testkit.{}.{}",
        std::process::id(),
        next_inbox_id()
    );
    let mut out = Vec::with_capacity(payload.len() + 256);
    out.extend_from_slice(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"etcdmon-testkit\",\
          \"version\":\"0\",\"protocol\":1,\"headers\":false}\r\n",
    );
    out.extend_from_slice(format!("SUB {inbox} 1\r\nUNSUB 1 1\r\n").as_bytes());
    out.extend_from_slice(format!("PUB {subject} {inbox} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    writer.write_all(&out).context("send request")?;

    loop {
        read_line(&mut reader, &mut line, &left)?;
        let text = line.trim_end();
        if text == "PING" {
            writer.write_all(b"PONG\r\n").context("answer PING")?;
        } else if let Some(error) = text.strip_prefix("-ERR") {
            bail!("server error:{error}");
        } else if let Some(rest) = text.strip_prefix("MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let size: usize = rest
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("bad MSG line {text:?}"))?;
            if size > MAX_REPLY_BYTES {
                bail!("reply of {size} bytes is larger than {MAX_REPLY_BYTES}");
            }
            let mut body = vec![0; size + 2];
            reader.get_mut().set_read_timeout(Some(left()?))?;
            reader.read_exact(&mut body).context("read reply payload")?;
            body.truncate(size);
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
        // +OK, PONG and a second INFO (cluster changes) need no action.
    }
}

/// Reads one protocol line into `line` (cleared first) before the deadline.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    left: &dyn Fn() -> Result<Duration>,
) -> Result<()> {
    line.clear();
    reader.get_mut().set_read_timeout(Some(left()?))?;
    match reader.read_line(line) {
        Ok(0) => bail!("server closed the connection"),
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            left().and_then(|_| bail!("no reply in time"))
        }
        Err(e) => Err(e).context("read from server"),
    }
}

/// A process-wide counter for reply inboxes.
fn next_inbox_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_retries_on_fresh_ports_when_a_port_is_taken() {
        // A held port comes first, so the first bind fails.
        let (_squatter, taken, mut ports) = crate::service::taken_port_first();
        let server = NatsServer::start_with_ports(&mut ports, &NatsSecurity::default()).unwrap();
        assert_ne!(server.port(), taken);
        let info = server
            .request("$JS.API.INFO", b"", Duration::from_secs(5))
            .unwrap();
        assert!(
            info.contains("io.nats.jetstream.api.v1.account_info_response"),
            "{info}"
        );
    }

    #[test]
    fn quote_escapes() {
        assert_eq!(quote(r#"/tmp/a "b"\c"#), r#""/tmp/a \"b\"\\c""#);
    }
}
