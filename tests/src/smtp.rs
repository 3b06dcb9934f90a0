//! A real SMTP server (Debian's `aiosmtpd`) that keeps what it receives, for tests.
//!
//! # How it works
//!
//! [`SmtpSink::start`] creates a temp dir, takes a port from [`free_port`] and runs the
//! `aiosmtpd` command (package `python3-aiosmtpd`) on `127.0.0.1:PORT` with a small
//! handler written into the temp dir:
//!
//! ```text
//! etcdmon_smtp_sink.py   the handler (loaded with PYTHONPATH=<temp dir>)
//! mail/000001.json       one file per accepted message, written atomically
//! stdout.log             aiosmtpd's output
//! ```
//!
//! The handler stores each message as JSON: the envelope (`MAIL FROM`, `RCPT TO`), the
//! headers and every leaf MIME part decoded by Python's `email` package (RFC 2047
//! headers, quoted-printable and base64 bodies), so tests compare plain strings and
//! need no MIME parser of their own. [`SmtpSink::messages`] reads them back in arrival
//! order.
//!
//! Recipients can script failures, for tests of error handling: `RCPT TO` an address
//! whose local part starts with `reject-permanent` is answered `550 5.1.1`, one starting
//! with `reject-transient` gets `451 4.3.0`; every other message is accepted with `250`.
//!
//! With [`SmtpSink::start_tls`] the server speaks implicit TLS (`--smtpscert`) or
//! offers and requires STARTTLS (`--tlscert`) with the given certificate, e.g. from
//! [`crate::generate_tls`]. AUTH is not offered.
//!
//! # Readiness and cleanup
//!
//! `start` returns once the port accepts TCP connections (Python binds before it
//! serves, so queued connections are served). If the process exits or the port stays
//! closed for 30 s, the error carries the tail of its log; "address already in use"
//! (another process took the port after [`free_port`]) restarts on a fresh port, up to
//! three times. Dropping the sink SIGKILLs the server (through [`ChildProcess`]) and
//! removes the temp dir.
//!
//! ```no_run
//! use etcdmon_testkit::smtp::SmtpSink;
//! use std::time::Duration;
//!
//! let sink = SmtpSink::start()?;
//! // ... send mail to 127.0.0.1:{sink.port()} ...
//! let mails = sink.wait_for_messages(1, Duration::from_secs(10))?;
//! assert_eq!(mails[0].header("Subject"), Some("[FIRING:1] NoLeader"));
//! # anyhow::Ok(())
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{log_tail, require_binary, ChildProcess};
use crate::service::{retry_on_taken_port, service_temp_dir, wait_ready};
use crate::tls::TlsFiles;

/// How long `start` waits for the port to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes and between looks into the mail dir.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Log lines shown in errors.
const LOG_TAIL_LINES: usize = 30;

/// The aiosmtpd handler: see the module docs.
const HANDLER: &str = r#"
import email
import email.policy
import itertools
import json
import os


class JsonSink:
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.sequence = itertools.count(1)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("JsonSink needs the mail directory")
        return cls(args[0])

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("reject-permanent"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("reject-transient"):
            return "451 4.3.0 <%s>: try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        parts = []
        for part in message.walk():
            if part.is_multipart():
                continue
            content = part.get_content()
            if isinstance(content, bytes):
                content = content.decode("utf-8", "replace")
            parts.append({"content_type": part.get_content_type(), "content": content})
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "headers": [[name, str(value)] for name, value in message.items()],
            "parts": parts,
            "raw": raw.decode("utf-8", "replace"),
        }
        name = "%06d.json" % next(self.sequence)
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(self.directory, name))
        return "250 2.0.0 Message accepted"
"#;

