use std::io::{Read as _, Seek as _};
use std::sync::Arc;

use super::*;

/// Run `f` under a subscriber of `format` writing to a file; the lines written.
fn capture(format: LogFormat, ansi: bool, filter: &str, f: impl FnOnce()) -> Vec<String> {
    let file = Arc::new(tempfile::tempfile().unwrap());
    let sink = file.clone();
    let (subscriber, _handle) = subscriber(format, ansi, EnvFilter::new(filter), move || sink.try_clone().unwrap());
    tracing::subscriber::with_default(subscriber, f);
    let mut text = String::new();
    let mut f = file.try_clone().unwrap();
    f.rewind().unwrap();
    f.read_to_string(&mut text).unwrap();
    text.lines().map(str::to_string).collect()
}

#[test]
fn the_filter_comes_from_signgate_log_then_rust_log() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let shown = |f: EnvFilter| f.to_string();
    assert_eq!(shown(env_filter(env(&[])).0), "info");
    assert_eq!(shown(env_filter(env(&[("RUST_LOG", "warn")])).0), "warn");
    assert_eq!(
        shown(env_filter(env(&[("RUST_LOG", "warn"), ("SIGNGATE_LOG", "debug")])).0),
        "debug"
    );
    assert_eq!(
        shown(env_filter(env(&[("SIGNGATE_LOG", " "), ("RUST_LOG", "error")])).0),
        "error"
    );
    let (f, note) = env_filter(env(&[("SIGNGATE_LOG", "signgate=loud")]));
    assert_eq!(shown(f), "info");
    assert!(note
        .unwrap()
        .contains("SIGNGATE_LOG=\"signgate=loud\" is not a valid log filter"));
}

#[test]
fn colour_only_on_a_terminal_without_no_color() {
    assert!(use_ansi(true, None));
    assert!(use_ansi(true, Some("")));
    assert!(!use_ansi(true, Some("1")));
    assert!(!use_ansi(false, None));
}

#[test]
fn text_lines_have_no_escapes_unless_asked() {
    let lines = capture(LogFormat::Text, false, "info", || {
        tracing::info!(addr = %"127.0.0.1:1", "signgate listening");
    });
    assert_eq!(lines.len(), 1);
    assert!(!lines[0].contains('\u{1b}'), "{:?}", lines[0]);
    assert!(lines[0].contains("signgate listening addr=127.0.0.1:1"), "{}", lines[0]);
    let coloured = capture(LogFormat::Text, true, "info", || tracing::info!("x"));
    assert!(coloured[0].contains('\u{1b}'));
}

#[test]
fn json_lines_carry_the_documented_keys() {
    let lines = capture(LogFormat::Json, false, "debug", || {
        tracing::debug!(request_id = "rid-1", client = %"127.0.0.1:9", code = "no_route", n = 3u64, ok = true, "refused");
        tracing::info!("plain");
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("{\"timestamp\":\"") && lines[0].contains("\"level\":\"DEBUG\",\"target\":"),
        "keys in the documented order: {}",
        lines[0]
    );
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["level"], "DEBUG");
    assert_eq!(v["target"], module_path!());
    assert_eq!(v["message"], "refused");
    assert_eq!(v[REQUEST_ID], "rid-1");
    assert_eq!(v["fields"]["code"], "no_route");
    assert_eq!(v["fields"]["client"], "127.0.0.1:9");
    assert_eq!(v["fields"]["n"], 3);
    assert_eq!(v["fields"]["ok"], true);
    assert!(v["fields"].get(REQUEST_ID).is_none(), "hoisted, not repeated");
    assert!(v.get("spans").is_none());
    let ts = v["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    let plain: Value = serde_json::from_str(&lines[1]).unwrap();
    assert!(plain.get(REQUEST_ID).is_none());
    assert_eq!(plain["fields"], serde_json::json!({}));
}

#[test]
fn a_request_id_on_a_span_is_hoisted_too() {
    let lines = capture(LogFormat::Json, false, "info", || {
        let outer = tracing::info_span!("conn", peer = "127.0.0.1:1");
        let _o = outer.enter();
        let span = tracing::info_span!("request", request_id = "rid-span");
        let _g = span.enter();
        tracing::info!(route = "kp", "forwarded");
        tracing::info!(request_id = "rid-event", "the event's own id wins");
    });
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v[REQUEST_ID], "rid-span");
    assert_eq!(v["fields"]["route"], "kp");
    assert_eq!(v["spans"][0]["name"], "conn");
    assert_eq!(v["spans"][0]["peer"], "127.0.0.1:1");
    assert_eq!(v["spans"][1]["name"], "request");
    let v: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(v[REQUEST_ID], "rid-event");
}

#[test]
fn the_filter_can_be_changed_at_run_time() {
    let file = Arc::new(tempfile::tempfile().unwrap());
    let sink = file.clone();
    let (subscriber, handle) = subscriber(LogFormat::Json, false, EnvFilter::new("info"), move || {
        sink.try_clone().unwrap()
    });
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!("hidden");
        handle.reload(EnvFilter::new("debug")).unwrap();
        tracing::debug!("shown");
    });
    let mut text = String::new();
    let mut f = file.try_clone().unwrap();
    f.rewind().unwrap();
    f.read_to_string(&mut text).unwrap();
    assert!(!text.contains("hidden") && text.contains("shown"), "{text}");
}
