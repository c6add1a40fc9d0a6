//! `keyward keys …` (SPEC §1): the operator's key tool, over the configured
//! `KeyStore`. A key is printed exactly once, by `create` and `rotate`; only
//! its SHA-256 is stored. Nothing here ever logs a key.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::auth::key::{display_prefix, new_key_id, KeyFormat};
use crate::clock;
use crate::config::{self, is_valid_scope, Config};
use crate::store::time::{format_rfc3339, parse_rfc3339};
use crate::store::{KeyHash, KeyRecord, KeyStore, Store, StoreError};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Mint a key, store its hash, print the key once.
    Create(CreateArgs),
    /// List keys (never a secret).
    List {
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one key's record.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; running replicas stop accepting it within 1 s.
    Revoke { id: String },
    /// Mint a successor with the same attributes; the old key expires after the grace period.
    Rotate {
        id: String,
        /// How long the old key keeps working (`0s`: revoke-like expiry at once).
        #[arg(long, default_value = "0s", value_parser = parse_duration_arg)]
        grace: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Import keys of a legacy API (plain keys or their SHA-256 hex) from a YAML file.
    Import {
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the SHA-256 hex of a key (for the memory store's keys file).
    Hash { key: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub owner: String,
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes, e.g. `jobs:read,jobs:write`.
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// `live` or `test` (one of `keys.environments`); default: the first one.
    #[arg(long)]
    pub env: Option<String>,
    /// Rate-limit plan; default: `rate_limit.default_plan` at request time.
    #[arg(long)]
    pub plan: Option<String>,
    /// Lifetime, e.g. `90d`.
    #[arg(long, value_parser = parse_duration_arg, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// Expiry as RFC 3339, e.g. `2027-01-01T00:00:00Z`.
    #[arg(long)]
    pub expires_at: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// A failure of a `keys` command: exit code 1 (runtime) or 2 (usage).
#[derive(Debug)]
pub struct KeysError {
    pub code: u8,
    pub message: String,
}

fn usage(message: impl Into<String>) -> KeysError {
    KeysError { code: 2, message: message.into() }
}

impl From<StoreError> for KeysError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Invalid(_) => 2,
            _ => 1,
        };
        KeysError { code, message: e.to_string() }
    }
}

/// The `--json` shape of `keys create` / `keys rotate` (SPEC §1).
#[derive(Serialize)]
struct Minted<'a> {
    id: &'a str,
    key: &'a str,
    name: &'a str,
    owner: &'a str,
    scopes: &'a [String],
    env: Option<&'a str>,
    plan: Option<&'a str>,
    created_at: String,
    expires_at: Option<String>,
}

/// A record as listings show it: never a secret.
#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    display_prefix: &'a str,
    name: &'a str,
    owner: &'a str,
    scopes: &'a [String],
    env: Option<&'a str>,
    plan: Option<&'a str>,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
    description: Option<&'a str>,
    status: &'static str,
}

fn listed(r: &KeyRecord, now: u64) -> Listed<'_> {
    Listed {
        id: &r.id,
        display_prefix: &r.display_prefix,
        name: &r.name,
        owner: &r.owner,
        scopes: &r.scopes,
        env: r.env.as_deref(),
        plan: r.plan.as_deref(),
        created_at: format_rfc3339(r.created_at),
        expires_at: r.expires_at.map(format_rfc3339),
        last_used_at: r.last_used_at.map(format_rfc3339),
        revoked_at: r.revoked_at.map(format_rfc3339),
        description: r.description.as_deref(),
        status: r.state(now).as_str(),
    }
}

fn check_scopes(scopes: &[String]) -> Result<(), KeysError> {
    for s in scopes {
        if !is_valid_scope(s) {
            return Err(usage(format!(
                "--scopes: {s:?} is not a valid scope (lowercase letters, digits, _ . - and : separators, like jobs:read)"
            )));
        }
    }
    Ok(())
}

fn check_plan(config: &Config, plan: Option<&str>) -> Result<(), KeysError> {
    match plan {
        Some(p) if !config.plans.contains_key(p) => {
            let known: Vec<&str> = config.plans.keys().map(String::as_str).collect();
            Err(usage(format!("--plan: unknown plan {p:?}; known plans: {}", known.join(", "))))
        }
        _ => Ok(()),
    }
}

