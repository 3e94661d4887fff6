//! `milena-loadtest`: one load generator for Milena, memcached and Redis, so
//! all three see identical load. See `milena-loadtest --help`.

pub mod proto;
pub mod report;
pub mod run;
pub mod workload;

use std::time::Duration;

use clap::Parser;

pub use report::Report;
pub use run::{Limit, RunConfig, run};

/// Command-line flags (scripts rely on these names).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "milena-loadtest",
    version,
    about = "Drive a Milena router or node, memcached or Redis with the same load and report latency percentiles, throughput and hit ratio"
)]
pub struct Args {
    /// milena://HOST:PORT, memcache://HOST:PORT or redis://HOST:PORT.
    #[arg(long)]
    pub target: proto::Target,
    /// Connections.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connections: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub pipeline: u64,
    /// GET:SET mix, e.g. 9:1 or 1:0.
    #[arg(long, default_value = "9:1")]
    pub ratio: workload::Ratio,
    /// Keys in the key space.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// uniform or zipf:EXPONENT.
    #[arg(long, default_value = "zipf:0.99")]
    pub key_dist: workload::KeyDist,
    /// Key length in bytes.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size in bytes: N or MIN-MAX.
    #[arg(long, default_value = "100")]
    pub value_size: workload::ValueSize,
    /// Set every key once before measuring.
    #[arg(long)]
    pub prefill: bool,
    /// Measure for this long (e.g. 10s, 500ms, 1m); default 10s.
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Measure this many requests instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Unmeasured load first (e.g. 2s).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Open loop: send this many requests per second in all, on a fixed
    /// timetable, and measure latency from the scheduled time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG latency-percentile chart of this run (and of --compare runs).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Earlier --json outputs to draw beside this run in --plot.
    #[arg(long)]
    pub compare: Vec<std::path::PathBuf>,
    /// Seed of the operation streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads of the load generator (default: the CPUs it may use).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Args {
    /// The run these flags describe.
    pub fn config(&self) -> RunConfig {
        let limit = match (self.requests, self.duration) {
            (Some(n), _) => Limit::Requests(n),
            (None, Some(d)) => Limit::Duration(d),
            (None, None) => Limit::Duration(Duration::from_secs(10)),
        };
        RunConfig {
            target: self.target.clone(),
            connections: self.connections as usize,
            pipeline: self.pipeline as usize,
            ratio: self.ratio,
            keys: self.keys,
            dist: self.key_dist,
            key_size: self.key_size,
            value_size: self.value_size,
            prefill: self.prefill,
            limit,
            warmup: self.warmup,
            rate: self.rate,
            seed: self.seed,
            progress: !self.json,
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10s)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': use ms, s, m or h")),
    };
    if !(0.0..=86_400.0 * 7.0).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }
}
