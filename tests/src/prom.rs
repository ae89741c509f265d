//! Scraping `/metrics` and a strict parser of the Prometheus text
//! exposition (format 0.0.4), so tests read the numbers a Prometheus server
//! would and fail on text it would refuse.
//!
//! Beyond the format's grammar the parser checks what our exposition
//! promises: every sample belongs to a family declared by `# TYPE` before
//! it, no series appears twice, and each histogram's buckets are
//! cumulative with a `+Inf` bucket equal to its `_count`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// One scrape's answer.
#[derive(Debug)]
pub struct Scrape {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// `GET /metrics` on `addr` (`host:port`), with a bearer `token` if given.
pub async fn scrape(addr: &str, token: Option<&str>) -> Result<Scrape> {
    get(addr, "/metrics", token).await
}

/// `GET path` on `addr`, with a bearer `token` if given.
pub async fn get(addr: &str, path: &str, token: Option<&str>) -> Result<Scrape> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method("GET").uri(path).header("host", addr);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    Ok(Scrape { status, content_type, body })
}

/// Scrapes and parses; fails unless the answer is 200 Prometheus text.
pub async fn metrics(addr: &str, token: Option<&str>) -> Result<Exposition> {
    let s = scrape(addr, token).await?;
    ensure!(s.status == 200, "GET /metrics on {addr}: {} {}", s.status, s.body);
    ensure!(s.content_type.starts_with("text/plain; version=0.0.4"), "content type {:?}", s.content_type);
    parse(&s.body)
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: HashMap<String, String>,
    /// (sample name, labels) → value.
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
}

impl Exposition {
    /// The value of the series `name{labels}` (exactly those labels), 0 if
    /// absent (a labelled series appears once first recorded).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Whether any series of sample `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|(n, _)| n == name)
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

fn parse_value(s: &str) -> Result<f64> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| anyhow!("bad value {s:?}: {e}")),
    }
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or_else(|| anyhow!("labels must start with {{"))?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or_else(|| anyhow!("label without '=' in {s:?}"))?;
        let key = rest[..eq].trim();
        ensure!(is_name(key, false), "bad label name {key:?}");
        rest = rest[eq + 1..].strip_prefix('"').ok_or_else(|| anyhow!("label value must be quoted in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => bail!("bad escape {other:?} in {s:?}"),
                },
                Some((_, '\n')) | None => bail!("unterminated label value in {s:?}"),
                Some((_, c)) => value.push(c),
            }
        };
        ensure!(labels.insert(key.to_owned(), value).is_none(), "label {key} twice in {s:?}");
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            ensure!(rest.starts_with('}'), "expected ',' or '}}' in {s:?}");
        }
    }
}

/// The family a sample name belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|f| types.get(*f).is_some_and(|t| t == "histogram" || t == "summary"))
}

/// Parses Prometheus text exposition (format 0.0.4).
pub fn parse(text: &str) -> Result<Exposition> {
    let mut e = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    ensure!(is_name(name, true), "bad family name, {}", at());
                    ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "unknown type, {}",
                        at()
                    );
                    ensure!(e.types.insert(name.to_owned(), t.to_owned()).is_none(), "TYPE twice, {}", at());
                }
                (Some("HELP"), Some(name), _) => ensure!(is_name(name, true), "bad HELP name, {}", at()),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| anyhow!("no value, {}", at()))?;
        let name = &line[..name_end];
        ensure!(is_name(name, true), "bad metric name, {}", at());
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).with_context(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| anyhow!("no value, {}", at()))?).with_context(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| anyhow!("bad timestamp, {}", at()))?;
        }
        ensure!(fields.next().is_none(), "trailing text, {}", at());
        let family = family_of(name, &e.types).ok_or_else(|| anyhow!("sample of no declared family, {}", at()))?;
        if name.ends_with("_bucket") && family != name {
            ensure!(labels.contains_key("le"), "bucket without le, {}", at());
        }
        ensure!(e.samples.insert((name.to_owned(), labels), value).is_none(), "series twice, {}", at());
    }
    check_histograms(&e)?;
    Ok(e)
}

fn check_histograms(e: &Exposition) -> Result<()> {
    for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut series: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
        for ((n, labels), v) in &e.samples {
            if *n == bucket {
                let mut rest = labels.clone();
                let le = parse_value(&rest.remove("le").unwrap_or_default())?;
                series.entry(rest).or_default().push((le, *v));
            }
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            ensure!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{labels:?}: buckets not cumulative");
            let inf = buckets.last().filter(|b| b.0 == f64::INFINITY).map(|b| b.1);
            let count = e.samples.get(&(format!("{family}_count"), labels.clone())).copied();
            ensure!(inf.is_some() && inf == count, "{family}{labels:?}: +Inf bucket {inf:?} != count {count:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\\\"x\",j=\"2\"} 3\n\
                  # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 4.5\nh_count 2\n";
        let e = parse(ok).unwrap();
        assert_eq!(e.value("a_total", &[("k", "v\"x"), ("j", "2")]), 3.0);
        assert_eq!(e.sum("a_total", &[("j", "2")]), 3.0);
        assert_eq!(e.value("h_count", &[]), 2.0);
        assert!(parse("x 1\n").is_err(), "undeclared family");
        assert!(parse("# TYPE x gauge\nx{k=v} 1\n").is_err(), "unquoted label");
        assert!(parse("# TYPE x gauge\nx one\n").is_err(), "bad value");
        assert!(parse("# TYPE x gauge\nx 1\nx 2\n").is_err(), "series twice");
        assert!(parse("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n").is_err(), "inf != count");
        assert!(parse("# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n").is_err());
    }
}
