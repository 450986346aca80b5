//! The HTTP API on a seeded random tiny model: a valid pair, every kind of
//! bad input, the body limit, the timeout, the demo files and the UI.

mod common;

use std::time::Duration;

use calico_serve::ServeConfig;
use common::*;

#[test]
fn valid_pair_gives_answer_masks_and_sizes() {
    let server = start(ServeConfig::default());
    let (a, b) = (png(64, 48, 4), png(48, 64, 16));
    for task in ["common-object", "common-parts", "unique-parts"] {
        let (status, v) = post_form(
            server.addr(),
            &[
                ("image", Some("a.png"), &a),
                ("image", Some("b.png"), &b),
                ("task", None, task.as_bytes()),
            ],
        );
        assert_eq!(status, 200, "{task}: {v}");
        assert!(v["answer"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        assert!(v["question"].as_str().unwrap().contains("(IMAGE2)"));
        assert!(v["elapsed_s"].as_f64().unwrap() >= 0.0);
        assert_eq!(v["images"][0]["width"], 64);
        assert_eq!(v["images"][1]["height"], 64);
        let masks = v["masks"].as_array().unwrap();
        assert!(!masks.is_empty(), "{task}: no masks");
        for m in masks {
            let k = m["image"].as_u64().unwrap() as usize;
            let size = &m["rle"]["size"];
            let (h, w) = (size[0].as_u64().unwrap(), size[1].as_u64().unwrap());
            assert_eq!((w, h), [(64, 48), (48, 64)][k]);
            let total: u64 = m["rle"]["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .sum();
            assert_eq!(total, w * h);
            let c = m["colour"].as_str().unwrap();
            assert!(c.len() == 7 && c.starts_with('#'), "{c}");
            let label = m["label"].as_str().unwrap();
            assert!(!label.is_empty());
            if v["scripted_answer"] == true {
                // Every [SEG] of a scripted answer is grounded by a phrase.
                assert!(!label.starts_with("mask "), "{label}");
            }
        }
        // One colour per label, the same on every image.
        for m in masks {
            for n in masks {
                if m["label"] == n["label"] {
                    assert_eq!(m["colour"], n["colour"]);
                }
            }
        }
    }
    // The same task always asks the same question; a free question is used as given.
    let q = |fields: &[Field]| post_form(server.addr(), fields).1["question"].clone();
    let t: &[u8] = b"common-parts";
    assert_eq!(
        q(&[
            ("image", Some("a"), &a),
            ("image", Some("b"), &b),
            ("task", None, t)
        ]),
        q(&[
            ("image", Some("a"), &a),
            ("image", Some("b"), &b),
            ("task", None, t)
        ])
    );
    let free = q(&[
        ("image", Some("a"), &a),
        ("image", Some("b"), &b),
        ("question", None, b"What do these share?"),
    ]);
    assert!(free.as_str().unwrap().ends_with("What do these share?"));
    server.shutdown();
}

/// Several workers (each with a rayon pool of its own) answer concurrent
/// requests exactly as one worker answers them one at a time.
#[test]
fn several_workers_give_the_answers_of_one() {
    let (a, b) = (png(64, 48, 4), png(48, 64, 16));
    let tasks = [
        "common-object",
        "common-parts",
        "unique-parts",
        "common-parts",
    ];
    let ask = |addr, task: &str| {
        let (status, mut v) = post_form(
            addr,
            &[
                ("image", Some("a.png"), &a),
                ("image", Some("b.png"), &b),
                ("task", None, task.as_bytes()),
            ],
        );
        assert_eq!(status, 200, "{task}: {v}");
        v.as_object_mut().unwrap().remove("elapsed_s");
        v
    };
    let one = start(ServeConfig {
        workers: 1,
        ..ServeConfig::default()
    });
    let want: Vec<_> = tasks.iter().map(|t| ask(one.addr(), t)).collect();
    let several = start(ServeConfig {
        workers: 3,
        ..ServeConfig::default()
    });
    let addr = several.addr();
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = tasks.iter().map(|t| s.spawn(|| ask(addr, t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, want);
}

fn assert_error(status: u16, v: &serde_json::Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{v}");
    let e = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {v}"));
    assert!(e.contains(needle), "{e:?} lacks {needle:?}");
}

#[test]
fn bad_inputs_give_json_4xx() {
    let server = start(ServeConfig {
        max_body_bytes: 64 * 1024,
        ..ServeConfig::default()
    });
    let addr = server.addr();
    let (a, b) = (png(32, 32, 2), png(32, 32, 8));
    let t: &[u8] = b"common-object";

    let (s, v) = post_form(addr, &[("image", Some("a.png"), &a), ("task", None, t)]);
    assert_error(s, &v, 400, "at least 2 images");

    let (s, v) = post_form(
        addr,
        &[
            ("image", Some("a.png"), &a),
            ("image", Some("notes.txt"), b"hello"),
            ("task", None, t),
        ],
    );
    assert_error(s, &v, 400, "notes.txt");

    let truncated = &a[..a.len() / 2];
    let (s, v) = post_form(
        addr,
        &[
            ("image", Some("a.png"), &a),
            ("image", Some("cut.png"), truncated),
            ("task", None, t),
        ],
    );
    assert_error(s, &v, 400, "cut.png");

    let (s, v) = post_form(
        addr,
        &[
            ("image", Some("a.png"), &a),
            ("image", Some("b.png"), &b),
            ("task", None, b"dance"),
        ],
    );
    assert_error(s, &v, 400, "unknown task");

    let (s, v) = post_form(
        addr,
        &[("image", Some("a.png"), &a), ("image", Some("b.png"), &b)],
    );
    assert_error(s, &v, 400, "task");

    let (s, v) = post_form(
        addr,
        &[
            ("image", Some("a.png"), &a),
            ("image", Some("b.png"), &b),
            ("question", None, b"<image> x"),
        ],
    );
    assert_error(s, &v, 400, "<image>");

    // Malformed multipart: a part that is never closed.
    let body =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\ncommon");
    let head = format!(
        "POST /api/segment HTTP/1.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let (s, raw_body) = raw(addr, &head, body.as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&raw_body).unwrap();
    assert_error(s, &v, 400, "malformed multipart");

    // Not multipart at all.
    let (s, raw_body) = raw(
        addr,
        "POST /api/segment HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        b"{}",
    );
    let v: serde_json::Value = serde_json::from_slice(&raw_body).unwrap();
    assert_error(s, &v, 400, "multipart/form-data");

    // Too large: a real body over the limit, and a declared one that is never sent.
    let big = vec![7u8; 200 * 1024];
    let (s, v) = post_form(
        addr,
        &[("image", Some("a.png"), &big), ("image", Some("b.png"), &b)],
    );
    assert_error(s, &v, 413, "exceeds the limit");
    let (s, raw_body) = raw(
        addr,
        "POST /api/segment HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=x\r\n\
         Content-Length: 99999999999999\r\n\r\n",
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&raw_body).unwrap();
    assert_error(s, &v, 413, "exceeds the limit");

    // Unknown route and wrong method.
    let (s, raw_body) = get(addr, "/api/nothing");
    assert_eq!(s, 404);
    assert!(serde_json::from_slice::<serde_json::Value>(&raw_body).unwrap()["error"].is_string());
    let (s, _) = get(addr, "/api/segment");
    assert_eq!(s, 405);

    // Still healthy.
    let (s, body) = get(addr, "/api/health");
    assert_eq!(s, 200);
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["device"], "cpu");
    server.shutdown();
}

#[test]
fn timeout_gives_504() {
    let server = start(ServeConfig {
        timeout: Duration::from_nanos(1),
        ..ServeConfig::default()
    });
    let (a, b) = (png(32, 32, 2), png(32, 32, 8));
    let (s, v) = post_form(
        server.addr(),
        &[
            ("image", Some("a"), &a),
            ("image", Some("b"), &b),
            ("task", None, b"common-parts"),
        ],
    );
    assert_error(s, &v, 504, "time limit");
    server.shutdown();
}

#[test]
fn demo_files_stay_inside_the_data_dir() {
    let root = std::env::temp_dir().join(format!("calico-serve-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("one.png"), png(16, 16, 2)).unwrap();
    std::fs::write(data.join("notes.txt"), b"not listed").unwrap();
    std::fs::write(root.join("secret.png"), png(8, 8, 1)).unwrap();
    std::os::unix::fs::symlink(root.join("secret.png"), data.join("escape.png")).unwrap();
    let server = start(ServeConfig {
        data_dir: Some(data.clone()),
        ..ServeConfig::default()
    });
    let addr = server.addr();
    let (s, body) = get(addr, "/api/demo-images");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["images"], serde_json::json!(["one.png"]));
    let (s, body) = get(addr, "/demo/one.png");
    assert_eq!(s, 200);
    assert_eq!(body, png(16, 16, 2));
    for bad in [
        "/demo/../secret.png",
        "/demo/%2e%2e/secret.png",
        "/demo/..%2fsecret.png",
        "/demo/escape.png",
        "/demo//etc/passwd",
        "/demo/%2fetc%2fpasswd",
        "/demo/notes.txt",
        "/demo/missing.png",
    ] {
        let (s, body) = get(addr, bad);
        assert!(s == 404 || s == 400, "{bad}: {s}");
        assert_ne!(body, png(8, 8, 1), "{bad} leaked the file outside");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].is_string());
    }
    server.shutdown();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn index_page_is_embedded() {
    let server = start(ServeConfig::default());
    let (s, body) = get(server.addr(), "/");
    assert_eq!(s, 200);
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("<canvas") && html.contains("/api/segment"));
    server.shutdown();
}
