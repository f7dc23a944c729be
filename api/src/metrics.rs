//! Prometheus metrics, kept in a registry of the app's own (no global recorder) so that several servers in one
//! process, as in the tests, count apart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::fleet::failing::Failing;
use crate::lifecycle::ConnectivityStatus;
use crate::model::FleetGauges;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    compliance_state: String,
    provisioning_state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectivityLabels {
    connectivity_status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    disposition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterGroupLabels {
    cluster_group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyAssignmentLabels {
    policy_assignment: String,
}

/// Most series of a family labelled by a resource (a cluster group, a policy assignment): those with the most
/// failing configurations (then by id), the rest summed in one series labelled [`OTHER`]. Every series is kept by
/// Prometheus for as long as it is scraped: the fleet's size must not be the count of series.
pub const MAX_LABELLED_SERIES: usize = 100;
/// The label value of the series that sums the resources past [`MAX_LABELLED_SERIES`].
pub const OTHER: &str = "other";

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    reports: Family<ReportLabels, Counter>,
    /// How long the transaction that applies a policy assignment to its clusters takes.
    pub assignment_apply: Histogram,
    /// From a configuration write to an agent receiving it (changes that arrive while the agent waits).
    pub propagation: Histogram,
    /// From a configuration write to the agent's first status report on it.
    pub status_latency: Histogram,
    configurations: Family<StateLabels, Gauge>,
    clusters: Family<ConnectivityLabels, Gauge>,
    failing_by_group: Family<ClusterGroupLabels, Gauge>,
    failing_by_assignment: Family<PolicyAssignmentLabels, Gauge>,
    alert_deliveries: Family<DeliveryLabels, Counter>,
    /// Alert messages not queued because their receiver's backlog was full.
    pub alert_dropped: Counter,
    /// Alert events waiting for the dispatcher, and messages waiting to be sent (every replica's view of the store).
    pub alert_events_waiting: Gauge,
    pub alert_backlog: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fluxplane");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to about 16 s
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests",
            latency.clone(),
        );
        let reports = Family::<ReportLabels, Counter>::default();
        registry.register(
            "agent_reports",
            "Configuration status reports from agents, by what became of them (Recorded, Stale, Unknown)",
            reports.clone(),
        );
        let assignment_apply = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "policy_assignment_apply_seconds",
            "Time of the transaction that writes a policy assignment and brings its clusters' configurations in line",
            assignment_apply.clone(),
        );
        // 1 ms to about 65 s
        let propagation = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "propagation_seconds",
            "Time from a configuration write to an agent receiving it, for changes that arrive while the agent waits",
            propagation.clone(),
        );
        let status_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "status_latency_seconds",
            "Time from a configuration write to the agent's first status report on it",
            status_latency.clone(),
        );
        let configurations = Family::<StateLabels, Gauge>::default();
        registry.register(
            "configurations",
            "Configuration instances of the whole fleet by compliance and provisioning state",
            configurations.clone(),
        );
        let clusters = Family::<ConnectivityLabels, Gauge>::default();
        registry.register(
            "clusters",
            "Clusters of the whole fleet by connectivity status",
            clusters.clone(),
        );
        let alert_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "alert_delivery_attempts",
            "Attempts to deliver alert messages, by outcome (delivered, retried, failed)",
            alert_deliveries.clone(),
        );
        let alert_dropped = Counter::default();
        registry.register(
            "alert_messages_dropped",
            "Alert messages not queued because their receiver's backlog was full (--alert-backlog)",
            alert_dropped.clone(),
        );
        let alert_events_waiting = Gauge::default();
        registry.register(
            "alert_events_waiting",
            "Events waiting to be matched against alert rules",
            alert_events_waiting.clone(),
        );
        let alert_backlog = Gauge::default();
        registry.register(
            "alert_backlog",
            "Alert messages waiting to be delivered, all receivers together",
            alert_backlog.clone(),
        );
        let failing_by_group = Family::<ClusterGroupLabels, Gauge>::default();
        registry.register(
            "failing_configurations_by_cluster_group",
            "Failed or Non-Compliant configuration instances on the clusters of each cluster group (its ARM id; at most \
             100 groups, the most failing first, the rest summed as \"other\")",
            failing_by_group.clone(),
        );
        let failing_by_assignment = Family::<PolicyAssignmentLabels, Gauge>::default();
        registry.register(
            "failing_configurations_by_policy_assignment",
            "Failed or Non-Compliant configuration instances each policy assignment manages (its ARM id, \"none\" for \
             configurations written by hand; at most 100, the most failing first, the rest summed as \"other\")",
            failing_by_assignment.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            reports,
            assignment_apply,
            propagation,
            status_latency,
            configurations,
            clusters,
            failing_by_group,
            failing_by_assignment,
            alert_deliveries,
            alert_dropped,
            alert_events_waiting,
            alert_backlog,
        }
    }
}

