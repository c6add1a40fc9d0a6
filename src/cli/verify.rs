//! `keyward verify-signature` (SPEC §11): checks one signed-identity header
//! the way an upstream would, with the secrets of the config's
//! `identity.signing` (current, then previous). Exit 0 valid; 1 invalid,
//! older than five minutes or from the future; 2 usage or config error.
//! Prints a one-line reason on stderr; never a secret.

use clap::Args;

use crate::config::Config;
use crate::signing::{Matched, Signer};

use super::ServeArgs;

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub config: ServeArgs,
    /// The request method the upstream received, e.g. GET.
    #[arg(long)]
    pub method: String,
    /// The path the upstream received (a query string is ignored, as in signing).
    #[arg(long)]
    pub path: String,
    /// The signature header's value: `t=<unix s>,v1=<hex>`.
    #[arg(long)]
    pub signature: String,
    /// An identity header the upstream received, as 'Name: value' (repeat;
    /// an identity header not given is absent).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
}

/// Why the command could not check anything (exit 2), or why the
/// signature is not valid (exit 1).
#[derive(Debug)]
pub struct VerifyFailure {
    pub code: u8,
    pub message: String,
}

fn usage(message: String) -> VerifyFailure {
    VerifyFailure { code: 2, message }
}

/// Verifies against `config` at `now` (unix seconds); `Ok` names the secret
/// that matched.
pub fn run(config: &Config, args: &VerifyArgs, now: u64) -> Result<&'static str, VerifyFailure> {
    let Some(signing) = &config.identity.signing else {
        return Err(usage("the config has no identity.signing block; nothing is signed".into()));
    };
    let signer = Signer::from_config(signing).map_err(|e| usage(e.to_string()))?;
    let names = config.identity.headers.all();
    let mut values: [Vec<u8>; 6] = Default::default();
    for given in &args.headers {
        let Some((name, value)) = given.split_once(':') else {
            return Err(usage(format!("--header {given:?}: expected 'Name: value'")));
        };
        let name = name.trim();
        let Some(slot) = names.iter().position(|n| n.as_str().eq_ignore_ascii_case(name)) else {
            let known: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            return Err(usage(format!(
                "--header {name:?} is not an identity header; signatures cover {}",
                known.join(", ")
            )));
        };
        // Optional whitespace around a field value is not part of it (RFC 9110 §5.5).
        values[slot] = value.trim_matches([' ', '\t']).as_bytes().to_vec();
    }
    let method = args.method.to_ascii_uppercase();
    let path = args.path.split_once('?').map_or(args.path.as_str(), |(p, _)| p);
    let values = [
        values[0].as_slice(),
        values[1].as_slice(),
        values[2].as_slice(),
        values[3].as_slice(),
        values[4].as_slice(),
        values[5].as_slice(),
    ];
    match signer.verify(&args.signature, &method, path, values, now) {
        Ok(Matched::Current) => Ok("valid (current secret)"),
        Ok(Matched::Previous) => Ok("valid (previous secret)"),
        Err(e) => Err(VerifyFailure { code: 1, message: format!("invalid: {e}") }),
    }
}
