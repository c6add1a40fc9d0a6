//! Authentication (SPEC §4): taking the credential out of the request
//! ([`extract`]) and checking an API key's format and checksum without I/O
//! ([`key`]). Looking the key up is the store's job (`crate::store`).

pub mod extract;
pub mod key;
