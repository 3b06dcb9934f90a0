//! A real browser for tests of the web page: Debian's headless Chromium,
//! driven over the W3C WebDriver protocol by `chromedriver` (Debian
//! `chromium-driver`, installed by `scripts/setup`) on a free loopback port.
//!
//! Only what the tests use: open a URL, find elements by CSS selector, read
//! attributes and text, click, type, run a script, take a screenshot.

use crate::{free_port, require_binary, ChildProcess};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; ended (and the driver stopped) on drop.
pub struct Browser {
    base: String,
    session: String,
    _driver: ChildProcess,
    _dir: TempDir,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a 1280x900 window.
    pub fn start() -> Result<Browser> {
        let driver_bin = require_binary("chromedriver")?;
        let chromium = require_binary("chromium")?;
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut cmd = Command::new(driver_bin);
        cmd.arg(format!("--port={port}"));
        let driver =
            ChildProcess::spawn("chromedriver", cmd, &dir.path().join("chromedriver.log"))?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(&format!("{base}/status"), "GET", None).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on {base} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root in CI, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = call(&format!("{base}/session"), "POST", Some(caps))?;
        let session = v["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?
            .to_owned();
        Ok(Browser {
            base,
            session,
            _driver: driver,
            _dir: dir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    /// Opens `url` and waits until the page has loaded.
    pub fn goto(&self, url: &str) -> Result<()> {
        call(&self.url("/url"), "POST", Some(json!({ "url": url }))).map(|_| ())
    }

    /// The elements matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = call(
            &self.url("/elements"),
            "POST",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned())))
            .collect())
    }

    /// The first element matching `css`, once there is one (`timeout` at most).
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_all(css)?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!("no element matches {css:?} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An attribute of `e`, `None` when it has none.
    pub fn attr(&self, e: &Element, name: &str) -> Result<Option<String>> {
        let v = call(
            &self.url(&format!("/element/{}/attribute/{name}", e.0)),
            "GET",
            None,
        )?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// The rendered text of `e`.
    pub fn text(&self, e: &Element) -> Result<String> {
        let v = call(&self.url(&format!("/element/{}/text", e.0)), "GET", None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks `e`.
    pub fn click(&self, e: &Element) -> Result<()> {
        call(
            &self.url(&format!("/element/{}/click", e.0)),
            "POST",
            Some(json!({})),
        )
        .map(|_| ())
    }

    /// Clears `e` (an input) and types `text` into it.
    pub fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        call(
            &self.url(&format!("/element/{}/clear", e.0)),
            "POST",
            Some(json!({})),
        )?;
        call(
            &self.url(&format!("/element/{}/value", e.0)),
            "POST",
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub fn eval(&self, script: &str, args: Value) -> Result<Value> {
        call(
            &self.url("/execute/sync"),
            "POST",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let v = call(&self.url("/screenshot"), "GET", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)
            .context("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(&self.url(""), "DELETE", None);
    }
}

/// One WebDriver command: its `value`, or the driver's error.
fn call(url: &str, method: &str, body: Option<Value>) -> Result<Value> {
    let (status, text) = exchange(url, method, body.map(|b| b.to_string()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("WebDriver {method} {url}: not JSON: {text}"))?;
    if status != 200 {
        bail!(
            "WebDriver {method} {url}: HTTP {status}: {} {}",
            v["value"]["error"].as_str().unwrap_or(""),
            v["value"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(v["value"].clone())
}

/// An HTTP/1.1 exchange with chromedriver, which answers neither HTTP/1.0 nor
/// closes the connection after its answer: the body is read by its
/// `Content-Length`.
fn exchange(url: &str, method: &str, body: Option<String>) -> Result<(u16, String)> {
    let rest = url.strip_prefix("http://").context("an http:// URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("connect to {authority}"))?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("{method} {url}: read"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| raw.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{method} {url}: no complete answer"))?;
    let status_line = String::from_utf8_lossy(&raw[..end]);
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {url}: bad status line {status_line:?}"))?;
    Ok((
        status,
        String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    ))
}
