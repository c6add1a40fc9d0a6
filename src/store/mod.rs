//! Key stores (SPEC §4).

pub mod cache;
pub mod record;

pub use record::{KeyHash, KeyRecord, KeyState};
