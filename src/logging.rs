//! The binary's logging: text or JSON lines on standard error, filtered by `RUST_LOG` (default `info`), in colour
//! only on a terminal (never in a file or a pipe, nor with `NO_COLOR` set). `dev` sends its local agents' traffic
//! to a file of its own: everything logged inside an agent's span, and the control plane's lines about requests to
//! the agent API; warnings and errors among them still reach the terminal too. The terminal keeps the control
//! plane's other lines and the banner.

use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use fluxplane_api::config::LogFormat;
use tracing::field::{Field, Visit};
use tracing::{Level, Metadata, span};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter, fmt};

/// The name of the span `dev` runs each local agent in; its `cluster` field names the agent's cluster.
pub const AGENT_SPAN: &str = "agent";

/// The subject of the token `dev` sets its demo up with (registering the agents, writing their configurations):
/// the control plane's lines about those requests go with the agents' traffic too.
pub const DEMO_CALLER: &str = "dev-demo";

/// The span the server opens for each request, its field naming the matched route, and the one naming the caller
/// (recorded once authenticated).
const REQUEST_SPAN: &str = "request";
const ROUTE_FIELD: &str = "route";
const CALLER_FIELD: &str = "caller";
/// Routes of the agent API.
const AGENT_ROUTES: &str = "/agent/";

/// Whether standard error takes colour: a terminal, and `NO_COLOR` unset or empty (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Marks the server's request spans of the agents' traffic (`AgentTraffic` in their extensions): requests to the
/// agent API, and the demo's own requests.
struct MarkAgentRequests;

/// The mark of a request span of the agents' traffic.
struct AgentTraffic;

/// Finds whether a request span's fields make it agents' traffic.
#[derive(Default)]
struct AgentRequest(bool);

impl Visit for AgentRequest {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            ROUTE_FIELD if value.starts_with(AGENT_ROUTES) => self.0 = true,
            CALLER_FIELD if value == DEMO_CALLER => self.0 = true,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), ROUTE_FIELD | CALLER_FIELD) {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

impl MarkAgentRequests {
    fn mark<S>(&self, id: &span::Id, context: &Context<'_, S>, record: impl FnOnce(&mut AgentRequest))
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let Some(span) = context.span(id) else { return };
        if span.name() != REQUEST_SPAN {
            return;
        }
        let mut request = AgentRequest::default();
        record(&mut request);
        if request.0 {
            span.extensions_mut().replace(AgentTraffic);
        }
    }
}

impl<S> Layer<S> for MarkAgentRequests
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &span::Attributes<'_>, id: &span::Id, context: Context<'_, S>) {
        self.mark(id, &context, |request| attributes.record(request));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, context: Context<'_, S>) {
        self.mark(id, &context, |request| values.record(request));
    }
}

/// Whether an event belongs to the agents' traffic: logged inside an agent's span, or inside a request span of the
/// agent API.
fn agents_traffic<S>(context: &Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    context.lookup_current().is_some_and(|current| {
        current
            .scope()
            .any(|span| span.name() == AGENT_SPAN || span.extensions().get::<AgentTraffic>().is_some())
    })
}

/// What the agents' file takes: their traffic (spans always pass, so that each output can name them).
fn to_agents_file<S>(metadata: &Metadata<'_>, context: &Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    metadata.is_span() || agents_traffic(context)
}

/// What the terminal takes beside the agents' file: everything else, and the agents' warnings and errors.
fn to_terminal<S>(metadata: &Metadata<'_>, context: &Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    metadata.is_span() || *metadata.level() <= Level::WARN || !agents_traffic(context)
}

fn output<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = fmt::layer().with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Json => layer.json().flatten_event(true).with_current_span(true).boxed(),
        LogFormat::Text => layer.boxed(),
    }
}

/// Starts logging to standard error; with `agents_log`, the agents' lines go to that file instead (appended, no
/// colour), created with its folder if missing. A second call keeps the first subscriber.
pub fn init(format: LogFormat, agents_log: Option<&Path>) -> anyhow::Result<()> {
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let layers: Vec<Box<dyn Layer<_> + Send + Sync>> = match agents_log {
        None => vec![output(format, std::io::stderr, colour())],
        Some(path) => {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
            }
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            vec![
                MarkAgentRequests.boxed(),
                output(format, std::io::stderr, colour())
                    .with_filter(filter::dynamic_filter_fn(to_terminal))
                    .boxed(),
                output(format, Mutex::new(file), false)
                    .with_filter(filter::dynamic_filter_fn(to_agents_file))
                    .boxed(),
            ]
        }
    };
    let _ = tracing_subscriber::registry().with(env_filter).with(layers).try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing::Instrument;

    /// A writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Kept {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test]
    async fn the_agents_traffic_goes_to_its_own_output_and_the_rest_to_the_terminal() {
        let (terminal, agents) = (Kept::default(), Kept::default());
        let (to_terminal_writer, to_agents_writer) = (terminal.clone(), agents.clone());
        let subscriber = tracing_subscriber::registry().with(vec![
            MarkAgentRequests.boxed(),
            output(LogFormat::Text, move || to_terminal_writer.clone(), false)
                .with_filter(filter::dynamic_filter_fn(to_terminal))
                .boxed(),
            output(LogFormat::Text, move || to_agents_writer.clone(), false)
                .with_filter(filter::dynamic_filter_fn(to_agents_file))
                .boxed(),
        ]);
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!("control plane line");
        async {
            tracing::info!("agent line");
            async { tracing::info!("nested agent line") }
                .instrument(tracing::info_span!("poll"))
                .await;
            tracing::warn!("agent warning");
        }
        .instrument(tracing::info_span!(AGENT_SPAN, cluster = %"dev-1"))
        .await;
        tracing::info_span!(REQUEST_SPAN, method = "POST", route = "/agent/v1/status")
            .in_scope(|| tracing::info!("answered an agent"));
        tracing::info_span!(REQUEST_SPAN, method = "PUT", route = "/subscriptions/{subscriptionId}")
            .in_scope(|| tracing::info!("answered a user"));
        let demo = tracing::info_span!(
            REQUEST_SPAN,
            method = "PUT",
            route = "/subscriptions/{subscriptionId}",
            caller = tracing::field::Empty
        );
        demo.record(CALLER_FIELD, DEMO_CALLER);
        demo.in_scope(|| tracing::info!("answered the demo"));

        let (terminal, agents) = (terminal.text(), agents.text());
        for line in ["control plane line", "answered a user", "agent warning"] {
            assert!(terminal.contains(line), "{line}: {terminal}");
        }
        for line in ["agent line", "answered an agent", "answered the demo"] {
            assert!(!terminal.contains(line), "{line}: {terminal}");
        }
        assert!(agents.contains("agent{cluster=dev-1}: "), "{agents}");
        for line in [
            "agent line",
            "nested agent line",
            "agent warning",
            "answered an agent",
            "answered the demo",
        ] {
            assert!(agents.contains(line), "{line}: {agents}");
        }
        for line in ["control plane line", "answered a user"] {
            assert!(!agents.contains(line), "{line}: {agents}");
        }
        assert!(!agents.contains('\u{1b}'), "no colour codes in the file: {agents}");
    }
}