/// `counts` (label value, count) cut to [`MAX_LABELLED_SERIES`] series: the largest counts (then by label), and
/// the rest summed under [`OTHER`] when there is a rest.
fn capped(counts: &[(String, i64)]) -> Vec<(String, i64)> {
    let mut sorted: Vec<&(String, i64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut series: Vec<(String, i64)> = sorted.iter().take(MAX_LABELLED_SERIES).map(|c| (*c).clone()).collect();
    if sorted.len() > MAX_LABELLED_SERIES {
        series.push((
            OTHER.to_owned(),
            sorted[MAX_LABELLED_SERIES..].iter().map(|c| c.1).sum(),
        ));
    }
    series
}

impl Metrics {
    /// Counts one configuration report an agent sent, by what became of it.
    pub fn agent_report(&self, disposition: &str) {
        self.reports
            .get_or_create(&ReportLabels {
                disposition: disposition.to_owned(),
            })
            .inc();
    }

    /// Sets the fleet gauges to the store's counts (read when scraped: the store is shared by every replica, so
    /// each exports the same fleet).
    pub fn set_fleet(&self, gauges: &FleetGauges) {
        self.configurations.clear();
        for (compliance_state, provisioning_state, count) in &gauges.instances {
            self.configurations
                .get_or_create(&StateLabels {
                    compliance_state: compliance_state.clone(),
                    provisioning_state: provisioning_state.clone(),
                })
                .set(*count);
        }
        self.clusters.clear();
        for (status, heard, count) in &gauges.clusters {
            // a Connected agent not heard from within --offline-after is Offline, as the API answers
            let connectivity_status = if status == ConnectivityStatus::Connected.as_str() && !heard {
                ConnectivityStatus::Offline.as_str()
            } else {
                status
            };
            self.clusters
                .get_or_create(&ConnectivityLabels {
                    connectivity_status: connectivity_status.to_owned(),
                })
                .inc_by(*count);
        }
    }

    /// Counts one attempt to deliver an alert: `delivered`, `retried` or `failed`.
    pub fn alert_delivery(&self, outcome: &'static str) {
        self.alert_deliveries.get_or_create(&DeliveryLabels { outcome }).inc();
    }

    /// Sets the failing configurations by cluster group and by policy assignment (read when scraped, as the fleet
    /// gauges are), each family capped (`MAX_LABELLED_SERIES`).
    pub fn set_failing(&self, failing: &Failing) {
        self.failing_by_group.clear();
        for (cluster_group, count) in capped(&failing.by_cluster_group) {
            self.failing_by_group
                .get_or_create(&ClusterGroupLabels { cluster_group })
                .set(count);
        }
        self.failing_by_assignment.clear();
        for (policy_assignment, count) in capped(&failing.by_policy_assignment) {
            self.failing_by_assignment
                .get_or_create(&PolicyAssignmentLabels { policy_assignment })
                .set(count);
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Counts each request and times it, labelled by the matched route (never the raw path, whose resource names would
/// make the label set unbounded). A plain service rather than `from_fn` middleware, which would clone the routes
/// below it and box their futures for every request, memory a waiting long-poll holds for its whole wait.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Track<S> {
    /// Counts what `inner` answers in `metrics` (a layer of these: `tower::layer::layer_fn`).
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S> tower::Service<Request> for Track<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = method_label(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        Timed {
            future: self.inner.call(request),
            metrics: self.metrics.clone(),
            method,
            route: Some(route),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a counted and timed request.
    pub struct Timed<F> {
        #[pin]
        future: F,
        metrics: Arc<Metrics>,
        method: &'static str,
        route: Option<String>,
        started: Instant,
    }
}

impl<F, E> Future for Timed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.future.poll(cx))?;
        let route = this.route.take().unwrap_or_default();
        let method = (*this.method).to_owned();
        this.metrics
            .requests
            .get_or_create(&RequestLabels {
                method: method.clone(),
                route: route.clone(),
                status: response.status().as_u16(),
            })
            .inc();
        this.metrics
            .latency
            .get_or_create(&RouteLabels { method, route })
            .observe(this.started.elapsed().as_secs_f64());
        Poll::Ready(Ok(response))
    }
}

/// The method as a label: one of the methods the API serves, or `other`. The method is read before
/// authentication, and every distinct label value is a series kept for ever, so a client must not choose it.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        for invented in ["FOO", "M0001", "get", "PROPFIND"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented}");
        }
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }

    /// Every `fluxplane_*` name the Grafana dashboards query, without histogram and counter suffixes.
    fn queried_by_dashboards() -> std::collections::BTreeSet<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana");
        let mut names = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).expect("deploy/grafana") {
            let path = entry.expect("an entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a dashboard");
            for (at, _) in text.match_indices("fluxplane_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let base = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                names.insert(base.to_owned());
            }
        }
        names
    }

    #[test]
    fn the_grafana_dashboards_query_only_metrics_the_server_exports() {
        let metrics = Metrics::default();
        metrics.set_fleet(&FleetGauges {
            instances: vec![("Compliant".into(), "Succeeded".into(), 3)],
            clusters: vec![("Connected".into(), false, 2)],
        });
        metrics.agent_report("Recorded");
        // a family with labels shows once it has a series
        let route = || RouteLabels {
            method: "GET".into(),
            route: "/healthz".into(),
        };
        metrics.latency.get_or_create(&route()).observe(0.001);
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method: "GET".into(),
                route: "/healthz".into(),
                status: 200,
            })
            .inc();
        let exported = metrics.render();
        let queried = queried_by_dashboards();
        assert!(
            queried.len() >= 8,
            "the dashboards query the fleet's metrics: {queried:?}"
        );
        for name in queried {
            assert!(
                exported.contains(&format!("# TYPE {name} ")),
                "a dashboard queries {name}, which /metrics does not export"
            );
        }
    }

    #[test]
    fn failing_configurations_by_group_keep_to_the_cap_with_the_rest_as_other() {
        let metrics = Metrics::default();
        let groups: Vec<(String, i64)> = (0..MAX_LABELLED_SERIES + 20)
            .map(|i| {
                (
                    format!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/g{i:03}"),
                    i as i64 % 7,
                )
            })
            .collect();
        metrics.set_failing(&Failing {
            by_cluster_group: groups.clone(),
            by_policy_assignment: vec![("none".into(), 2)],
        });
        let exported = metrics.render();
        let series = exported
            .lines()
            .filter(|l| l.starts_with("fluxplane_failing_configurations_by_cluster_group{"))
            .count();
        assert_eq!(series, MAX_LABELLED_SERIES + 1, "the cap, and one for the rest");
        let total: i64 = groups.iter().map(|g| g.1).sum();
        let exported_total: i64 = exported
            .lines()
            .filter(|l| l.starts_with("fluxplane_failing_configurations_by_cluster_group{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(exported_total, total, "nothing is lost in the cut");
        assert!(exported.contains(r#"cluster_group="other""#));
        assert!(
            exported.contains(r#"fluxplane_failing_configurations_by_policy_assignment{policy_assignment="none"} 2"#),
            "{exported}"
        );
        // a second scrape with fewer groups leaves no stale series
        metrics.set_failing(&Failing {
            by_cluster_group: groups[..2].to_vec(),
            by_policy_assignment: Vec::new(),
        });
        let exported = metrics.render();
        assert!(!exported.contains(r#"cluster_group="other""#));
        assert!(!exported.contains("policy_assignment=\"none\""));
    }

    #[test]
    fn a_connected_cluster_not_heard_from_counts_as_offline() {
        let metrics = Metrics::default();
        metrics.set_fleet(&FleetGauges {
            instances: Vec::new(),
            clusters: vec![
                ("Connected".into(), true, 5),
                ("Connected".into(), false, 2),
                ("Offline".into(), false, 1),
            ],
        });
        let exported = metrics.render();
        assert!(
            exported.contains(r#"fluxplane_clusters{connectivity_status="Connected"} 5"#),
            "{exported}"
        );
        assert!(
            exported.contains(r#"fluxplane_clusters{connectivity_status="Offline"} 3"#),
            "{exported}"
        );
    }
}
