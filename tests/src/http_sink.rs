//! [`HttpSink`]: a local HTTP server that records every request and answers as scripted,
//! standing in for webhook, Slack and PagerDuty endpoints in system tests.
//!
//! Plain std threads (no async runtime), HTTP/1.1 with `Connection: close` and a
//! `Content-Length` body, which is what the alerter's reqwest client sends. Answers are
//! scripted per path prefix: one-shot answers first (e.g. one 429 with `Retry-After`),
//! then the path's default, then `200 {}`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// One recorded request.
#[derive(Debug, Clone)]
pub struct SinkRequest {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived, ms since the Unix epoch.
    pub received_ms: i64,
}

impl SinkRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct SinkAnswer {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl SinkAnswer {
    /// An answer with `status` and `body` and no extra headers.
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }
}

#[derive(Default)]
struct Script {
    requests: Vec<SinkRequest>,
    once: Vec<(String, VecDeque<SinkAnswer>)>,
    default: Vec<(String, SinkAnswer)>,
}

impl Script {
    fn answer(&mut self, path: &str) -> SinkAnswer {
        for (prefix, queue) in &mut self.once {
            if path.starts_with(prefix.as_str()) {
                if let Some(a) = queue.pop_front() {
                    return a;
                }
            }
        }
        self.default
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| SinkAnswer::new(200, "{}"))
    }
}

/// The recording server; stops when dropped.
pub struct HttpSink {
    port: u16,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
}

impl HttpSink {
    /// Starts on a free loopback port.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the HTTP sink")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let script = Arc::new(Mutex::new(Script::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (script.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { port, script, stop })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers requests under `prefix` with `answer` from now on.
    pub fn respond(&self, prefix: &str, answer: SinkAnswer) {
        let mut s = self.script.lock().unwrap_or_else(|e| e.into_inner());
        s.default.retain(|(p, _)| p != prefix);
        s.default.push((prefix.to_owned(), answer));
    }

    /// Answers the next request under `prefix` with `answer` (queued, one-shot).
    pub fn respond_once(&self, prefix: &str, answer: SinkAnswer) {
        let mut s = self.script.lock().unwrap_or_else(|e| e.into_inner());
        match s.once.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, q)) => q.push_back(answer),
            None => s.once.push((prefix.to_owned(), VecDeque::from([answer]))),
        }
    }

    /// Every request so far whose path starts with `prefix`, in arrival order.
    pub fn requests(&self, prefix: &str) -> Vec<SinkRequest> {
        let s = self.script.lock().unwrap_or_else(|e| e.into_inner());
        s.requests
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the requests under `prefix` or `timeout` passes;
    /// returns the requests either way.
    pub fn wait_for(
        &self,
        prefix: &str,
        timeout: Duration,
        done: impl Fn(&[SinkRequest]) -> bool,
    ) -> Vec<SinkRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests(prefix);
            if done(&got) || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, script: &Mutex<Script>) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let received_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let answer = {
        let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
        let a = s.answer(&path);
        s.requests.push(SinkRequest {
            method,
            path,
            headers,
            body,
            received_ms,
        });
        a
    };
    let mut out = conn;
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(answer.body.as_bytes())?;
    out.flush()?;
    Ok(())
}
