//! Results: one `Outcome` per (workload, target), printed as a table with ratios to the
//! first target, and serialisable to JSON.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub endpoint: String,
    pub workload: String,
    pub clients: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    /// Workload-specific figures (records per PUT, lost events, bytes per key, ...).
    pub extra: BTreeMap<String, f64>,
}

/// Latencies in microseconds, summarised.
pub(crate) struct Latencies(pub Vec<u32>);

impl Latencies {
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

impl Outcome {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        target: &super::Target,
        workload: super::Workload,
        clients: usize,
        ops: u64,
        elapsed: Duration,
        mut latencies: Latencies,
        errors: u64,
        extra: BTreeMap<String, f64>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Outcome {
            target: target.name.clone(),
            endpoint: target.endpoint.clone(),
            workload: workload.name().to_string(),
            clients,
            ops,
            seconds,
            ops_per_sec: ops as f64 / seconds,
            p50_ms: latencies.quantile_ms(0.5),
            p99_ms: latencies.quantile_ms(0.99),
            max_ms: latencies.quantile_ms(1.0),
            errors,
            extra,
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors",
            self.ops_per_sec, self.p50_ms, self.p99_ms, self.max_ms, self.errors
        );
        for (k, v) in &self.extra {
            let _ = write!(s, ", {k} {}", fmt_num(*v));
        }
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The table: per workload, one row per target, with ops/s as a ratio to the first target
/// of that workload (for `memory`, bytes per key instead).
pub fn print_table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:<14} {:>11} {:>7} {:>9} {:>9} {:>9} {:>7}  extra",
        "workload", "target", "ops/s", "ratio", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let mut first: BTreeMap<&str, &Outcome> = BTreeMap::new();
    for o in outcomes {
        let base = *first.entry(o.workload.as_str()).or_insert(o);
        let ratio = if o.workload == "memory" {
            // Lower is better: the first target's bytes per key over this one's, settled
            // when both settled.
            let field = if base.extra.contains_key("settled_bytes_per_key")
                && o.extra.contains_key("settled_bytes_per_key")
            {
                "settled_bytes_per_key"
            } else {
                "rss_bytes_per_key"
            };
            match (base.extra.get(field), o.extra.get(field)) {
                (Some(b), Some(x)) if *x > 0.0 => b / x,
                _ => 0.0,
            }
        } else if base.ops_per_sec > 0.0 {
            o.ops_per_sec / base.ops_per_sec
        } else {
            0.0
        };
        let extra: Vec<String> = o
            .extra
            .iter()
            .map(|(k, v)| format!("{k}={}", fmt_num(*v)))
            .collect();
        let _ = writeln!(
            out,
            "{:<17} {:<14} {:>11.0} {:>6.2}x {:>9.2} {:>9.2} {:>9.2} {:>7}  {}",
            o.workload,
            o.target,
            o.ops_per_sec,
            ratio,
            o.p50_ms,
            o.p99_ms,
            o.max_ms,
            o.errors,
            extra.join(" ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_ratios() {
        let mut l = Latencies((1..=100).map(|i| i * 1000).collect());
        assert_eq!(l.quantile_ms(0.5), 51.0);
        assert_eq!(l.quantile_ms(0.99), 99.0);
        assert_eq!(l.quantile_ms(1.0), 100.0);
        let t = |name: &str| super::super::Target {
            name: name.into(),
            endpoint: "http://x".into(),
            watch_endpoint: None,
            nodes: vec![],
        };
        let a = Outcome::new(
            &t("etcd"),
            super::super::Workload::Put,
            1,
            100,
            Duration::from_secs(1),
            Latencies(vec![]),
            0,
            BTreeMap::new(),
        );
        let b = Outcome::new(
            &t("netsy"),
            super::super::Workload::Put,
            1,
            250,
            Duration::from_secs(1),
            Latencies(vec![]),
            0,
            BTreeMap::new(),
        );
        let table = print_table(&[a, b]);
        assert!(table.lines().nth(2).unwrap().contains("2.50x"), "{table}");
    }
}
