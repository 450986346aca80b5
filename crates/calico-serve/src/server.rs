//! The server: connection threads, the bounded model queue, the routes.
//!
//! * An acceptor thread hands connections to `io_threads` connection
//!   threads (a full hand-off queue answers 503 at once).
//! * A connection thread reads one request, answers the cheap routes
//!   itself and turns `POST /api/segment` into a job for the model pool:
//!   `workers` threads, each running one job at a time, behind a queue of
//!   `queue` waiting jobs. A job that finds the queue full gets 503; one
//!   not answered within `timeout` gets 504 (a job whose deadline passed
//!   while queued is skipped).

use std::io::{self, Cursor};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use calico_model::preprocess::RgbImage;
use calico_text::templates::Task;

use crate::engine::{Engine, Query, SegmentResponse};
use crate::http::{self, ReadError, Request, Response};
use crate::multipart;

/// The web UI, embedded in the binary.
const INDEX_HTML: &str = include_str!("ui/index.html");

/// Server settings (the `calico serve` flags).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: String,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Model runs at a time.
    pub workers: usize,
    /// Segmentation requests waiting for a worker (503 beyond).
    pub queue: usize,
    /// Per-request limit, from arrival to answer (504 beyond).
    pub timeout: Duration,
    /// Directory of demo images (`/api/demo-images`, `/demo/<name>`).
    pub data_dir: Option<PathBuf>,
    /// Connection threads.
    pub io_threads: usize,
    /// Most images per request.
    pub max_images: usize,
    /// Largest side of an input image, in pixels.
    pub max_side: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            max_body_bytes: 16 * 1024 * 1024,
            workers: 1,
            queue: 8,
            timeout: Duration::from_secs(120),
            data_dir: None,
            io_threads: 16,
            max_images: 8,
            max_side: 4096,
        }
    }
}

/// A job for the model pool.
struct Job {
    query: Query,
    images: Vec<RgbImage>,
    deadline: Instant,
    reply: mpsc::Sender<Result<SegmentResponse, String>>,
}

/// Counters shown by `/api/health`.
#[derive(Default)]
struct Stats {
    running: AtomicUsize,
    queued: AtomicUsize,
    served: AtomicUsize,
    rejected_busy: AtomicUsize,
    timed_out: AtomicUsize,
}

struct Shared {
    cfg: ServeConfig,
    engine_description: String,
    engine_device: String,
    jobs: SyncSender<Job>,
    stats: Arc<Stats>,
    /// Canonical data directory.
    data_dir: Option<PathBuf>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `cfg.addr` and starts serving `engine`.
    pub fn start(cfg: ServeConfig, engine: Engine) -> io::Result<Server> {
        if cfg.workers == 0 || cfg.io_threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "workers and io threads must be at least 1",
            ));
        }
        let data_dir =
            match &cfg.data_dir {
                Some(d) => Some(d.canonicalize().map_err(|e| {
                    io::Error::new(e.kind(), format!("data dir {}: {e}", d.display()))
                })?),
                None => None,
            };
        let listener = TcpListener::bind(&cfg.addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(cfg.queue);
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            engine_description: engine.description.clone(),
            engine_device: engine.device(),
            cfg: cfg.clone(),
            jobs,
            stats: Arc::clone(&stats),
            data_dir,
        });
        let mut threads = Vec::new();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let several = cfg.workers > 1;
        for w in 0..cfg.workers {
            let rx = Arc::clone(&job_rx);
            let engine = engine.clone();
            let st = Arc::clone(&stats);
            threads.push(std::thread::spawn(move || {
                // Several workers each keep their kernels' rayon work on a
                // pool of their own, instead of queueing at the global one
                // (calico_train::workers); one worker uses the global pool.
                if several {
                    calico_train::workers::on_own_pool(format!("calico-serve-{w}"), || {
                        worker(rx, engine, st)
                    })
                } else {
                    worker(rx, engine, st)
                }
            }));
        }
        let (conn_tx, conn_rx) = mpsc::sync_channel::<TcpStream>(cfg.io_threads);
        let conn_rx = Arc::new(Mutex::new(conn_rx));
        for _ in 0..cfg.io_threads {
            let rx = Arc::clone(&conn_rx);
            let sh = Arc::clone(&shared);
            threads.push(std::thread::spawn(move || connections(rx, sh)));
        }
        let st = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || accept(listener, conn_tx, st)));
        Ok(Server {
            addr,
            stop,
            threads,
        })
    }

    /// The bound address (the real port when `addr` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Stops accepting, lets the threads finish and joins them.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.wait();
    }
}

