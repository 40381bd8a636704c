//! The commands that talk to a running gateway's admin API: `signgate
//! webhooks list|retry` (which falls back to the inbox on disk when no
//! gateway answers), `signgate guard release`, `signgate log-level` and
//! `signgate route list|disable|enable`. They read the admin address and
//! `admin.token_file` from the configuration and send the token as
//! `Authorization: Bearer`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Full};

use crate::config::Config;

/// What `signgate webhooks` should do.
pub enum WebhooksAction {
    List {
        failed: bool,
    },
    /// `None`: every failed event.
    Retry {
        id: Option<u64>,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprint!("{}: {errors}", path.display());
        ExitCode::FAILURE
    })
}

/// `signgate webhooks list|retry`: through the running gateway's admin
/// listener when it answers (the inbox is locked by the running process),
/// else directly on the inbox under `[state].dir`.
pub async fn webhooks(path: &Path, action: WebhooksAction) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (method, uri) = match &action {
        WebhooksAction::List { failed } => (
            Method::GET,
            format!("/webhooks{}", if *failed { "?failed=true" } else { "" }),
        ),
        WebhooksAction::Retry { id: Some(id) } => (Method::POST, format!("/webhooks/retry?id={id}")),
        WebhooksAction::Retry { id: None } => (Method::POST, "/webhooks/retry?all_failed=true".to_string()),
    };
    let result = match call(&config, method, &uri, Bytes::new()).await {
        Some(Ok(v)) => Ok(match v["events"].as_array() {
            Some(events) => render_events(events),
            None => format!("requeued {}\n", v["requeued"]),
        }),
        Some(Err(e)) => Err(e),
        None => webhooks_direct(&config.state.dir, &action),
    };
    finish("webhooks", result)
}

/// `signgate guard release ROUTE REF`: release a reference the duplicate
/// guard holds (audited by the gateway).
pub async fn guard_release(path: &Path, route: &str, reference: &str) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = serde_json::json!({"route": route, "reference": reference}).to_string();
    let result = match call(&config, Method::POST, "/guard/release", Bytes::from(body)).await {
        Some(Ok(v)) => Ok(format!(
            "released {} claim(s) on {} in route {}\n",
            v["released"],
            v["reference"].as_str().unwrap_or(reference),
            route
        )),
        Some(Err(e)) => Err(e),
        None => Err("no gateway answers on the admin address; the guard lives in the running gateway".into()),
    };
    finish("guard release", result)
}

/// `signgate log-level [FILTER]`: print the running gateway's log filter,
/// or replace it (`PUT /log-level`).
pub async fn log_level(path: &Path, filter: Option<&str>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (method, body) = match filter {
        Some(f) => (Method::PUT, Bytes::from(f.to_string())),
        None => (Method::GET, Bytes::new()),
    };
    let result = match call(&config, method, "/log-level", body).await {
        Some(Ok(v)) => Ok(match v["previous"].as_str() {
            Some(previous) => format!("{} (was {previous})\n", v["filter"].as_str().unwrap_or_default()),
            None => format!("{}\n", v["filter"].as_str().unwrap_or_default()),
        }),
        Some(Err(e)) => Err(e),
        None => Err("no gateway answers on the admin address".into()),
    };
    finish("log-level", result)
}

/// `signgate route disable|enable NAME [--reason TEXT]`: switch a route of
/// the running gateway (audited by the gateway). Warnings (the change was
/// not stored, or not shared with the fleet yet) go to stderr; the exit
/// status is 0 once the change holds.
pub async fn route_switch(path: &Path, name: &str, disable: bool, reason: Option<&str>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let what = if disable { "route disable" } else { "route enable" };
    let action = if disable { "disable" } else { "enable" };
    // Route names are 1-64 of A-Z a-z 0-9 - _ . (as the configuration checks).
    let plain =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain {
        return finish(
            what,
            Err(format!("{name:?} is not a route name (1-64 of A-Z a-z 0-9 - _ .)")),
        );
    }
    let body = match reason {
        Some(r) => serde_json::json!({ "reason": r }).to_string(),
        None => String::new(),
    };
    let uri = format!("/routes/{name}/{action}");
    let result = match call(&config, Method::POST, &uri, Bytes::from(body)).await {
        Some(Ok(v)) => {
            for w in v["warnings"].as_array().into_iter().flatten() {
                eprintln!("signgate {what}: warning: {}", w.as_str().unwrap_or_default());
            }
            let state = v["state"].as_str().unwrap_or("?");
            Ok(if v["changed"] == true {
                format!(
                    "route {name} {state}{}\n",
                    v["reason"]
                        .as_str()
                        .map(|r| format!(" (reason: {r})"))
                        .unwrap_or_default()
                )
            } else {
                format!("route {name} was already {state}{}\n", provenance(&v))
            })
        }
        Some(Err(e)) => Err(e),
        None => {
            Err("no gateway answers on the admin address; the switches are changed through the running gateway".into())
        }
    };
    finish(what, result)
}

