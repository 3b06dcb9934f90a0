//! A minimal blocking HTTP/1.0 client (GET and POST) on top of [`std::net::TcpStream`].
//!
//! The harness probes `/health` and `/metrics` while members are being killed or frozen
//! with SIGSTOP, so every probe needs a hard deadline and must not depend on an async
//! runtime or connection pool that could keep a connection to a frozen process around.
//! HTTP/1.0 keeps the parsing trivial: the server closes the connection after one response
//! and never uses chunked encoding, so the body is simply everything after the headers.
//! POST exists for services whose API takes a request body, such as ClickHouse's HTTP
//! interface, which reads the SQL from it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The status and body of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The response body, decoded lossily as UTF-8.
    pub body: String,
}

/// Sends `GET` for a plain `http://host:port/path` URL and reads the whole response.
///
/// `timeout` bounds the whole exchange (connect, write and every read), so a server that
/// accepts the connection but never answers (a SIGSTOPped process) yields an error after
/// `timeout` instead of hanging the test.
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse> {
    request("GET", url, None, timeout)
}

/// Sends `POST` with `body` (as `text/plain`) to a plain `http://host:port/path?query` URL
/// and reads the whole response. `timeout` bounds the whole exchange, as for [`http_get`].
pub fn http_post(url: &str, body: &[u8], timeout: Duration) -> Result<HttpResponse> {
    request(
        "POST",
        url,
        Some(("text/plain; charset=utf-8", body)),
        timeout,
    )
}

/// Sends `POST` with a JSON `body` (`application/json`), as REST APIs expect.
pub fn http_post_json(url: &str, body: &str, timeout: Duration) -> Result<HttpResponse> {
    request(
        "POST",
        url,
        Some(("application/json", body.as_bytes())),
        timeout,
    )
}

/// Sends `PUT` with a JSON `body` (`application/json`).
pub fn http_put_json(url: &str, body: &str, timeout: Duration) -> Result<HttpResponse> {
    request(
        "PUT",
        url,
        Some(("application/json", body.as_bytes())),
        timeout,
    )
}

/// Sends `DELETE` without a body.
pub fn http_delete(url: &str, timeout: Duration) -> Result<HttpResponse> {
    request("DELETE", url, None, timeout)
}

/// Sends `POST` with a JSON `body` and `Authorization: Bearer <token>`.
pub fn http_post_json_as(
    url: &str,
    body: &str,
    token: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    request_with(
        "POST",
        url,
        &[("Authorization", &format!("Bearer {token}"))],
        Some(("application/json", body.as_bytes())),
        timeout,
    )
}

fn request(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<HttpResponse> {
    request_with(method, url, &[], body, timeout)
}

fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// URLs are supported, got {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolved to no address"))?;

    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connect to {addr} for {method} {url}"))?;
    stream.set_write_timeout(Some(remaining(deadline, method, url)?))?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: etcdmon-testkit\r\nAccept: */*\r\n"
    )
    .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some((content_type, body)) = body {
        request.extend_from_slice(
            format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body.map(|(_, b)| b).unwrap_or_default());
    stream
        .write_all(&request)
        .with_context(|| format!("send {method} {url}"))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining(deadline, method, url)?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("{method} {url}: no complete response within {timeout:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("read response to {method} {url}")),
        }
    }
    parse_response(&raw).with_context(|| format!("parse response to {method} {url}"))
}

/// Time left until `deadline`, or an error once it has passed (a zero timeout would mean
/// "block forever" to the socket API).
fn remaining(deadline: Instant, method: &str, url: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("{method} {url}: timed out");
    }
    Ok(left)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("response has no end of headers")?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        bail!("not an HTTP status line: {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_status_and_body() {
        let response = parse_response(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{\"health\":\"true\"}",
        )
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "{\"health\":\"true\"}");
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn post_sends_body_with_content_length() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/?database=x", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read until the whole 8-byte body after the blank line has arrived.
            while !request.ends_with(b"SELECT 1") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n1\n").unwrap();
            String::from_utf8(request).unwrap()
        });
        let response = http_post(&url, b"SELECT 1", Duration::from_secs(5)).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "1\n");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /?database=x HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(request.contains("Content-Length: 8\r\n"), "{request}");
    }

    #[test]
    fn silent_server_times_out() {
        // Accepts (via the backlog) but never answers, like a SIGSTOPped process.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let started = Instant::now();
        let err = http_get(&url, Duration::from_millis(200)).unwrap_err();
        assert!(
            format!("{err:#}").contains("no complete response"),
            "{err:#}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