/// Runs one `keys` subcommand against `store`; output goes to stdout.
pub async fn run(config: &Config, store: &Store, cmd: KeysCommand) -> Result<(), KeysError> {
    if let KeysCommand::Hash { key } = &cmd {
        println!("{}", KeyHash::of(key).to_hex());
        return Ok(());
    }
    store.wait_until_up(Duration::from_secs(5)).await?;
    let format = KeyFormat::new(&config.keys);
    let now = clock::unix_seconds();
    match cmd {
        KeysCommand::Hash { .. } => Ok(()),
        KeysCommand::Create(a) => {
            check_scopes(&a.scopes)?;
            check_plan(config, a.plan.as_deref())?;
            let env = match (&a.env, config.keys.environments.first()) {
                (Some(e), _) => Some(e.clone()),
                (None, first) => first.cloned(),
            };
            let expires_at = match (a.expires_in, &a.expires_at) {
                (Some(d), _) => Some(now + d.as_secs()),
                (None, Some(s)) => Some(parse_rfc3339(s).ok_or_else(|| {
                    usage(format!(
                        "--expires-at: {s:?} is not an RFC 3339 time like 2027-01-01T00:00:00Z"
                    ))
                })?),
                (None, None) => None,
            };
            if expires_at.is_some_and(|t| t <= now) {
                return Err(usage("--expires-at: the expiry is in the past"));
            }
            let key = format.generate(env.as_deref()).map_err(|e| usage(format!("--env: {e}")))?;
            let record = KeyRecord {
                id: new_key_id(),
                name: a.name,
                owner: a.owner,
                env,
                scopes: a.scopes,
                plan: a.plan,
                created_at: now,
                expires_at,
                revoked_at: None,
                description: a.description,
                display_prefix: display_prefix(&key),
                last_used_at: None,
            };
            store.insert(&KeyHash::of(&key), &record).await?;
            tracing::info!(event = "key.created", key_id = %record.id, owner = %record.owner, display_prefix = %record.display_prefix, "key.created");
            print_minted(&key, &record, a.json);
            Ok(())
        }
        KeysCommand::List { owner, json } => {
            let all = store.list(owner.as_deref()).await?;
            let rows: Vec<Listed<'_>> = all.iter().map(|(_, r)| listed(r, now)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            } else {
                print_table(&rows);
            }
            Ok(())
        }
        KeysCommand::Show { id, json } => {
            let (_, r) = store
                .get_by_id(&id)
                .await?
                .ok_or_else(|| usage(format!("no key with id {id:?}")))?;
            let row = listed(&r, now);
            if json {
                println!("{}", serde_json::to_string_pretty(&row).unwrap_or_default());
            } else {
                print_record(&row);
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            let r = store.revoke(&id, now).await?;
            tracing::info!(event = "key.revoked", key_id = %r.id, owner = %r.owner, display_prefix = %r.display_prefix, "key.revoked");
            println!("revoked {} ({}, owner {})", r.id, r.display_prefix, r.owner);
            Ok(())
        }
        KeysCommand::Rotate { id, grace, json } => {
            let (_, old) = store
                .get_by_id(&id)
                .await?
                .ok_or_else(|| usage(format!("no key with id {id:?}")))?;
            if old.state(now) != crate::store::KeyState::Active {
                return Err(usage(format!(
                    "key {id} is {}; only active keys can be rotated",
                    old.state(now).as_str()
                )));
            }
            let key = format.generate(old.env.as_deref()).map_err(|e| usage(e.to_string()))?;
            let successor = KeyRecord {
                id: new_key_id(),
                created_at: now,
                display_prefix: display_prefix(&key),
                last_used_at: None,
                revoked_at: None,
                ..old.clone()
            };
            store.insert(&KeyHash::of(&key), &successor).await?;
            let old_expiry = now + grace.as_secs();
            let keep = old.expires_at.is_some_and(|t| t <= old_expiry);
            if !keep {
                store.set_expires_at(&old.id, Some(old_expiry)).await?;
            }
            tracing::info!(event = "key.rotated", key_id = %old.id, successor_id = %successor.id, owner = %old.owner, grace_s = grace.as_secs(), "key.rotated");
            print_minted(&key, &successor, json);
            if !json {
                println!(
                    "old key {} expires {}",
                    old.id,
                    format_rfc3339(old_expiry.min(old.expires_at.unwrap_or(u64::MAX)))
                );
            }
            Ok(())
        }
        KeysCommand::Import { file } => import(config, store, &format, &file, now).await,
    }
}

fn print_minted(key: &str, r: &KeyRecord, json: bool) {
    if json {
        let m = Minted {
            id: &r.id,
            key,
            name: &r.name,
            owner: &r.owner,
            scopes: &r.scopes,
            env: r.env.as_deref(),
            plan: r.plan.as_deref(),
            created_at: format_rfc3339(r.created_at),
            expires_at: r.expires_at.map(format_rfc3339),
        };
        println!("{}", serde_json::to_string(&m).unwrap_or_default());
    } else {
        println!("{key}");
        println!();
        println!("id:      {}", r.id);
        println!("owner:   {}", r.owner);
        println!("scopes:  {}", r.scopes.join(" "));
        println!("expires: {}", r.expires_at.map(format_rfc3339).unwrap_or_else(|| "never".into()));
        println!(
            "This is the only time the key is shown. Store it now; keyward keeps only its hash."
        );
    }
}

