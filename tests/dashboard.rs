//! The operators' view that docker-compose.yml starts, checked without a
//! Docker engine:
//!
//! - every PromQL query of the Grafana dashboard
//!   (`docs/monitoring/grafana/dashboards/confab.json`) selects series that a
//!   running node exports at `/metrics`, histogram quantiles read `_bucket`
//!   series, `rate` and `increase` read counters, and the dashboard covers
//!   what docs/operations.md promises (connections, commands, ack and commit
//!   latency, batch sizes, deliveries, evictions, gap repairs, bus errors);
//! - Prometheus (`docs/monitoring/prometheus.yml`) scrapes exactly the
//!   compose nodes, directly on their port, not nginx;
//! - Grafana's provisioning points at the compose Prometheus and at the
//!   directory where compose mounts the dashboard;
//! - every image is pinned, and the health checks need no curl.
//!
//! The metric names are compared with the *series* names in `/metrics`, not
//! the family names: with OpenMetrics a counter family `confab_commands` is
//! exported (and stored by Prometheus) as `confab_commands_total`, an info
//! `confab_build` as `confab_build_info`, and a histogram as `_bucket`,
//! `_sum` and `_count`; a query naming the family selects nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{Backend, Client, TestNode};
use serde_json::{json, Value};

const DASHBOARD: &str = "docs/monitoring/grafana/dashboards/confab.json";
const PROMETHEUS: &str = "docs/monitoring/prometheus.yml";
const DATASOURCES: &str = "docs/monitoring/grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDERS: &str = "docs/monitoring/grafana/provisioning/dashboards/confab.yml";
const COMPOSE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_path(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------
// What a node exports

/// The series names of a `/metrics` body, each with its family and type.
#[derive(Debug, Default)]
struct Exported {
    /// series name -> (family, type)
    series: BTreeMap<String, (String, String)>,
    /// family name -> type
    families: BTreeMap<String, String>,
}

impl Exported {
    fn parse(body: &str) -> Exported {
        let mut out = Exported::default();
        let mut current: Option<(String, String)> = None;
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let family = parts.next().expect("family in # TYPE").to_owned();
                let ty = parts.next().expect("type in # TYPE").to_owned();
                out.families.insert(family.clone(), ty.clone());
                current = Some((family, ty));
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                let name: String = line
                    .chars()
                    .take_while(|c| *c != '{' && *c != ' ')
                    .collect();
                let (family, ty) = current
                    .clone()
                    .unwrap_or_else(|| panic!("series before any # TYPE: {line}"));
                assert!(
                    name.starts_with(&family),
                    "series {name} under the family {family}"
                );
                out.series.insert(name, (family, ty));
            }
        }
        out
    }

    fn series_of(&self, family: &str) -> Vec<&str> {
        self.series
            .iter()
            .filter(|(_, (f, _))| f == family)
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The metric names in a PromQL expression

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Open,
    Close,
    Other,
}

/// PromQL tokens that matter for finding metric names. String literals,
/// label matchers (`{…}`), ranges and subqueries (`[…]`), Grafana variables
/// (`$node`, `${node}`) and numbers are dropped.
fn tokens(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // Skips a string literal starting at chars[i]; returns the index after it.
    let skip_string = |mut i: usize| -> usize {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' && quote != '`' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if matches!(chars[i], '"' | '\'' | '`') {
                        i = skip_string(i);
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            '$' => {
                i += 1;
                if i < chars.len() && chars[i] == '{' {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (0.99, 1e3, 5m): never a name.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Other);
            }
            _ => {
                if !c.is_whitespace() {
                    out.push(Tok::Other);
                }
                i += 1;
            }
        }
    }
    out
}

/// Followed by a label list in parentheses (or, for group_left/right, maybe
/// nothing): the list holds label names, not metrics.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Aggregation operators: `sum by (le) (…)` puts a grouping clause between
/// the operator and its parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Words that are neither metrics nor functions.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];

