//! The human summary `keyward check-config` prints (SPEC §1): what keyward
//! will listen on and protect, which store and plans it uses, and the route
//! table one line per route. Never prints a secret: Redis passwords are
//! masked, and secrets are only ever named by their environment variable.

use std::fmt::Write as _;

use super::{format_duration, redact_url, AuthMode, Config, RouteConfig, StoreKind};

pub(super) fn render(config: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_summary(config, &mut out);
    out
}

fn write_summary(c: &Config, out: &mut String) -> std::fmt::Result {
    writeln!(out, "config: {}", c.source.display())?;
    let tls = match &c.tls {
        Some(tls) => format!("tls cert {}", tls.cert.display()),
        None => "plain http".to_owned(),
    };
    writeln!(out, "listen: {} ({tls})", c.listen)?;
    writeln!(
        out,
        "upstream: {} (connect timeout {}, request timeout {})",
        c.upstream.url,
        format_duration(c.upstream.connect_timeout),
        format_duration(c.upstream.request_timeout),
    )?;
    writeln!(out, "admin: {} (/metrics, /healthz, /readyz)", c.admin.listen)?;
    writeln!(out, "mode: {}", c.mode.as_str())?;

    let store = &c.store;
    let location = match store.kind {
        StoreKind::Redis => match &store.redis.url {
            Some(url) => redact_url(url),
            None => {
                let nodes: Vec<String> =
                    store.redis.cluster_nodes.iter().map(|n| redact_url(n)).collect();
                format!("cluster [{}]", nodes.join(" "))
            }
        },
        StoreKind::Memory => match &store.memory.keys_file {
            Some(file) => format!("keys file {}", file.display()),
            None => "no keys file (every key is unknown)".to_owned(),
        },
    };
    writeln!(
        out,
        "store: {} {location} (failure mode {}, stale ttl {})",
        store.kind.as_str(),
        store.failure_mode.as_str(),
        format_duration(store.stale_ttl),
    )?;
    let envs = if c.keys.environments.is_empty() {
        String::new()
    } else {
        format!("{{{}}}_", c.keys.environments.join("|"))
    };
    let sources: Vec<&str> = c.keys.sources.iter().map(|s| s.as_str()).collect();
    writeln!(out, "keys: {}_{envs}... from {}", c.keys.prefix, sources.join(", "))?;
    if let Some(jwt) = &c.jwt {
        let method = match (&jwt.hs256_secret_env, &jwt.jwks_file) {
            (Some(env), _) => format!("HS256 secret from ${env}"),
            (None, Some(file)) => format!("JWKS {}", file.display()),
            (None, None) => "no key".to_owned(),
        };
        writeln!(out, "jwt: {method}")?;
    }
    if let Some(signing) = &c.identity.signing {
        writeln!(
            out,
            "identity signing: {} with secret from ${}",
            signing.header, signing.secret_env
        )?;
    }
    if !c.trusted_proxies.is_empty() {
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        writeln!(out, "trusted proxies: {}", nets.join(", "))?;
    }
    if let Some(hosts) = &c.allowed_hosts {
        writeln!(out, "allowed hosts: {}", hosts.join(", "))?;
    }
    if let Some(cors) = &c.cors {
        let routes =
            if cors.routes.is_empty() { "every route".to_owned() } else { cors.routes.join(" ") };
        writeln!(out, "cors: origins {} for {routes}", cors.allowed_origins.join(" "))?;
    }
    if c.management_api.enabled {
        writeln!(out, "management api: {}", c.management_api.path_prefix)?;
    } else {
        writeln!(out, "management api: off")?;
    }

    writeln!(out, "plans:")?;
    let width = c.plans.keys().map(String::len).max().unwrap_or(0) + 1;
    for (name, plan) in &c.plans {
        let windows: Vec<String> = plan
            .limits
            .iter()
            .map(|w| {
                let owner = if w.per_owner { " per owner" } else { "" };
                format!("{} per {}{owner}", w.max, format_duration(w.window))
            })
            .collect();
        writeln!(out, "  {:<width$} {}", format!("{name}:"), windows.join(", "))?;
    }
    writeln!(
        out,
        "rate limit: default plan {}, anonymous plan {}, failure mode {}",
        c.rate_limit.default_plan,
        c.rate_limit.anonymous_plan,
        c.rate_limit.failure_mode.as_str(),
    )?;

    writeln!(out, "routes ({}):", c.routes.len())?;
    let methods: Vec<String> = c.routes.iter().map(route_methods).collect();
    let method_width = methods.iter().map(String::len).max().unwrap_or(0);
    let path_width = c.routes.iter().map(|r| r.path.len()).max().unwrap_or(0);
    for (route, methods) in c.routes.iter().zip(&methods) {
        writeln!(
            out,
            "  {methods:<method_width$}  {:<path_width$}  auth={} scopes=[{}] any_scopes=[{}] plan={}",
            route.path,
            route.auth.as_str(),
            route.scopes.join(" "),
            route.any_scopes.join(" "),
            route_plan(c, route),
        )?;
    }
    Ok(())
}

fn route_methods(route: &RouteConfig) -> String {
    match &route.methods {
        Some(methods) => methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
        None => "ANY".to_owned(),
    }
}

/// Which plan limits a request on this route: the route's own, else the
/// key's plan (the default plan for keys naming none), else anonymous.
fn route_plan(c: &Config, route: &RouteConfig) -> String {
    if let Some(limit) = &route.rate_limit {
        return format!("{}(by:{})", limit.plan, limit.by.as_str());
    }
    let keyed = format!("per-key(default:{})", c.rate_limit.default_plan);
    match route.auth {
        AuthMode::Required => keyed,
        AuthMode::Optional => format!("{keyed}|{}", c.rate_limit.anonymous_plan),
        AuthMode::None => format!("{}(by:ip)", c.rate_limit.anonymous_plan),
    }
}
