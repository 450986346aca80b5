//! Bounded load test on loopback: 64 concurrent segmentation requests
//! against one worker and a queue of 8. Every request is answered (200 or
//! 503), the server stays healthy, memory stays bounded.

mod common;

use std::sync::Arc;
use std::time::Instant;

use calico_serve::ServeConfig;
use common::*;

#[test]
fn sixty_four_concurrent_requests_are_all_answered() {
    let server = start(ServeConfig {
        workers: 1,
        queue: 8,
        ..ServeConfig::default()
    });
    let addr = server.addr();
    let body = Arc::new((png(48, 40, 4), png(40, 48, 10)));
    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let body = Arc::clone(&body);
            std::thread::spawn(move || {
                let task: &[u8] = [
                    b"common-object".as_slice(),
                    b"common-parts",
                    b"unique-parts",
                ][i % 3];
                let t = Instant::now();
                let (s, v) = post_form(
                    addr,
                    &[
                        ("image", Some("a.png"), &body.0),
                        ("image", Some("b.png"), &body.1),
                        ("task", None, task),
                    ],
                );
                (s, v, t.elapsed().as_secs_f64())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wall = start.elapsed().as_secs_f64();
    let mut ok = Vec::new();
    let mut busy = Vec::new();
    for (s, v, t) in &results {
        match s {
            200 => {
                assert!(v["masks"].is_array());
                ok.push(*t);
            }
            503 => {
                assert!(v["error"].as_str().unwrap().contains("busy"));
                busy.push(*t);
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert_eq!(ok.len() + busy.len(), 64);
    // One running and eight queued at least get through.
    assert!(ok.len() >= 9, "only {} requests served", ok.len());
    let (s, h) = get(addr, "/api/health");
    assert_eq!(s, 200);
    let h: serde_json::Value = serde_json::from_slice(&h).unwrap();
    assert_eq!(h["queued"], 0);
    assert_eq!(h["running"], 0);
    // The server still serves after the burst.
    let (s, _) = post_form(
        addr,
        &[
            ("image", Some("a.png"), &body.0),
            ("image", Some("b.png"), &body.1),
            ("task", None, b"common-parts"),
        ],
    );
    assert_eq!(s, 200);
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return "-".to_string();
        }
        format!("p50 {:.3} s, max {:.3} s", v[v.len() / 2], v[v.len() - 1])
    };
    let peak = peak_rss_kib();
    println!(
        "load: 64 concurrent requests in {wall:.2} s: {} × 200 ({}), {} × 503 ({}); \
         peak RSS {} MiB (before the burst {} MiB)",
        ok.len(),
        stat(&mut ok),
        busy.len(),
        stat(&mut busy),
        peak.map_or(0, |k| k / 1024),
        rss_before.map_or(0, |k| k / 1024),
    );
    if let Some(p) = peak {
        assert!(p < 2 * 1024 * 1024, "peak RSS {p} KiB");
    }
    server.shutdown();
}
