//! `calico serve`: Calico behind an HTTP JSON API with a single-page web UI
//! (docs/serve.md).
//!
//! * [`engine`]: loading a model and answering one request (answer text,
//!   RLE masks with per-label colours).
//! * [`server`]: the HTTP server with its limits (body size, bounded model
//!   queue with 503, per-request timeout with 504, JSON errors).
//! * [`http`], [`multipart`]: the small HTTP/1.1 and form-data layers.

pub mod engine;
pub mod http;
pub mod multipart;
pub mod server;

pub use engine::{Engine, Query, SegmentResponse};
pub use server::{ServeConfig, Server};
