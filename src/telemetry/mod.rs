//! Telemetry: the Prometheus collectors of SPEC §9 and the tracing setup.

pub mod logging;
pub mod metrics;

pub use metrics::{Metrics, Outcome};
