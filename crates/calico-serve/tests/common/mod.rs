//! A raw HTTP/1.1 client and a seeded tiny server for the tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use calico_serve::{Engine, ServeConfig, Server};

/// A server on a free loopback port over the seeded random `tiny` model.
pub fn start(cfg: ServeConfig) -> Server {
    let engine =
        Engine::random_preset("tiny", 7, 8, &candle_core::Device::Cpu).expect("tiny engine");
    Server::start(
        ServeConfig {
            addr: "127.0.0.1:0".into(),
            ..cfg
        },
        engine,
    )
    .expect("server starts")
}

/// A small PNG: a coloured box at `x0` on a gradient.
pub fn png(w: u32, h: u32, x0: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (x0..x0 + w / 2).contains(&x) && (h / 4..3 * h / 4).contains(&y) {
            image::Rgb([200, 40, 40])
        } else {
            image::Rgb([(x * 3) as u8, (y * 3) as u8, 90])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// One form field: (name, file name, bytes).
pub type Field<'a> = (&'a str, Option<&'a str>, &'a [u8]);

pub const BOUNDARY: &str = "----calicoTestBoundary7MA4YWxk";

pub fn multipart(fields: &[Field]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, file, data) in fields {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// Sends a raw request and returns (status, body).
pub fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and stop reading early.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..text_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, out[text_end + 4..].to_vec())
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        b"",
    )
}

pub fn post_form(addr: SocketAddr, fields: &[Field]) -> (u16, serde_json::Value) {
    let body = multipart(fields);
    let head = format!(
        "POST /api/segment HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, b) = raw(addr, &head, &body);
    let v = serde_json::from_slice(&b).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&b)
        )
    });
    (status, v)
}

/// The process's peak resident set size in KiB (VmHWM).
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
