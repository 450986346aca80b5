//! The paper's metrics.
