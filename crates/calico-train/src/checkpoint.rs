//! Checkpoints (placeholder).