/// `signgate route list`: every configured route, enabled or disabled, with
/// when, by whom and why (tab-separated: name, state, since, by, reason).
pub async fn route_list(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match call(&config, Method::GET, "/routes", Bytes::new()).await {
        Some(Ok(v)) => {
            let mut out = String::new();
            let row = |r: &serde_json::Value| {
                let by = match (r["by"].as_str(), r["instance"].as_str()) {
                    (Some(b), Some(i)) => format!("{b} ({i})"),
                    (Some(b), None) => b.to_string(),
                    _ => "-".into(),
                };
                format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    r["name"].as_str().unwrap_or("-"),
                    r["state"].as_str().unwrap_or("-"),
                    r["since"].as_str().unwrap_or("-"),
                    by,
                    r["reason"].as_str().unwrap_or("-"),
                )
            };
            for r in v["routes"].as_array().into_iter().flatten() {
                out.push_str(&row(r));
            }
            for r in v["not_configured"].as_array().into_iter().flatten() {
                out.push_str(&format!("# not configured: {}", row(r)));
            }
            Ok(out)
        }
        Some(Err(e)) => Err(e),
        None => Err("no gateway answers on the admin address".into()),
    };
    finish("route list", result)
}

/// ` since T by B (reason: R)` of a route's last change, if it has one.
fn provenance(v: &serde_json::Value) -> String {
    let Some(since) = v["since"].as_str() else {
        return String::new();
    };
    let mut out = format!(" since {since} by {}", v["by"].as_str().unwrap_or("-"));
    if let Some(i) = v["instance"].as_str() {
        out.push_str(&format!(" ({i})"));
    }
    if let Some(r) = v["reason"].as_str() {
        out.push_str(&format!(" (reason: {r})"));
    }
    out
}

fn finish(what: &str, result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("signgate {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One admin API call; `None` when no gateway answers on the admin address.
async fn call(config: &Config, method: Method, uri: &str, body: Bytes) -> Option<Result<serde_json::Value, String>> {
    let addr = config.admin.addr?;
    let token = match &config.admin.token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => return Some(Err(format!("admin.token_file {}: {e}", p.display()))),
        },
        None => None,
    };
    let (status, bytes) = match send(addr, method, uri, token.as_deref(), body).await? {
        Ok(r) => r,
        Err(e) => return Some(Err(format!("admin listener at {addr}: {e}"))),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Some(if status.is_success() {
        Ok(v)
    } else {
        Err(format!(
            "admin listener answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ))
    })
}

async fn send(
    addr: SocketAddr,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Bytes,
) -> Option<Result<(StatusCode, Bytes), String>> {
    let stream = tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(body)).ok()?;
    Some(
        async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok((status, bytes))
        }
        .await,
    )
}

fn render_events(events: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&format!(
            "{}\t{}\t{}\tattempts={}\t{}\t{}\n",
            e["id"],
            e["webhook"].as_str().unwrap_or("-"),
            e["state"].as_str().unwrap_or("-"),
            e["attempts"],
            e["key"].as_str().unwrap_or("-"),
            e["last_error"].as_str().unwrap_or(""),
        ));
    }
    if events.is_empty() {
        out.push_str("no events\n");
    }
    out
}

fn webhooks_direct(dir: &Path, action: &WebhooksAction) -> Result<String, String> {
    let store = crate::webhook::store::Store::open(dir).map_err(|e| e.to_string())?;
    match action {
        WebhooksAction::List { failed } => {
            let events = store.list(*failed).map_err(|e| e.to_string())?;
            let rows: Vec<serde_json::Value> = events.iter().map(crate::webhook::store::summary).collect();
            Ok(render_events(&rows))
        }
        WebhooksAction::Retry { id } => {
            let n = store.retry(*id).map_err(|e| e.to_string())?;
            Ok(format!("requeued {n} (delivered when the gateway runs)\n"))
        }
    }
}