/// Every metric name `expr` selects, each with the functions and
/// aggregations it sits inside (outermost first).
fn metric_selectors(expr: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let toks = tokens(expr);
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(word) if GROUPING.contains(&word.as_str()) => {
                // Skip the label list that follows, if any.
                if toks.get(i + 1) == Some(&Tok::Open) {
                    i += 2;
                    while i < toks.len() && toks[i] != Tok::Close {
                        i += 1;
                    }
                }
            }
            Tok::Ident(word) if toks.get(i + 1) == Some(&Tok::Open) => {
                stack.push(word.clone());
                i += 1;
            }
            Tok::Ident(word) if AGGREGATIONS.contains(&word.as_str()) => {
                pending = Some(word.clone());
            }
            Tok::Ident(word) if KEYWORDS.contains(&word.as_str()) => {}
            Tok::Ident(word) => out.push((word.clone(), stack.clone())),
            Tok::Open => stack.push(pending.take().unwrap_or_default()),
            Tok::Close => {
                if stack.pop().is_none() {
                    return Err(format!("unbalanced ')' in {expr}"));
                }
            }
            Tok::Other => {}
        }
        i += 1;
    }
    if !stack.is_empty() {
        return Err(format!("unbalanced '(' in {expr}"));
    }
    if let Some(op) = pending {
        return Err(format!("{op} without its parenthesis in {expr}"));
    }
    Ok(out)
}

