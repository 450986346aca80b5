//! A minimal HTTP/1.1 layer over `std::net`: one request per connection
//! (`Connection: close`), bounded header size, `Content-Length` bodies only,
//! socket time-outs, and a body limit checked before the body is read.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Longest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded, without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to send.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json; charset=utf-8",
            headers: Vec::new(),
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// `{"error": msg}` with `status`.
    pub fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": msg.into() }))
    }

    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes `resp` and closes the connection.
pub fn send(stream: &mut TcpStream, resp: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&resp.body)?;
    stream.flush()
}

/// Sends `resp`, then reads and discards what the client still sends
/// (at most `drain` bytes, for at most 2 s), so that closing does not reset
/// the connection before the client has read the response.
pub fn send_and_drain(stream: &mut TcpStream, resp: &Response, drain: u64) {
    if send(stream, resp).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let start = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    let mut left = drain;
    while left > 0 && start.elapsed() < Duration::from_secs(2) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// Why a request could not be read; each maps to an error response.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed or timed out before a full head arrived: no answer.
    Gone,
    /// Answer this and close.
    Respond(Response),
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads one request: its head, then (when `Content-Length` is at most
/// `max_body`) its body; a larger declared body is refused with 413 before
/// any of it is read.
pub fn read_request(stream: &mut TcpStream, max_body: usize) -> Result<Request, ReadError> {
    let mut reader =
        BufReader::with_capacity(8 * 1024, stream.try_clone().map_err(|_| ReadError::Gone)?);
    let mut head = Vec::new();
    loop {
        let n = (&mut reader)
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        if head.len() > MAX_HEAD {
            return Err(ReadError::Respond(Response::error(
                431,
                format!("request head longer than {MAX_HEAD} bytes"),
            )));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") || head == b"\r\n" {
            if head == b"\r\n" {
                head.clear();
                continue;
            }
            break;
        }
    }
    let bad = |m: &str| ReadError::Respond(Response::error(400, m.to_string()));
    let text = std::str::from_utf8(&head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let mut it = first.split_whitespace();
    let (method, target, version) = match (it.next(), it.next(), it.next()) {
        (Some(m), Some(t), Some(v)) => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is served"));
    }
    let raw_path = target.split(['?', '#']).next().unwrap_or("");
    let path =
        percent_decode(raw_path).ok_or_else(|| bad("malformed percent-encoding in the path"))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header line"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(ReadError::Respond(Response::error(
            411,
            "chunked request bodies are not accepted: send Content-Length",
        )));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| bad("Content-Length is not a number"))?,
    };
    if len > max_body as u64 {
        return Err(ReadError::Respond(Response::error(
            413,
            format!(
                "request body of {len} bytes exceeds the limit of {max_body} bytes ({} MiB)",
                max_body / (1024 * 1024)
            ),
        )));
    }
    if len > 0 {
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut body = Vec::with_capacity(len as usize);
        (&mut reader)
            .take(len)
            .read_to_end(&mut body)
            .map_err(|_| {
                ReadError::Respond(Response::error(408, "timed out reading the request body"))
            })?;
        if (body.len() as u64) < len {
            return Err(ReadError::Gone);
        }
        req.body = body;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("/demo/a%20b.png").unwrap(), "/demo/a b.png");
        assert_eq!(percent_decode("/demo/%2e%2e/x").unwrap(), "/demo/../x");
        assert!(percent_decode("/bad%zz").is_none());
        assert!(percent_decode("/bad%").is_none());
    }
}
