//! The API key format (SPEC §4): minting keys and key ids from the OS CSPRNG,
//! and checking a presented key's shape and CRC32 checksum with no I/O, so a
//! typo or a random guess gets 401 `malformed_key` without a store round trip.
//!
//! ```text
//! kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO2
//! └┬┘└┬─┘└──────────── random ──────────┘└ sum ┘
//! prefix env     32 base62 (CSPRNG)      6 base62 = CRC32("kw_live_<random>")
//! ```
//!
//! The checksum is not a secret and not a MAC: it only lets keyward (and
//! secret scanners) tell a key of ours from noise before touching the store.

use rand::rand_core::OsError;
use rand::rngs::OsRng;
use rand::TryRngCore;

use crate::config::KeysConfig;

/// Base62 digits in value order (SPEC §4: `0-9A-Za-z`).
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of the random part of a key.
pub const RANDOM_LEN: usize = 32;
/// Length of the base62 checksum that ends a key.
pub const CHECKSUM_LEN: usize = 6;
/// Characters after `{prefix}_{env}_`.
const TAIL_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// Longest presented key looked at, in any mode: nothing we mint comes close,
/// and legacy keys are bounded so a hostile header can't make us hash megabytes.
pub const MAX_PRESENTED_LEN: usize = 256;
/// Length of the random part of a key id (`key_` + 20 base62).
const KEY_ID_RANDOM_LEN: usize = 20;
/// Characters of a key shown in listings and logs (SPEC §4 `display_prefix`).
const DISPLAY_PREFIX_LEN: usize = 12;
/// Largest multiple of 62 that fits in a byte: bytes at or above it are
/// rejected so that every base62 digit is equally likely (no modulo bias).
const REJECT_FROM: u8 = 62 * 4;

/// Why a key could not be minted. Presented keys never produce this; they
/// get [`Malformed`].
#[derive(Debug, thiserror::Error)]
pub enum KeyFormatError {
    #[error("unknown key environment {env:?}; keys.environments is [{known}]")]
    UnknownEnvironment { env: String, known: String },
    #[error("a key environment is required; keys.environments is [{known}]")]
    EnvironmentRequired { known: String },
    #[error("keys carry no environment (keys.environments is empty), but {env:?} was given")]
    NoEnvironments { env: String },
    #[error("the operating system's random number generator failed")]
    Rng(#[source] OsError),
}

/// A presented key failed the format or checksum check. Deliberately carries
/// no reason: clients only ever see `malformed_key`, and a reason would tell a
/// guesser which part of the shape to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed key")]
pub struct Malformed;

/// A presented key that passed [`KeyFormat::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The key exactly as presented: what gets hashed.
    pub key: &'a str,
    /// The environment part; `None` for env-less formats and legacy keys.
    pub env: Option<&'a str>,
}

/// The configured key format (`keys.prefix`, `keys.environments`,
/// `keys.require_checksum`). Built once per config snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: String,
    environments: Vec<String>,
    require_checksum: bool,
}

impl KeyFormat {
    pub fn new(cfg: &KeysConfig) -> KeyFormat {
        KeyFormat {
            prefix: cfg.prefix.clone(),
            environments: cfg.environments.clone(),
            require_checksum: cfg.require_checksum,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn environments(&self) -> &[String] {
        &self.environments
    }

    pub fn require_checksum(&self) -> bool {
        self.require_checksum
    }

    /// Mints a new key. `env` must be one of the configured environments
    /// (`None` iff `keys.environments` is empty). The random part comes from
    /// the OS CSPRNG directly, never from a userspace generator.
    pub fn generate(&self, env: Option<&str>) -> Result<String, KeyFormatError> {
        let env = self.check_env(env)?;
        let env_len = env.map_or(0, |e| e.len() + 1);
        let mut key = String::with_capacity(self.prefix.len() + 1 + env_len + TAIL_LEN);
        key.push_str(&self.prefix);
        key.push('_');
        if let Some(env) = env {
            key.push_str(env);
            key.push('_');
        }
        push_base62(&mut OsRng, &mut key, RANDOM_LEN).map_err(KeyFormatError::Rng)?;
        let sum = checksum_digits(&key);
        key.extend(sum.iter().map(|&b| char::from(b)));
        Ok(key)
    }

    /// Checks shape and checksum, with no I/O.
    ///
    /// With `require_checksum: true` only keys of our exact format pass.
    /// With `require_checksum: false` (imported legacy keys, SPEC §2) any key
    /// of 1..=256 visible ASCII characters passes; if it also parses as our
    /// format, its environment is returned, otherwise `env` is `None`.
    pub fn parse<'a>(&self, presented: &'a str) -> Result<ParsedKey<'a>, Malformed> {
        let env = if self.require_checksum {
            self.parse_strict(presented)?
        } else {
            if presented.is_empty()
                || presented.len() > MAX_PRESENTED_LEN
                || !presented.bytes().all(is_visible_ascii)
            {
                return Err(Malformed);
            }
            self.parse_strict(presented).ok().flatten()
        };
        Ok(ParsedKey { key: presented, env })
    }