/// Busy answers being written at once; beyond this a rejected connection
/// gets its 503 without the drain (best effort, as under a flood).
const MAX_REJECTING: usize = 32;

/// Answers 503 to a connection no thread can take. The client has usually
/// sent its request already: closing the socket with that request unread
/// makes the kernel reset the connection, and the client can lose the 503
/// it had not read yet (the load test saw empty bodies). So the answer is
/// sent and the request drained on a short-lived thread, keeping the
/// acceptor free.
fn reject_busy(mut stream: TcpStream, rejecting: &Arc<AtomicUsize>) {
    let resp = Response::error(503, "server busy: all connection slots are taken")
        .with_header("Retry-After", "1");
    if rejecting.fetch_add(1, Ordering::SeqCst) >= MAX_REJECTING {
        rejecting.fetch_sub(1, Ordering::SeqCst);
        let _ = http::send(&mut stream, &resp);
        return;
    }
    let count = Arc::clone(rejecting);
    std::thread::spawn(move || {
        http::send_and_drain(&mut stream, &resp, REJECT_DRAIN_BYTES);
        count.fetch_sub(1, Ordering::SeqCst);
    });
}

/// The most a busy answer reads from its client before closing.
const REJECT_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

fn accept(listener: TcpListener, conns: SyncSender<TcpStream>, stop: Arc<AtomicBool>) {
    let rejecting = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        match conns.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(s)) | Err(TrySendError::Disconnected(s)) => {
                stream = s;
                reject_busy(stream, &rejecting);
            }
        }
    }
    // Dropping `conns` ends the connection threads, whose `Shared` (holding
    // the job sender) then ends the workers.
}

fn connections(rx: Arc<Mutex<Receiver<TcpStream>>>, sh: Arc<Shared>) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(mut stream) = next else { return };
        match http::read_request(&mut stream, sh.cfg.max_body_bytes) {
            Ok(req) => {
                let resp = route(&req, &sh);
                let _ = http::send(&mut stream, &resp);
            }
            Err(ReadError::Gone) => {}
            Err(ReadError::Respond(resp)) => {
                http::send_and_drain(&mut stream, &resp, 4 * sh.cfg.max_body_bytes as u64)
            }
        }
    }
}

/// Workers hold the counters only, so that the job queue closes (and they
/// end) once the connection threads are gone.
fn worker(rx: Arc<Mutex<Receiver<Job>>>, engine: Engine, stats: Arc<Stats>) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        stats.queued.fetch_sub(1, Ordering::SeqCst);
        if Instant::now() >= job.deadline {
            continue; // its requester has answered 504 already
        }
        stats.running.fetch_add(1, Ordering::SeqCst);
        let out = engine.segment(&job.query, &job.images);
        stats.running.fetch_sub(1, Ordering::SeqCst);
        let _ = job.reply.send(out);
    }
}

fn route(req: &Request, sh: &Shared) -> Response {
    let m = req.method.as_str();
    let p = req.path.as_str();
    match (m, p) {
        ("GET" | "HEAD", "/" | "/index.html") => Response::bytes(
            200,
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes().to_vec(),
        ),
        ("GET", "/api/health") => health(sh),
        ("GET", "/api/demo-images") => demo_list(sh),
        ("GET", _) if p.starts_with("/demo/") => demo_file(sh, &p["/demo/".len()..]),
        ("POST", "/api/segment") => segment(req, sh),
        (_, "/" | "/api/health" | "/api/demo-images" | "/api/segment") => {
            Response::error(405, format!("{m} is not allowed on {p}"))
        }
        _ => Response::error(404, format!("no such resource: {p}")),
    }
}

