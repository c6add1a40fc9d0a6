//! Key stores (SPEC §4).

pub mod record;

pub use record::{KeyHash, KeyRecord, KeyState};
