//! What a scenario returns: named figures, latency summaries and
//! ours/baseline ratios, printed as tables and written as JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// A latency histogram in microseconds (1 µs to 10 min, 3 significant
/// digits), safe to share between tasks.
#[derive(Debug)]
pub struct Lat(Mutex<Histogram<u64>>);

impl Default for Lat {
    fn default() -> Self {
        Lat(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")))
    }
}

impl Lat {
    /// Records one latency.
    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Records one latency in microseconds (at least 1).
    pub fn record_us(&self, us: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(us.max(1));
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Summary row named `name`; `rate_per_s` is the throughput the row was
    /// measured at, if any.
    pub fn row(&self, name: &str, rate_per_s: Option<f64>) -> LatRow {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        LatRow {
            name: name.to_owned(),
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            rate_per_s,
        }
    }
}

/// A latency summary, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatRow {
    /// What was measured.
    pub name: String,
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Throughput the row was measured at (per second), if meaningful.
    pub rate_per_s: Option<f64>,
}

/// Ours divided by the raw-NATS baseline (> 1: we are slower / bigger).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is compared.
    pub name: String,
    /// Our figure.
    pub ours: f64,
    /// The baseline's figure.
    pub baseline: f64,
    /// `ours / baseline` (0 when the baseline is 0).
    pub ratio: f64,
}

/// The result of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The parameters it ran with.
    pub params: Value,
    /// Named figures (counts, rates, sizes), in insertion-independent order.
    pub metrics: BTreeMap<String, f64>,
    /// Latency summaries.
    pub latencies: Vec<LatRow>,
    /// Ours/baseline ratios.
    pub ratios: Vec<Ratio>,
    /// Remarks (what bounds a figure, what was skipped).
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &str, params: Value) -> Report {
        Report {
            scenario: scenario.to_owned(),
            params,
            metrics: BTreeMap::new(),
            latencies: vec![],
            ratios: vec![],
            notes: vec![],
        }
    }

    /// Sets a figure.
    pub fn metric(&mut self, name: &str, v: f64) {
        self.metrics.insert(name.to_owned(), v);
    }

    /// A figure (NaN when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(f64::NAN)
    }

    /// A latency row by name.
    pub fn lat(&self, name: &str) -> Option<&LatRow> {
        self.latencies.iter().find(|r| r.name == name)
    }

    /// Adds a ratio `ours / baseline`.
    pub fn ratio(&mut self, name: &str, ours: f64, baseline: f64) {
        let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
        self.ratios.push(Ratio { name: name.to_owned(), ours, baseline, ratio });
    }

    /// Adds a remark.
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// The report as text tables.
    pub fn table(&self) -> String {
        let mut s = format!("== {} ==\nparams: {}\n", self.scenario, self.params);
        if !self.metrics.is_empty() {
            let w = self.metrics.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in &self.metrics {
                s += &format!("  {k:<w$}  {}\n", fmt_num(*v));
            }
        }
        if !self.latencies.is_empty() {
            let w = self.latencies.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max(4);
            s += &format!(
                "  {:<w$}  {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
                "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max", "rate/s"
            );
            for r in &self.latencies {
                let rate = r.rate_per_s.map(fmt_num).unwrap_or_else(|| "-".into());
                s += &format!(
                    "  {:<w$}  {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10}\n",
                    r.name, r.count, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, rate
                );
            }
        }
        if !self.ratios.is_empty() {
            let w = self.ratios.iter().map(|r| r.name.chars().count()).max().unwrap_or(0);
            s += &format!("  {:<w$}  {:>12} {:>12} {:>8}\n", "ours / baseline", "ours", "baseline", "ratio");
            for r in &self.ratios {
                s += &format!(
                    "  {:<w$}  {:>12} {:>12} {:>8.2}\n",
                    r.name,
                    fmt_num(r.ours),
                    fmt_num(r.baseline),
                    r.ratio
                );
            }
        }
        for n in &self.notes {
            s += &format!("  note: {n}\n");
        }
        s
    }

    /// Writes `<dir>/<scenario>.json`.
    pub fn write_json(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?).with_context(|| format!("write {}", path.display()))
    }
}

/// A number for tables: integers plainly, others with 3 decimals.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// The median of some durations, in milliseconds (0 if empty).
pub fn median_ms(v: &[Duration]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}