    /// `{prefix}_{env}_{random}{checksum}` (or without `{env}_`), checksum
    /// verified. Returns the env slice of `key`.
    fn parse_strict<'a>(&self, key: &'a str) -> Result<Option<&'a str>, Malformed> {
        if key.len() > MAX_PRESENTED_LEN {
            return Err(Malformed);
        }
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(Malformed)?;
        let (env, tail) = if self.environments.is_empty() {
            (None, rest)
        } else {
            // The tail length pins the env down even if one configured env
            // were a prefix of another (`live`, `live_eu`).
            self.environments
                .iter()
                .find_map(|e| {
                    let tail = rest.strip_prefix(e.as_str())?.strip_prefix('_')?;
                    (tail.len() == TAIL_LEN).then(|| (Some(&rest[..e.len()]), tail))
                })
                .ok_or(Malformed)?
        };
        if tail.len() != TAIL_LEN || !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Malformed);
        }
        // The tail is ASCII, so this byte index is a char boundary.
        let (body, sum) = key.split_at(key.len() - CHECKSUM_LEN);
        if checksum_digits(body) != sum.as_bytes() {
            return Err(Malformed);
        }
        Ok(env)
    }

    fn check_env<'e>(&self, env: Option<&'e str>) -> Result<Option<&'e str>, KeyFormatError> {
        match env {
            None if self.environments.is_empty() => Ok(None),
            None => {
                Err(KeyFormatError::EnvironmentRequired { known: self.environments.join(", ") })
            }
            Some(e) if self.environments.is_empty() => {
                Err(KeyFormatError::NoEnvironments { env: e.to_owned() })
            }
            Some(e) if self.environments.iter().any(|k| k == e) => Ok(Some(e)),
            Some(e) => Err(KeyFormatError::UnknownEnvironment {
                env: e.to_owned(),
                known: self.environments.join(", "),
            }),
        }
    }
}

/// The checksum of `body` (everything before the checksum, e.g.
/// `kw_live_<random>`): CRC32 (IEEE, zlib's) in 6 base62 digits.
pub fn checksum(body: &str) -> String {
    checksum_digits(body).iter().map(|&b| char::from(b)).collect()
}

/// The checksum without allocating, for the request path.
fn checksum_digits(body: &str) -> [u8; CHECKSUM_LEN] {
    base62_6(crc32fast::hash(body.as_bytes()))
}

/// `n` in base62, most significant digit first, left-padded with `0`.
/// Six digits always suffice: 62^6 > 2^32.
fn base62_6(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// The first 12 characters of a key: identifies it in listings and logs
/// without revealing it (SPEC §4).
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_LEN).collect()
}

/// A fresh public key identifier: `key_` + 20 base62 characters.
///
/// Ids are public, so this uses rand's thread-local CSPRNG (ChaCha, seeded
/// and reseeded from the OS), whose interface cannot fail, rather than
/// `OsRng`; 20 base62 digits (~119 bits) make collisions a non-issue.
pub fn new_key_id() -> String {
    let mut id = String::with_capacity(4 + KEY_ID_RANDOM_LEN);
    id.push_str("key_");
    match push_base62(&mut rand::rng(), &mut id, KEY_ID_RANDOM_LEN) {
        Ok(()) => {}
        Err(never) => match never {},
    }
    id
}

/// Appends `n` uniformly random base62 characters, by rejection sampling:
/// a byte `b < 248` maps to `ALPHABET[b % 62]` (each digit from exactly four
/// byte values); bytes 248..=255 are drawn again.
fn push_base62<R: TryRngCore + ?Sized>(
    rng: &mut R,
    out: &mut String,
    n: usize,
) -> Result<(), R::Error> {
    let mut buf = [0u8; 64];
    let mut pushed = 0;
    while pushed < n {
        // 8/256 of bytes are rejected, so one buffer almost always suffices.
        rng.try_fill_bytes(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < REJECT_FROM).take(n - pushed) {
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
            pushed += 1;
        }
    }
    Ok(())
}