/// How the sink secures connections.
#[derive(Debug, Clone, Copy)]
pub enum SmtpTls<'a> {
    /// TLS from the first byte (SMTPS).
    Implicit(&'a TlsFiles),
    /// Plain connect, `STARTTLS` offered and required before `MAIL`.
    StartTls(&'a TlsFiles),
}

/// One leaf MIME part of a received message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailPart {
    /// E.g. `text/plain`.
    pub content_type: String,
    /// The decoded content (transfer encoding and charset undone).
    pub content: String,
}

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`).
    pub mail_from: String,
    /// The envelope recipients that were accepted (`RCPT TO`).
    pub rcpt_to: Vec<String>,
    /// The message headers in order, values decoded (RFC 2047) and unfolded.
    pub headers: Vec<(String, String)>,
    /// The leaf MIME parts in order (one for a single-part message).
    pub parts: Vec<MailPart>,
    /// The message as received.
    pub raw: String,
}

impl ReceivedMail {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The content of the first part of type `content_type`, e.g. `text/plain`.
    pub fn part(&self, content_type: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|p| p.content_type.eq_ignore_ascii_case(content_type))
            .map(|p| p.content.as_str())
    }

    fn from_json(value: &serde_json::Value) -> Result<Self> {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let list = |key: &str| -> Result<&Vec<serde_json::Value>> {
            value[key]
                .as_array()
                .with_context(|| format!("no {key} list"))
        };
        Ok(Self {
            mail_from: text(&value["mail_from"]).context("no mail_from")?,
            rcpt_to: list("rcpt_to")?.iter().filter_map(text).collect(),
            headers: list("headers")?
                .iter()
                .filter_map(|pair| Some((text(&pair[0])?, text(&pair[1])?)))
                .collect(),
            parts: list("parts")?
                .iter()
                .filter_map(|part| {
                    Some(MailPart {
                        content_type: text(&part["content_type"])?,
                        content: text(&part["content"])?,
                    })
                })
                .collect(),
            raw: text(&value["raw"]).unwrap_or_default(),
        })
    }
}

/// An `aiosmtpd` on a loopback port that keeps every message; killed on drop.
#[derive(Debug)]
pub struct SmtpSink {
    // Field order matters: the process drops (and dies) before the temp dir is removed.
    process: ChildProcess,
    port: u16,
    dir: TempDir,
}

impl SmtpSink {
    /// Starts a plain-text SMTP sink on a fresh loopback port and waits until it accepts
    /// connections.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts a sink that speaks TLS as `tls` says.
    pub fn start_tls(tls: SmtpTls<'_>) -> Result<Self> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<SmtpTls<'_>>) -> Result<Self> {
        let binary = require_binary("aiosmtpd")
            .context("aiosmtpd (Debian package python3-aiosmtpd) is needed for the SMTP sink")?;
        retry_on_taken_port("aiosmtpd", || Self::try_start(&binary, tls))
    }

    fn try_start(binary: &Path, tls: Option<SmtpTls<'_>>) -> Result<Self> {
        let dir = service_temp_dir("smtp")?;
        std::fs::write(dir.path().join("etcdmon_smtp_sink.py"), HANDLER)
            .context("write the SMTP sink handler")?;
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .env("PYTHONPATH", dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("--nosetuid")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--size")
            .arg("10485760");
        match tls {
            Some(SmtpTls::Implicit(files)) => {
                command
                    .arg("--smtpscert")
                    .arg(&files.server_cert)
                    .arg("--smtpskey")
                    .arg(&files.server_key);
            }
            Some(SmtpTls::StartTls(files)) => {
                command
                    .arg("--tlscert")
                    .arg(&files.server_cert)
                    .arg("--tlskey")
                    .arg(&files.server_key);
            }
            None => {}
        }
        command
            .arg("--class")
            .arg("etcdmon_smtp_sink.JsonSink")
            .arg(dir.path().join("mail"));
        let process = ChildProcess::spawn("aiosmtpd", command, &dir.path().join("stdout.log"))?;
        let sink = Self { process, port, dir };
        sink.wait_ready()?;
        Ok(sink)
    }

    fn wait_ready(&self) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        wait_ready(
            &format!("aiosmtpd to listen on {addr}"),
            &self.process,
            READY_TIMEOUT,
            &|| log_tail(self.process.log_path(), LOG_TAIL_LINES),
            || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
    }

    /// The SMTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir with handler, mail and log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory receiving one JSON file per message.
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The tail of aiosmtpd's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.process.log_path(), LOG_TAIL_LINES)
    }

    /// Every message accepted so far, in arrival order.
    pub fn messages(&self) -> Result<Vec<ReceivedMail>> {
        let mail_dir = self.mail_dir();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&mail_dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("list {}", mail_dir.display())),
        };
        // Zero-padded sequence numbers: name order is arrival order.
        files.sort();
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("parse {}", path.display()))?;
                ReceivedMail::from_json(&value).with_context(|| format!("read {}", path.display()))
            })
            .collect()
    }

    /// Waits until at least `count` messages have arrived and returns all of them; fails
    /// after `timeout` with what did arrive and the server's log.
    pub fn wait_for_messages(&self, count: usize, timeout: Duration) -> Result<Vec<ReceivedMail>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages()?;
            if messages.len() >= count {
                return Ok(messages);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {count} messages arrived within {timeout:?}; aiosmtpd log:\n{}",
                    messages.len(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// Speaks SMTP by hand and returns every reply line with the code of the reply.
    fn converse(port: u16, commands: &[&str]) -> Vec<String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut read_reply = || {
            // Multi-line replies continue with "250-"; the last line has "250 ".
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return line.trim_end().to_owned();
                }
            }
        };
        let mut replies = vec![read_reply()];
        for command in commands {
            writer.write_all(command.as_bytes()).unwrap();
            writer.write_all(b"\r\n").unwrap();
            replies.push(read_reply());
        }
        replies
    }

    #[test]
    fn receives_decodes_and_rejects_on_request() {
        let sink = SmtpSink::start().unwrap();
        assert!(sink.messages().unwrap().is_empty());
        let replies = converse(
            sink.port(),
            &[
                "EHLO test",
                "MAIL FROM:<alerts@example.invalid>",
                "RCPT TO:<ops@example.invalid>",
                "RCPT TO:<reject-permanent@example.invalid>",
                "RCPT TO:<reject-transient-1@example.invalid>",
                "DATA",
                "From: alerts@example.invalid\r\nTo: ops@example.invalid\r\n\
                 Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\naMOpbGxvCg==\r\n.",
                "QUIT",
            ],
        );
        let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
        assert_eq!(
            codes,
            ["220", "250", "250", "250", "550", "451", "354", "250", "221"],
            "{replies:?}"
        );

        let mails = sink.wait_for_messages(1, Duration::from_secs(10)).unwrap();
        assert_eq!(mails.len(), 1);
        let mail = &mails[0];
        assert_eq!(mail.mail_from, "alerts@example.invalid");
        assert_eq!(mail.rcpt_to, ["ops@example.invalid"]);
        assert_eq!(mail.header("subject"), Some("café"));
        assert_eq!(mail.part("text/plain"), Some("héllo\n"));
        assert!(mail.raw.contains("aMOpbGxvCg=="));
    }

    #[test]
    fn waiting_for_missing_mail_fails_with_log() {
        let sink = SmtpSink::start().unwrap();
        let err = sink
            .wait_for_messages(1, Duration::from_millis(100))
            .unwrap_err();
        assert!(err.to_string().contains("0 of 1 messages arrived"), "{err}");
    }
}