fn health(sh: &Shared) -> Response {
    let s = &sh.stats;
    Response::json(
        200,
        &serde_json::json!({
            "status": "ok",
            "model": sh.engine_description,
            "device": sh.engine_device,
            "workers": sh.cfg.workers,
            "queue": sh.cfg.queue,
            "running": s.running.load(Ordering::SeqCst),
            "queued": s.queued.load(Ordering::SeqCst),
            "served": s.served.load(Ordering::SeqCst),
            "rejected_busy": s.rejected_busy.load(Ordering::SeqCst),
            "timed_out": s.timed_out.load(Ordering::SeqCst),
            "max_body_bytes": sh.cfg.max_body_bytes,
            "timeout_s": sh.cfg.timeout.as_secs_f64(),
        }),
    )
}

/// The image files directly inside the data directory (no symlinks that
/// leave it), sorted.
fn demo_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| image_type(n).is_some() && resolve_demo(dir, n).is_some())
        .collect();
    names.sort();
    names
}

fn image_type(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".png") {
        Some("image/png")
    } else if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        Some("image/jpeg")
    } else {
        None
    }
}

/// `name` as a regular file inside `dir` (canonical), or `None`: a name
/// with a separator, `..`, a root or a leading dot, and a link whose
/// target leaves `dir`, are refused.
fn resolve_demo(dir: &Path, name: &str) -> Option<PathBuf> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || Path::new(name)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let full = dir.join(name).canonicalize().ok()?;
    if full.parent()? != dir || !full.is_file() {
        return None;
    }
    Some(full)
}

fn demo_list(sh: &Shared) -> Response {
    let names = sh.data_dir.as_deref().map(demo_names).unwrap_or_default();
    Response::json(200, &serde_json::json!({ "images": names }))
}

fn demo_file(sh: &Shared, name: &str) -> Response {
    let Some(dir) = sh.data_dir.as_deref() else {
        return Response::error(404, "no data directory is served (start with --data-dir)");
    };
    if name.contains(['/', '\\', '\0']) || name.split('/').any(|s| s == "..") {
        return Response::error(400, "demo names are plain file names");
    }
    let (Some(ct), Some(path)) = (image_type(name), resolve_demo(dir, name)) else {
        return Response::error(404, format!("no demo image {name:?}"));
    };
    match std::fs::read(&path) {
        Ok(b) => Response::bytes(200, ct, b),
        Err(_) => Response::error(404, format!("no demo image {name:?}")),
    }
}

/// Decodes one uploaded image (PNG or JPEG) into RGB.
fn decode_image(data: &[u8], max_side: u32) -> Result<RgbImage, String> {
    let mut reader = image::ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a PNG or JPEG image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?.to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image has zero size ({w}x{h})"));
    }
    RgbImage::new(w as usize, h as usize, img.into_raw()).map_err(|e| e.to_string())
}

fn parse_task(s: &str) -> Result<Task, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("identify") {
        return Ok(Task::IdentifyObjects);
    }
    Task::from_str(t).map_err(|_| {
        format!(
            "unknown task {t:?}: expected common-object, common-parts, unique-parts or identify"
        )
    })
}

