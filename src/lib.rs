//! keyward: a sidecar reverse-proxy authenticator.
#![forbid(unsafe_code)]

pub mod config;
