//! Authentication (SPEC §4): taking the credential out of the request
//! ([`extract`]), checking an API key's format and checksum without I/O
//! ([`key`]), and looking it up through the cache ([`keyring`]).

pub mod extract;
pub mod key;
pub mod keyring;
