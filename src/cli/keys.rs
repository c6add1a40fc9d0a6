//! `keyward keys …` (SPEC §1): the operator's key tool, over the configured
//! `KeyStore`. A key is printed exactly once, by `create` and `rotate`; only
//! its SHA-256 is stored. Nothing here ever logs a key.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::auth::key::{display_prefix, new_key_id, KeyFormat};
use crate::clock;
use crate::config::{self, Config};
use crate::store::lifecycle::{self, Actor, KeyView, LifecycleError, Minted, NewKey};
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

/// A lifecycle refusal as a CLI error, naming the flag at fault.
fn refused(e: LifecycleError) -> KeysError {
    match e {
        LifecycleError::Invalid(i) => usage(format!("--{}: {}", flag_of(i.field), i.message)),
        LifecycleError::NotActive { .. } => usage(e.to_string()),
        LifecycleError::Store(e) => e.into(),
    }
}

/// The flag that sets a `NewKey` field.
fn flag_of(field: &str) -> String {
    field.replace('_', "-")
}

fn check_scopes(scopes: &[String]) -> Result<(), KeysError> {
    lifecycle::check_scopes(scopes).map_err(|m| usage(format!("--scopes: {m}")))
}

fn check_plan(config: &Config, plan: Option<&str>) -> Result<(), KeysError> {
    lifecycle::check_plan(config, plan).map_err(|m| usage(format!("--plan: {m}")))
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
            let expires_at = match (a.expires_in, &a.expires_at) {
                (Some(d), _) => Some(now + d.as_secs()),
                (None, Some(s)) => Some(parse_rfc3339(s).ok_or_else(|| {
                    usage(format!(
                        "--expires-at: {s:?} is not an RFC 3339 time like 2027-01-01T00:00:00Z"
                    ))
                })?),
                (None, None) => None,
            };
            let mut new = NewKey {
                name: a.name,
                owner: a.owner,
                scopes: a.scopes,
                env: a.env,
                plan: a.plan,
                expires_at,
                description: a.description,
            };
            lifecycle::check_new(config, &mut new, now).map_err(|i| refused(i.into()))?;
            let minted =
                lifecycle::create(store, &format, new, now, Actor::Cli).await.map_err(refused)?;
            print_minted(&minted, a.json);
            Ok(())
        }
        KeysCommand::List { owner, json } => {
            let all = store.list(owner.as_deref()).await?;
            let rows: Vec<KeyView<'_>> = all.iter().map(|(_, r)| lifecycle::view(r, now)).collect();
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
            let mut row = lifecycle::view(&r, now);
            // Counts not yet flushed by a running keyward are not included.
            row.usage = Some(lifecycle::usage(store, &r.id, now, &[]).await?);
            if json {
                println!("{}", serde_json::to_string_pretty(&row).unwrap_or_default());
            } else {
                print_record(&row);
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            let r = lifecycle::revoke(store, &id, now, Actor::Cli).await?;
            println!("revoked {} ({}, owner {})", r.id, r.display_prefix, r.owner);
            Ok(())
        }
        KeysCommand::Rotate { id, grace, json } => {
            let (_, old) = store
                .get_by_id(&id)
                .await?
                .ok_or_else(|| usage(format!("no key with id {id:?}")))?;
            let rotated = lifecycle::rotate(store, &format, &old, grace.as_secs(), now, Actor::Cli)
                .await
                .map_err(refused)?;
            print_minted(&rotated.successor, json);
            if !json {
                println!("old key {} expires {}", old.id, format_rfc3339(rotated.old_expires_at));
            }
            Ok(())
        }
        KeysCommand::Import { file } => import(config, store, &format, &file, now).await,
    }
}

fn print_minted(minted: &Minted, json: bool) {
    if json {
        println!("{}", serde_json::to_string(&minted.view()).unwrap_or_default());
    } else {
        let r = &minted.record;
        println!("{}", minted.key);
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

fn print_table(rows: &[KeyView<'_>]) {
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

fn print_record(r: &KeyView<'_>) {
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
    if let Some(days) = &r.usage {
        let shown: Vec<String> =
            days.iter().map(|d| format!("{} {}", &d.date[5..], d.requests)).collect();
        println!("requests/day:   {} (UTC, last {} days)", shown.join(", "), days.len());
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
