//! Process logging: one `tracing` subscriber writing to stderr, set up once
//! the configuration has loaded (a configuration that does not load is
//! reported on stderr as plain text before any of this exists).
//!
//! - **Level**: `SIGNGATE_LOG`, else `RUST_LOG`, else `info`, in
//!   `EnvFilter` syntax (`info`, `signgate=debug,hyper=warn`…). The filter
//!   sits behind a `reload` layer: [`Logging::filter`] hands out the handle
//!   that can change it while the gateway runs.
//! - **Format**: `[log] format = "text"` (default) or `"json"`.
//! - **Colour**: ANSI escapes only when stderr is a terminal and `NO_COLOR` is
//!   unset or empty; never in files, journald or container logs.
//!
//! A JSON line is one object:
//!
//! ```json
//! {"timestamp":"2026-05-01T10:00:00.000000Z","level":"DEBUG","target":"signgate::proxy",
//!  "message":"refused","request_id":"01J…","fields":{"client":"127.0.0.1:5000","code":"no_route"}}
//! ```
//!
//! `request_id` is always a top-level key when the line is about a request,
//! whether the event carries it as a field or runs inside a span that does
//! (the innermost such span wins); the event's other fields are under
//! `fields`, and the spans the event runs in, outermost first, under `spans`
//! (`[{"name":…, field: value…}]`, left out when there are none).

use std::fmt;
use std::io::IsTerminal as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// The level filter when neither variable is set.
pub const DEFAULT_FILTER: &str = "info";
/// The variables read for the filter, first one set wins.
pub const FILTER_VARS: [&str; 2] = ["SIGNGATE_LOG", "RUST_LOG"];
/// The top-level key of a request's id in a JSON line.
pub const REQUEST_ID: &str = "request_id";

/// Changes the level filter of the running process (e.g. `handle.reload(EnvFilter::new("debug"))`).
pub type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// What [`init`] set up.
pub struct Logging {
    filter: FilterHandle,
}

impl Logging {
    /// The handle to the level filter, for a run-time log-level control.
    pub fn filter(&self) -> &FilterHandle {
        &self.filter
    }
}

/// The level filter from the environment, and a note when a variable was
/// set but not valid (it is then ignored in favour of [`DEFAULT_FILTER`]).
pub fn env_filter(get: impl Fn(&str) -> Option<String>) -> (EnvFilter, Option<String>) {
    for var in FILTER_VARS {
        let Some(value) = get(var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return match EnvFilter::try_new(&value) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!(
                    "{var}={value:?} is not a valid log filter ({e}); logging at {DEFAULT_FILTER}"
                )),
            ),
        };
    }
    (EnvFilter::new(DEFAULT_FILTER), None)
}

/// ANSI colour: only on a terminal, and never with `NO_COLOR` set (non-empty).
pub fn use_ansi(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// The subscriber for `format`, writing to `writer`, filtered by `filter`.
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> (impl Subscriber + Send + Sync + 'static, FilterHandle)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + Clone + 'static,
{
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .with_ansi(ansi)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
    });
    let subscriber = tracing_subscriber::registry().with(filter).with(text).with(json);
    (subscriber, handle)
}

/// Install the process-wide subscriber on stderr. Call once, before anything
/// logs; a second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat) -> Logging {
    let (filter, note) = env_filter(|v| std::env::var(v).ok());
    let no_color = std::env::var("NO_COLOR").ok();
    let ansi = use_ansi(std::io::stderr().is_terminal(), no_color.as_deref());
    let (subscriber, handle) = subscriber(format, ansi, filter, std::io::stderr);
    let _ = subscriber.try_init();
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    Logging { filter: handle }
}

/// The JSON event format described in the module documentation.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or(Value::String(String::new()));
        let mut request_id = fields.remove(REQUEST_ID);

        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let mut entry = Map::new();
                entry.insert("name".into(), Value::String(span.name().to_string()));
                let ext = span.extensions();
                if let Some(recorded) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&recorded.fields) {
                        entry.extend(map);
                    }
                }
                spans.push(entry);
            }
        }
        if request_id.is_none() {
            // The innermost span that names one.
            request_id = spans.iter().rev().find_map(|s| s.get(REQUEST_ID).cloned());
        }

        // Written key by key to keep this order (a `Map` would sort them).
        let json = |v: &Value| serde_json::to_string(v).map_err(|_| fmt::Error);
        write!(
            writer,
            "{{\"timestamp\":{},\"level\":{},\"target\":{},\"message\":{}",
            json(&Value::String(timestamp))?,
            json(&Value::String(meta.level().to_string()))?,
            json(&Value::String(meta.target().to_string()))?,
            json(&message)?,
        )?;
        if let Some(id) = request_id {
            write!(writer, ",\"{REQUEST_ID}\":{}", json(&id)?)?;
        }
        write!(writer, ",\"fields\":{}", json(&Value::Object(fields))?)?;
        if !spans.is_empty() {
            let spans = Value::Array(spans.into_iter().map(Value::Object).collect());
            write!(writer, ",\"spans\":{}", json(&spans)?)?;
        }
        writeln!(writer, "}}")
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::String(value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests;