fn print_table(rows: &[Listed<'_>]) {
    println!(
        "{:<24} {:<13} {:<20} {:<16} {:<8} {:<8} {:<20} {:<20} {:<20} SCOPES",
        "ID", "PREFIX", "NAME", "OWNER", "PLAN", "STATUS", "CREATED", "EXPIRES", "LAST USED"
    );
    for r in rows {
        println!(
            "{:<24} {:<13} {:<20} {:<16} {:<8} {:<8} {:<20} {:<20} {:<20} {}",
            r.id,
            r.display_prefix,
            r.name,
            r.owner,
            r.plan.unwrap_or("-"),
            r.status,
            r.created_at,
            r.expires_at.as_deref().unwrap_or("never"),
            r.last_used_at.as_deref().unwrap_or("never"),
            r.scopes.join(" ")
        );
    }
}

fn print_record(r: &Listed<'_>) {
    println!("id:             {}", r.id);
    println!("display prefix: {}", r.display_prefix);
    println!("name:           {}", r.name);
    println!("owner:          {}", r.owner);
    println!("scopes:         {}", r.scopes.join(" "));
    println!("env:            {}", r.env.unwrap_or("-"));
    println!("plan:           {}", r.plan.unwrap_or("(default)"));
    println!("status:         {}", r.status);
    println!("created:        {}", r.created_at);
    println!("expires:        {}", r.expires_at.as_deref().unwrap_or("never"));
    println!("last used:      {}", r.last_used_at.as_deref().unwrap_or("never"));
    if let Some(t) = &r.revoked_at {
        println!("revoked:        {t}");
    }
    if let Some(d) = r.description {
        println!("description:    {d}");
    }
}

/// The `keys import` file: legacy keys, as plain text (hashed here, never
/// stored) or as their SHA-256 hex.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportFile {
    #[serde(default)]
    defaults: ImportDefaults,
    keys: Vec<ImportEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportDefaults {
    owner: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    plan: Option<String>,
    env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportEntry {
    key: Option<String>,
    sha256: Option<String>,
    id: Option<String>,
    name: Option<String>,
    owner: Option<String>,
    scopes: Option<Vec<String>>,
    plan: Option<String>,
    env: Option<String>,
    expires_at: Option<String>,
    description: Option<String>,
    display_prefix: Option<String>,
}

async fn import(
    config: &Config,
    store: &Store,
    format: &KeyFormat,
    file: &std::path::Path,
    now: u64,
) -> Result<(), KeysError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("{}: cannot read: {e}", file.display())))?;
    let parsed: ImportFile = serde_yaml::from_str(&text).map_err(|e| {
        let at = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
        usage(format!("{}{at}: {e}", file.display()))
    })?;
    // Validate everything before writing anything: a bad entry loses nothing.
    let mut planned = Vec::with_capacity(parsed.keys.len());
    let mut not_keyward = 0usize;
    for (i, e) in parsed.keys.into_iter().enumerate() {
        let at = |field: &str, msg: String| {
            usage(format!("{}: keys[{i}].{field}: {msg}", file.display()))
        };
        let (hash, prefix) = match (&e.key, &e.sha256) {
            (Some(k), None) => {
                if format.parse(k).is_err() {
                    not_keyward += 1;
                }
                (KeyHash::of(k), display_prefix(k))
            }
            (None, Some(h)) => {
                let hash = KeyHash::from_hex(h)
                    .ok_or_else(|| at("sha256", "expected 64 hex digits".into()))?;
                (hash, e.display_prefix.clone().unwrap_or_else(|| format!("sha256:{}", &h[..8])))
            }
            _ => return Err(at("key", "give exactly one of key or sha256".into())),
        };
        let owner = e
            .owner
            .or_else(|| parsed.defaults.owner.clone())
            .ok_or_else(|| at("owner", "missing (set it here or in defaults.owner)".into()))?;
        let scopes = e.scopes.unwrap_or_else(|| parsed.defaults.scopes.clone());
        check_scopes(&scopes).map_err(|k| at("scopes", k.message))?;
        let plan = e.plan.or_else(|| parsed.defaults.plan.clone());
        check_plan(config, plan.as_deref()).map_err(|k| at("plan", k.message))?;
        let expires_at = match &e.expires_at {
            Some(s) => Some(
                parse_rfc3339(s)
                    .ok_or_else(|| at("expires_at", format!("{s:?} is not RFC 3339")))?,
            ),
            None => None,
        };
        let record = KeyRecord {
            id: e.id.unwrap_or_else(new_key_id),
            name: e.name.unwrap_or_else(|| "imported".into()),
            owner,
            env: e.env.or_else(|| parsed.defaults.env.clone()),
            scopes,
            plan,
            created_at: now,
            expires_at,
            revoked_at: None,
            description: e.description,
            display_prefix: prefix,
            last_used_at: None,
        };
        planned.push((hash, record));
    }
    let mut imported = 0usize;
    for (hash, record) in &planned {
        match store.insert(hash, record).await {
            Ok(()) => imported += 1,
            Err(StoreError::Conflict(m)) => eprintln!("skipped {}: {m}", record.id),
            Err(e) => return Err(e.into()),
        }
    }
    println!("imported {imported} of {} keys", planned.len());
    if not_keyward > 0 && config.keys.require_checksum {
        eprintln!(
            "warning: {not_keyward} imported keys are not in keyward's format; they are refused as malformed_key \
             until keys.require_checksum is false"
        );
    }
    Ok(())
}
