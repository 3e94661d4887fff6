//! Results: percentiles, throughput, hit ratio and errors, as text or JSON,
//! and a latency-percentile chart comparing runs.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::run::{Limit, RunConfig};

/// One run's results. `--json` prints exactly this.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The target URL.
    pub target: String,
    /// Connections used.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Open-loop rate asked for, if any.
    pub rate: Option<f64>,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    /// Requests answered in the window.
    pub requests: u64,
    /// Requests per second in the window.
    pub throughput: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest request.
    pub max_us: f64,
    /// Hits / gets.
    pub hit_ratio: f64,
    /// Gets answered.
    pub gets: u64,
    /// Gets that found their key.
    pub hits: u64,
    /// Gets that did not.
    pub misses: u64,
    /// Sets answered.
    pub sets: u64,
    /// Error answers in all.
    pub errors: u64,
    /// Error answers by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// (percentile, µs) pairs for plotting.
    pub spectrum: Vec<(f64, f64)>,
}

impl Report {
    /// Builds a report from a merged histogram (nanoseconds) and counts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &RunConfig,
        secs: f64,
        hist: &Histogram<u64>,
        gets: u64,
        hits: u64,
        misses: u64,
        sets: u64,
        errors_by_kind: BTreeMap<String, u64>,
    ) -> Self {
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let requests = gets + sets;
        let spectrum = [
            0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999,
        ]
        .iter()
        .map(|&q| (q * 100.0, us(q)))
        .collect();
        let scheme = match cfg.target.kind {
            crate::proto::Kind::Milena => "milena",
            crate::proto::Kind::Memcache => "memcache",
            crate::proto::Kind::Redis => "redis",
        };
        Report {
            target: format!("{scheme}://{}", cfg.target.addr),
            connections: cfg.connections,
            pipeline: cfg.pipeline,
            rate: cfg.rate,
            duration_s: secs,
            requests,
            throughput: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: hist.max() as f64 / 1000.0,
            hit_ratio: if gets > 0 {
                hits as f64 / gets as f64
            } else {
                0.0
            },
            gets,
            hits,
            misses,
            sets,
            errors: errors_by_kind.values().sum(),
            errors_by_kind,
            spectrum,
        }
    }

    /// A human-readable summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "target      {}\nload        {} connections × pipeline {}{}\nwindow      {:.2} s, {} requests\nthroughput  {:.0} ops/s\nlatency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\ngets        {} ({} hits, {} misses, hit ratio {:.4})\nsets        {}\nerrors      {}",
            self.target,
            self.connections,
            self.pipeline,
            self.rate
                .map_or(String::new(), |r| format!(", open loop at {r:.0}/s")),
            self.duration_s,
            self.requests,
            self.throughput,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.gets,
            self.hits,
            self.misses,
            self.hit_ratio,
            self.sets,
            self.errors
        );
        for (k, v) in &self.errors_by_kind {
            s.push_str(&format!("\n  {k}: {v}"));
        }
        s
    }
}

/// Limit as text, for labels.
pub fn describe(limit: Limit) -> String {
    match limit {
        Limit::Duration(d) => format!("{:.0?}", d),
        Limit::Requests(n) => format!("{n} requests"),
    }
}

/// Writes an SVG chart of latency by percentile for `runs`, on the usual
/// "nines" scale (50%, 90%, 99%, 99.9%...).
pub fn plot(path: &std::path::Path, runs: &[Report]) -> Result<(), String> {
    use plotters::prelude::*;
    let nines = |p: f64| -((1.0 - p / 100.0).max(1e-6)).log10();
    let max_x = 5.0;
    let max_y = runs
        .iter()
        .flat_map(|r| r.spectrum.iter().map(|s| s.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{p:.3}%")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [&RED, &BLUE, &GREEN, &MAGENTA, &CYAN, &BLACK];
    for (i, r) in runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = r
            .spectrum
            .iter()
            .map(|&(p, us)| (nines(p).min(max_x), us))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(|e| e.to_string())?
            .label(format!("{} ({:.0} ops/s)", r.target, r.throughput))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, scale: f64) -> Report {
        Report {
            target: target.into(),
            connections: 1,
            pipeline: 1,
            rate: None,
            duration_s: 1.0,
            requests: 10,
            throughput: 10.0,
            p50_us: 1.0,
            p90_us: 2.0,
            p99_us: 3.0,
            p999_us: 4.0,
            max_us: 5.0,
            hit_ratio: 1.0,
            gets: 10,
            hits: 10,
            misses: 0,
            sets: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            spectrum: vec![
                (50.0, 10.0 * scale),
                (99.0, 30.0 * scale),
                (99.9, 90.0 * scale),
            ],
        }
    }

    #[test]
    fn plots_compare_runs_in_one_svg() {
        let path = std::env::temp_dir().join(format!("milena-plot-{}.svg", std::process::id()));
        plot(
            &path,
            &[report("milena://a:1", 1.0), report("memcache://b:2", 2.0)],
        )
        .expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg written");
        assert!(svg.contains("<svg"));
        assert!(
            svg.contains("milena://a:1") && svg.contains("memcache://b:2"),
            "both runs labelled"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn json_round_trips() {
        let r = report("redis://c:3", 1.0);
        let back: Report =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        assert_eq!(back, r);
    }
}
