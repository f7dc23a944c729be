//! The binary's logging: text or JSON lines on standard error, filtered by `RUST_LOG` (default `info`), in colour
//! only on a terminal (never in a file or a pipe, nor with `NO_COLOR` set). `dev` sends the lines of its local
//! agents, everything logged inside their `agent` span, to a file of their own, so that the terminal keeps the
//! control plane's lines and the banner.

use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use fluxplane_api::config::LogFormat;
use tracing::Metadata;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter, fmt};

/// The name of the span `dev` runs each local agent in; its `cluster` field names the agent's cluster.
pub const AGENT_SPAN: &str = "agent";

/// Whether standard error takes colour: a terminal, and `NO_COLOR` unset or empty (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Whether an event was logged inside an agent's span (spans themselves always pass, so that both outputs can
/// name them).
fn in_agent<S>(metadata: &Metadata<'_>, context: &Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    metadata.is_span()
        || context
            .lookup_current()
            .is_some_and(|span| span.scope().any(|span| span.name() == AGENT_SPAN))
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
                output(format, std::io::stderr, colour())
                    .with_filter(filter::dynamic_filter_fn(|metadata, context| {
                        metadata.is_span() || !in_agent(metadata, context)
                    }))
                    .boxed(),
                output(format, Mutex::new(file), false)
                    .with_filter(filter::dynamic_filter_fn(in_agent))
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
    async fn the_agents_lines_go_to_their_own_output_and_the_rest_to_the_terminal() {
        let (terminal, agents) = (Kept::default(), Kept::default());
        let (to_terminal, to_agents) = (terminal.clone(), agents.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                output(LogFormat::Text, move || to_terminal.clone(), false)
                    .with_filter(filter::dynamic_filter_fn(|metadata, context| {
                        metadata.is_span() || !in_agent(metadata, context)
                    }))
                    .boxed(),
            )
            .with(
                output(LogFormat::Text, move || to_agents.clone(), false)
                    .with_filter(filter::dynamic_filter_fn(in_agent))
                    .boxed(),
            );
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!("control plane line");
        async {
            tracing::info!("agent line");
            async { tracing::warn!("nested agent line") }
                .instrument(tracing::info_span!("poll"))
                .await;
        }
        .instrument(tracing::info_span!(AGENT_SPAN, cluster = %"dev-1"))
        .await;

        let (terminal, agents) = (terminal.text(), agents.text());
        assert!(terminal.contains("control plane line"), "{terminal}");
        assert!(!terminal.contains("agent line"), "{terminal}");
        assert!(agents.contains("agent{cluster=dev-1}: "), "{agents}");
        assert!(
            agents.contains("agent line") && agents.contains("nested agent line"),
            "{agents}"
        );
        assert!(!agents.contains("control plane line"), "{agents}");
        assert!(!agents.contains('\u{1b}'), "no colour codes in the file: {agents}");
    }
}