fn is_visible_ascii(b: u8) -> bool {
    (0x21..=0x7E).contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn format(envs: &[&str], require_checksum: bool) -> KeyFormat {
        KeyFormat::new(&KeysConfig {
            prefix: "kw".to_owned(),
            environments: envs.iter().map(|e| (*e).to_owned()).collect(),
            require_checksum,
            ..KeysConfig::default()
        })
    }

    fn live_test() -> KeyFormat {
        format(&["live", "test"], true)
    }

    // Expected values from Python's zlib, e.g.:
    //   python3 -c 'import zlib; print(zlib.crc32(b"kw_live_" + b"a"*32))'   # 2815394214
    // and base62 via `b62` in /work/shared/bench/lib/gen_keys.py.
    #[test]
    fn checksum_matches_python_zlib_crc32_in_base62() {
        assert_eq!(crc32fast::hash(format!("kw_live_{}", "a".repeat(32)).as_bytes()), 2815394214);
        assert_eq!(checksum(&format!("kw_live_{}", "a".repeat(32))), "34X6e6");
        assert_eq!(checksum(&format!("kw_test_{}", "0".repeat(32))), "2IsIbM");
        assert_eq!(checksum(&format!("kw_{}", "Z".repeat(32))), "1cUN6j");
        assert_eq!(checksum("spoo_abcdefghijklmnopqrstuvwxyz012345"), "3EH0mi");
        // CRC 10046564 < 62^4: two leading zeros of padding.
        assert_eq!(checksum("kw_live_00000000000000000000000000000363"), "00g9ZM");
    }

    #[test]
    fn base62_is_most_significant_first_and_zero_padded_to_six() {
        assert_eq!(&base62_6(0), b"000000");
        assert_eq!(&base62_6(61), b"00000z");
        assert_eq!(&base62_6(62), b"000010");
        assert_eq!(&base62_6(u32::MAX), b"4gfFC3");
    }

    // Minted by the benchmark's generator (gen_keys.make_key) with
    //   python3 -c 'import random, gen_keys as g; r = random.Random(7); print(g.make_key(r), g.make_key(r), g.make_key(r, env="test"))'
    // run in /work/shared/bench/lib.
    #[test]
    fn keys_from_the_benchmark_generator_parse() {
        let f = live_test();
        for (key, env) in [
            ("kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO2", "live"),
            ("kw_live_eby3abP3E2Zs8IQ9Y7aJZqhB6baeCN6Z2vOlnx", "live"),
            ("kw_test_j4a3dDVhYRnKTbxTNJFoBinF5aJXVuLk0eN7Dr", "test"),
        ] {
            assert_eq!(f.parse(key), Ok(ParsedKey { key, env: Some(env) }), "{key}");
        }
    }

    #[test]
    fn generated_keys_parse_with_their_environment() {
        let f = live_test();
        for env in ["live", "test"] {
            let key = f.generate(Some(env)).unwrap();
            assert!(key.starts_with(&format!("kw_{env}_")));
            assert_eq!(key.len(), 3 + env.len() + 1 + 38);
            assert_eq!(f.parse(&key).unwrap().env, Some(env));
        }
    }

    #[test]
    fn flipping_any_char_of_random_or_checksum_is_malformed() {
        let f = live_test();
        let key = f.generate(Some("live")).unwrap();
        let start = "kw_live_".len();
        for i in start..key.len() {
            let mut bytes = key.clone().into_bytes();
            // Another base62 digit, so only the checksum can catch it.
            bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            let flipped = String::from_utf8(bytes).unwrap();
            assert_eq!(f.parse(&flipped), Err(Malformed), "position {i}: {flipped}");
        }
    }

    #[test]
    fn wrong_prefix_env_length_or_alphabet_is_malformed() {
        let f = live_test();
        let good = "kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO2";
        assert!(f.parse(good).is_ok());
        let tail = &good["kw_live_".len()..];
        let body_with = |pre: &str| {
            let body = format!("{pre}{}", &tail[..RANDOM_LEN]);
            let sum = checksum(&body);
            format!("{body}{sum}")
        };
        // Correct checksums, wrong shape: the checksum alone doesn't make a key.
        for bad in [
            body_with("xx_live_"),
            body_with("kw_prod_"),
            body_with("KW_live_"),
            body_with("kw_LIVE_"),
            body_with("kw_"),
            body_with("kw_live"),
            body_with("kwlive_"),
            body_with("kw_live__"),
        ] {
            assert_eq!(f.parse(&bad), Err(Malformed), "{bad}");
        }
        // Lengths.
        assert_eq!(f.parse(&good[..good.len() - 1]), Err(Malformed));
        assert_eq!(f.parse(&format!("{good}0")), Err(Malformed));
        assert_eq!(f.parse(""), Err(Malformed));
        assert_eq!(f.parse(&"a".repeat(300)), Err(Malformed));
        // Non-base62 characters in the random part (checksum recomputed).
        for c in ['-', '_', '+', '/', '=', ' ', 'é'] {
            let body = format!("kw_live_{}{}", &tail[..RANDOM_LEN - 1], c);
            let bad = format!("{body}{}", checksum(&body));
            assert_eq!(f.parse(&bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn env_less_format_has_no_env_part() {
        let f = format(&[], true);
        let key = f.generate(None).unwrap();
        assert_eq!(key.len(), 3 + 38);
        assert_eq!(f.parse(&key).unwrap().env, None);
        // An env-carrying key is not of this format, and vice versa.
        assert_eq!(f.parse("kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO2"), Err(Malformed));
        assert_eq!(live_test().parse(&key), Err(Malformed));
    }

    #[test]
    fn generate_refuses_environments_that_are_not_configured() {
        assert!(matches!(
            live_test().generate(Some("prod")),
            Err(KeyFormatError::UnknownEnvironment { .. })
        ));
        assert!(matches!(
            live_test().generate(None),
            Err(KeyFormatError::EnvironmentRequired { .. })
        ));
        assert!(matches!(
            format(&[], true).generate(Some("live")),
            Err(KeyFormatError::NoEnvironments { .. })
        ));
    }

    #[test]
    fn without_require_checksum_any_visible_ascii_key_is_accepted() {
        let f = format(&["live", "test"], false);
        assert_eq!(f.parse("legacy-key-123"), Ok(ParsedKey { key: "legacy-key-123", env: None }));
        // Our own keys still report their environment.
        let key = "kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO2";
        assert_eq!(f.parse(key).unwrap().env, Some("live"));
        // A key of our shape with a bad checksum is just a legacy key.
        let bad = "kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO3";
        assert_eq!(f.parse(bad).unwrap().env, None);
        assert!(f.parse(&"x".repeat(256)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(257),
            "has space".to_owned(),
            "tab\there".to_owned(),
            "nul\0".to_owned(),
            "del\x7f".to_owned(),
            "clé".to_owned(),
        ] {
            assert_eq!(f.parse(&bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_thousand_generated_keys_are_distinct_and_base62() {
        let f = live_test();
        let keys: HashSet<String> = (0..1000).map(|_| f.generate(Some("live")).unwrap()).collect();
        assert_eq!(keys.len(), 1000);
        for key in &keys {
            let tail = &key["kw_live_".len()..];
            assert!(tail.bytes().all(|b| ALPHABET.contains(&b)), "{key}");
        }
    }

    /// Replays fixed bytes, to drive the sampler through its rejection path.
    struct Replay(Vec<u8>, usize);

    impl rand::RngCore for Replay {
        fn next_u32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.fill_bytes(&mut b);
            u32::from_le_bytes(b)
        }
        fn next_u64(&mut self) -> u64 {
            let mut b = [0u8; 8];
            self.fill_bytes(&mut b);
            u64::from_le_bytes(b)
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for b in dst {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
        }
    }

    #[test]
    fn bytes_at_or_above_248_are_rejected_so_digits_are_unbiased() {
        let mut rng = Replay(vec![255, 248, 0, 61, 62, 247, 249, 123], 0);
        let mut out = String::new();
        push_base62(&mut rng, &mut out, 5).unwrap();
        // 255 and 248 skipped; 0→'0', 61→'z', 62→'0', 247→'z', 249 skipped, 123→'z'.
        assert_eq!(out, "0z0zz");
        // A source of only rejectable bytes for the first buffer still completes.
        let mut rng = Replay([vec![250; 64], vec![10; 64]].concat(), 0);
        let mut out = String::new();
        push_base62(&mut rng, &mut out, 3).unwrap();
        assert_eq!(out, "AAA");
    }

    #[test]
    fn key_ids_are_key_underscore_and_twenty_base62() {
        let ids: HashSet<String> = (0..100).map(|_| new_key_id()).collect();
        assert_eq!(ids.len(), 100);
        for id in &ids {
            let rest = id.strip_prefix("key_").unwrap();
            assert_eq!(rest.len(), 20);
            assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn display_prefix_is_the_first_twelve_characters() {
        assert_eq!(
            display_prefix("kw_live_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7yEe3mFFO2"),
            "kw_live_Ky9P"
        );
        assert_eq!(display_prefix("short"), "short");
    }
}