/// What is wrong with `expr` against what the node exports (empty: nothing).
fn problems(expr: &str, exported: &Exported) -> Vec<String> {
    let selectors = match metric_selectors(expr) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    if selectors.is_empty() {
        return vec![format!("`{expr}` names no metric")];
    }
    let mut out = Vec::new();
    for (name, around) in selectors {
        let Some((family, ty)) = exported.series.get(&name) else {
            if exported.families.contains_key(&name) {
                out.push(format!(
                    "`{expr}` names the family {name}, which has no series of that name \
                     (Prometheus stores {:?})",
                    exported.series_of(&name)
                ));
            } else {
                out.push(format!(
                    "`{expr}` names {name}, which the server does not export"
                ));
            }
            continue;
        };
        let inside = |f: &str| around.iter().any(|a| a == f);
        if inside("histogram_quantile") && !(ty == "histogram" && name.ends_with("_bucket")) {
            out.push(format!(
                "`{expr}`: histogram_quantile over {name}, which is not a histogram's _bucket series"
            ));
        }
        if ["rate", "irate", "increase"].iter().any(|f| inside(f))
            && !(ty == "counter" || ty == "histogram")
        {
            out.push(format!(
                "`{expr}`: rate or increase of {name}, a {ty} ({family}), not a counter"
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The dashboard

/// Every PromQL expression in the dashboard: targets' `expr`, anywhere (rows
/// may nest panels), and the metric queries of template variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or(title)
                    .to_owned();
                if let Some(expr) = map.get("expr") {
                    let expr = expr
                        .as_str()
                        .unwrap_or_else(|| panic!("expr that is not a string in {title}"));
                    out.push((title.clone(), expr.to_owned()));
                }
                for (k, v) in map {
                    if k != "templating" {
                        walk(v, &title, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);

    // Variables: label_values(<selector>, label) reads a metric;
    // label_values(label) and plain PromQL are handled too.
    let vars = dashboard["templating"]["list"].as_array().cloned();
    for var in vars.unwrap_or_default() {
        if var["type"] != "query" {
            continue;
        }
        let name = format!("variable ${}", var["name"].as_str().unwrap_or("?"));
        let query = match &var["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        let query = query.trim();
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
        {
            if let Some((selector, _label)) = args.rsplit_once(',') {
                out.push((name, selector.trim().to_owned()));
            }
        } else if let Some(inner) = query
            .strip_prefix("query_result(")
            .and_then(|s| s.strip_suffix(')'))
        {
            out.push((name, inner.to_owned()));
        } else if !query.is_empty() {
            out.push((name, query.to_owned()));
        }
    }
    out
}

/// Every datasource uid the dashboard refers to.
fn datasource_uids(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            if let Some(uid) = map.get("datasource").and_then(|d| d.get("uid")) {
                out.insert(uid.as_str().unwrap_or("?").to_owned());
            }
            map.values().for_each(|v| datasource_uids(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_uids(v, out)),
        _ => {}
    }
}

/// The series the operators' view must show (docs/operations.md, "Dashboards").
const COVERED: &[(&str, &str)] = &[
    ("connections", "confab_connections"),
    ("commands received", "confab_commands_total"),
    (
        "commands answered with an error",
        "confab_command_errors_total",
    ),
    (
        "commands refused by the rate limit",
        "confab_rate_limited_total",
    ),
    ("ack latency", "confab_ack_latency_seconds_bucket"),
    ("commit latency", "confab_commit_latency_seconds_bucket"),
    ("batch sizes", "confab_append_batch_size_bucket"),
    ("deliveries", "confab_deliveries_total"),
    ("evictions", "confab_evictions_total"),
    ("gap repairs", "confab_gap_repairs_total"),
    ("bus errors", "confab_bus_errors_total"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_series_the_server_exports() {
    let node = TestNode::start(Backend::Sqlite).await;

    // prometheus-client shows plain counters, gauges and histograms from the
    // start, but a labelled family shows a series only once it is used: a
    // few commands, one of them failing, come first.
    let mut c = Client::connect(&format!("{}?user_id=dash", node.ws_url())).await;
    c.ok(json!({"type":"create","room":"dash"})).await;
    c.ok(json!({"type":"message","room":"dash","message":"hello"}))
        .await;
    let r = c.reply(json!({"type":"no_such_command"})).await;
    assert_eq!(r["type"], "error", "{r}");

    let (status, body) = node.http("GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    let exported = Exported::parse(&body);
    assert!(
        exported.series.len() > 20,
        "too few series parsed from /metrics:\n{body}"
    );

    // The checker itself finds the mistakes it is for.
    for (bad, why) in [
        (
            "sum(rate(confab_commands[5m]))",
            "the family name of a counter",
        ),
        ("confab_build", "the family name of an info metric"),
        ("up{job=\"confab\"}", "a series only Prometheus makes"),
        ("rate(confab_connections[5m])", "rate of a gauge"),
        (
            "histogram_quantile(0.9, sum by (le) (rate(confab_ack_latency_seconds_sum[5m])))",
            "a quantile of a _sum",
        ),
        (
            "sum by (le) (rate(confab_no_such_metric_bucket[5m]))",
            "a metric that does not exist",
        ),
    ] {
        assert!(
            !problems(bad, &exported).is_empty(),
            "the checker accepts {why}: {bad}"
        );
    }
    let good = "histogram_quantile(0.99, sum by (node, le) \
                (rate(confab_ack_latency_seconds_bucket{node=~\"$node\",x=\"confab_nope\"}[$__rate_interval])))";
    assert_eq!(problems(good, &exported), Vec::<String>::new());
    assert_eq!(
        metric_selectors("sum(rate(a_total[1m])) by (node) / on(node) group_left max(b)")
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect::<Vec<_>>(),
        ["a_total", "b"]
    );

    let dashboard: Value = serde_json::from_str(&repo_file(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "only {} queries found", queries.len());

    let mut wrong = Vec::new();
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (panel, expr) in &queries {
        for p in problems(expr, &exported) {
            wrong.push(format!("panel \"{panel}\": {p}"));
        }
        for (name, around) in metric_selectors(expr).unwrap_or_default() {
            used.entry(name).or_default().extend(around);
        }
    }
    assert!(
        wrong.is_empty(),
        "{DASHBOARD} has queries the server cannot answer:\n{}\n\nseries exported:\n{}",
        wrong.join("\n"),
        exported
            .series
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    for (what, series) in COVERED {
        assert!(
            used.contains_key(*series),
            "the dashboard shows no {what} ({series})"
        );
    }
    for histogram in [
        "confab_ack_latency_seconds_bucket",
        "confab_commit_latency_seconds_bucket",
        "confab_append_batch_size_bucket",
    ] {
        assert!(
            used[histogram].iter().any(|f| f == "histogram_quantile"),
            "the dashboard reads {histogram} but takes no histogram_quantile of it"
        );
    }

    // Every panel but a row has a query, and every query goes to the
    // provisioned datasource.
    fn panels(v: &Value, out: &mut Vec<Value>) {
        for p in v["panels"].as_array().cloned().unwrap_or_default() {
            panels(&p, out);
            out.push(p);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard, &mut all);
    for p in &all {
        if p["type"] != "row" {
            let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
            assert!(targets > 0, "panel \"{}\" has no query", p["title"]);
        }
    }
    let provisioned = yaml_value(&repo_file(DATASOURCES), "uid")
        .unwrap_or_else(|| panic!("no uid in {DATASOURCES}"));
    let mut uids = BTreeSet::new();
    datasource_uids(&dashboard, &mut uids);
    assert_eq!(
        uids,
        BTreeSet::from([provisioned.clone()]),
        "the dashboard's datasources are not the provisioned one ({provisioned})"
    );
}

// ---------------------------------------------------------------------------
// docker-compose.yml, prometheus.yml, Grafana's provisioning, the Dockerfile

/// The value of the first `key: value` line (quotes removed).
fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
}

/// Lines without YAML comments (a `#` after whitespace or at the start).
fn uncommented(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.find(" #") {
            _ if l.trim_start().starts_with('#') => String::new(),
            Some(i) => l[..i].to_owned(),
            None => l.to_owned(),
        })
        .collect()
}

/// The compose services, each with the lines of its body.
fn compose_services(compose: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    for line in uncommented(compose) {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            in_services = line.trim_end() == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if line.starts_with("  ") && !line.starts_with("   ") {
            let name = line.trim().trim_end_matches(':').to_owned();
            out.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let Some(name) = &current {
            out.get_mut(name).unwrap().push(line.trim().to_owned());
        }
    }
    out
}

/// The confab nodes of the compose file: the services built from the
/// `confab-node` anchor.
fn compose_nodes(services: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    services
        .iter()
        .filter(|(_, body)| body.iter().any(|l| l == "<<: *confab-node"))
        .map(|(name, _)| name.clone())
        .collect()
}

/// `- ./host:/container[:ro]` volume lines of a service: (host, container).
fn mounts(body: &[String]) -> Vec<(String, String)> {
    body.iter()
        .filter_map(|l| l.strip_prefix("- ./"))
        .map(|m| {
            let mut parts = m.split(':');
            (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_compose_node_directly() {
    let compose = repo_file(COMPOSE);
    let services = compose_services(&compose);
    let nodes = compose_nodes(&services);
    assert!(
        nodes.len() >= 2,
        "no confab nodes found in {COMPOSE}: {:?}",
        services.keys()
    );
    let port = yaml_value(&compose, "PORT").expect("PORT in the nodes' environment");

    let prometheus = repo_file(PROMETHEUS);
    let mut targets = BTreeSet::new();
    for line in uncommented(&prometheus) {
        let Some(list) = line
            .trim()
            .trim_start_matches("- ")
            .strip_prefix("targets:")
        else {
            continue;
        };
        let list = list.trim();
        assert!(
            list.starts_with('[') && list.ends_with(']'),
            "{PROMETHEUS}: write targets as a [\"host:port\", …] list: {line}"
        );
        for t in list[1..list.len() - 1].split(',') {
            targets.insert(t.trim().trim_matches('"').trim_matches('\'').to_owned());
        }
    }
    let expected: BTreeSet<String> = nodes.iter().map(|n| format!("{n}:{port}")).collect();
    assert_eq!(
        targets, expected,
        "{PROMETHEUS} must scrape each compose node directly on its port"
    );
    if let Some(path) = yaml_value(&prometheus, "metrics_path") {
        assert_eq!(path, "/metrics");
    }

    // The compose Prometheus reads that file.
    let prom = services.get("prometheus").expect("a prometheus service");
    assert!(
        mounts(prom).contains(&(
            PROMETHEUS.to_owned(),
            "/etc/prometheus/prometheus.yml".to_owned()
        )),
        "the prometheus service does not mount {PROMETHEUS}: {prom:?}"
    );
}

#[test]
fn grafana_is_provisioned_from_the_repository() {
    let compose = repo_file(COMPOSE);
    let services = compose_services(&compose);
    let grafana = services.get("grafana").expect("a grafana service");
    let grafana_mounts = mounts(grafana);

    // Every file or directory compose mounts exists in the repository.
    for (service, body) in &services {
        for (host, _) in mounts(body) {
            assert!(
                repo_path(&host).exists(),
                "{service} mounts ./{host}, which does not exist"
            );
        }
    }

    // The datasource is the compose Prometheus.
    let url = yaml_value(&repo_file(DATASOURCES), "url").expect("url in the datasource");
    let host = url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        services.contains_key(&host),
        "the datasource's {url} names no compose service"
    );

    // The dashboards provider reads the directory compose mounts the
    // dashboard into, and the provisioning files are mounted where Grafana
    // looks for them.
    let path = yaml_value(&repo_file(DASHBOARD_PROVIDERS), "path").expect("path in the provider");
    let dashboards_dir = Path::new(DASHBOARD).parent().unwrap().to_str().unwrap();
    assert!(
        grafana_mounts.contains(&(dashboards_dir.to_owned(), path.clone())),
        "grafana should mount ./{dashboards_dir} at {path}: {grafana_mounts:?}"
    );
    for (file, dir) in [
        (DATASOURCES, "/etc/grafana/provisioning/datasources"),
        (DASHBOARD_PROVIDERS, "/etc/grafana/provisioning/dashboards"),
    ] {
        let host_dir = Path::new(file)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            grafana_mounts.contains(&(host_dir.clone(), dir.to_owned())),
            "grafana should mount ./{host_dir} at {dir}: {grafana_mounts:?}"
        );
    }
}

#[test]
fn images_are_pinned_and_health_checks_need_no_curl() {
    let compose = repo_file(COMPOSE);
    let dockerfile = repo_file(DOCKERFILE);

    let pinned = |image: &str| {
        let image = image.trim().trim_matches('"');
        match image.rsplit_once(':') {
            Some((_, tag)) if !tag.contains('/') => {
                tag.chars().any(|c| c.is_ascii_digit())
                    && !["latest", "stable", "mainline"].contains(&tag)
            }
            _ => false,
        }
    };
    for line in uncommented(&compose) {
        if let Some(image) = line.trim().strip_prefix("image:") {
            let image = image.trim();
            assert!(
                image == "confab:local" || pinned(image),
                "{COMPOSE}: {image} is not pinned to a version tag"
            );
        }
    }
    let mut stages = Vec::new();
    for line in uncommented(&dockerfile) {
        if let Some(rest) = line.trim().strip_prefix("FROM ") {
            let mut words = rest.split_whitespace();
            let image = words.next().unwrap();
            assert!(
                stages.iter().any(|s| s == image) || pinned(image),
                "{DOCKERFILE}: FROM {image} is not pinned to a version tag"
            );
            if let (Some("AS"), Some(stage)) = (words.next(), words.next()) {
                stages.push(stage.to_owned());
            }
        }
    }

    // No curl anywhere but in comments.
    for (file, text) in [(COMPOSE, &compose), (DOCKERFILE, &dockerfile)] {
        for line in uncommented(text) {
            assert!(!line.contains("curl"), "{file} still uses curl: {line}");
        }
    }
    assert!(
        dockerfile.contains("CMD [\"confab\", \"healthcheck\"]"),
        "{DOCKERFILE}: HEALTHCHECK should run confab healthcheck"
    );
    let services = compose_services(&compose);
    let check = "test: [\"CMD\", \"confab\", \"healthcheck\"]";
    assert!(
        compose.contains(check),
        "{COMPOSE}: the nodes' healthcheck should be {check}"
    );
    assert!(!compose_nodes(&services).is_empty());

    // The image's binary is stripped in the build stage; the release
    // profile keeps its debug info.
    assert!(
        uncommented(&dockerfile)
            .iter()
            .any(|l| l.contains("strip ") || l.contains("objcopy ")),
        "{DOCKERFILE}: the binary is not stripped"
    );
}
