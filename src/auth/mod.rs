//! Authentication (SPEC §4): taking the credential out of the request
//! ([`extract`]), checking an API key's format and checksum without I/O
//! ([`key`]), looking it up through the cache ([`keyring`]), and verifying
//! JWT bearer tokens ([`jwt`]).

pub mod extract;
pub mod jwt;
pub mod key;
pub mod keyring;