/// Reads the form of `/api/segment` into a query and decoded images.
fn parse_form(req: &Request, sh: &Shared) -> Result<(Query, Vec<RgbImage>), Response> {
    let bad = |m: String| Response::error(400, m);
    let ct = req
        .header("content-type")
        .ok_or_else(|| bad("missing Content-Type: send multipart/form-data".into()))?;
    let boundary = multipart::boundary(ct).map_err(|e| bad(e.to_string()))?;
    let parts = multipart::parse(&req.body, &boundary).map_err(|e| bad(e.to_string()))?;
    let mut task = None;
    let mut question = None;
    let mut files = Vec::new();
    for p in parts {
        match p.name.as_str() {
            "image" | "images" | "image[]" => files.push(p),
            "task" => {
                let s = String::from_utf8(p.data).map_err(|_| bad("task is not UTF-8".into()))?;
                if !s.trim().is_empty() {
                    task = Some(parse_task(&s).map_err(bad)?);
                }
            }
            "question" => {
                let s =
                    String::from_utf8(p.data).map_err(|_| bad("question is not UTF-8".into()))?;
                if !s.trim().is_empty() {
                    question = Some(s.trim().to_string());
                }
            }
            other => return Err(bad(format!("unknown form field {other:?}"))),
        }
    }
    let query =
        match (task, question) {
            (_, Some(q)) => {
                if q.chars().count() > 1000 {
                    return Err(bad("question longer than 1000 characters".into()));
                }
                if q.contains(calico_text::tokens::IMAGE) {
                    return Err(bad(format!(
                        "question may not contain {}: images are added for you",
                        calico_text::tokens::IMAGE
                    )));
                }
                Query::Question(q)
            }
            (Some(t), None) => Query::Task(t),
            (None, None) => return Err(bad(
                "give a task (common-object, common-parts, unique-parts, identify) or a question"
                    .into(),
            )),
        };
    if files.len() < 2 {
        return Err(bad(format!(
            "co-segmentation needs at least 2 images in `image` fields, got {}",
            files.len()
        )));
    }
    if files.len() > sh.cfg.max_images {
        return Err(bad(format!(
            "at most {} images per request, got {}",
            sh.cfg.max_images,
            files.len()
        )));
    }
    let mut images = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let name = f.filename.as_deref().unwrap_or("(no file name)");
        let img = decode_image(&f.data, sh.cfg.max_side).map_err(|e| {
            bad(format!(
                "field `{}` #{} ({name}, {} bytes) is not a usable image: {e}",
                f.name,
                i + 1,
                f.data.len()
            ))
        })?;
        images.push(img);
    }
    Ok((query, images))
}

fn segment(req: &Request, sh: &Shared) -> Response {
    let deadline = Instant::now() + sh.cfg.timeout;
    let (query, images) = match parse_form(req, sh) {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let (reply, answer) = mpsc::channel();
    sh.stats.queued.fetch_add(1, Ordering::SeqCst);
    let job = Job {
        query,
        images,
        deadline,
        reply,
    };
    if let Err(e) = sh.jobs.try_send(job) {
        sh.stats.queued.fetch_sub(1, Ordering::SeqCst);
        sh.stats.rejected_busy.fetch_add(1, Ordering::SeqCst);
        let msg = match e {
            TrySendError::Full(_) => format!(
                "server busy: {} model run(s) in progress and {} queued; retry later",
                sh.cfg.workers, sh.cfg.queue
            ),
            TrySendError::Disconnected(_) => "the model workers have stopped".to_string(),
        };
        return Response::error(503, msg).with_header("Retry-After", "2");
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    match answer.recv_timeout(wait) {
        Ok(Ok(r)) => {
            sh.stats.served.fetch_add(1, Ordering::SeqCst);
            match serde_json::to_value(&r) {
                Ok(v) => Response::json(200, &v),
                Err(e) => Response::error(500, e.to_string()),
            }
        }
        Ok(Err(e)) => Response::error(500, format!("segmentation failed: {e}")),
        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
            sh.stats.timed_out.fetch_add(1, Ordering::SeqCst);
            Response::error(
                504,
                format!(
                    "no answer within the time limit of {} s",
                    sh.cfg.timeout.as_secs_f64()
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_names_stay_inside_the_dir() {
        let d = std::env::temp_dir().join(format!("calico-serve-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.png"), b"x").unwrap();
        std::fs::write(d.join("sub/b.png"), b"x").unwrap();
        let outside = d.with_extension("outside.png");
        std::fs::write(&outside, b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&outside, d.join("link.png")).unwrap();
        let dir = d.canonicalize().unwrap();
        assert!(resolve_demo(&dir, "a.png").is_some());
        for bad in [
            "../a.png",
            "sub/b.png",
            "/etc/passwd",
            "..",
            ".",
            "",
            "link.png",
            ".hidden.png",
        ] {
            assert!(resolve_demo(&dir, bad).is_none(), "{bad}");
        }
        assert_eq!(demo_names(&dir), vec!["a.png".to_string()]);
        let _ = std::fs::remove_file(outside);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn tasks_parse_with_dashes_and_identify() {
        assert_eq!(parse_task("common-parts").unwrap(), Task::CommonParts);
        assert_eq!(parse_task("unique_parts").unwrap(), Task::UniqueParts);
        assert_eq!(parse_task("identify").unwrap(), Task::IdentifyObjects);
        assert!(parse_task("dance").is_err());
    }
}
