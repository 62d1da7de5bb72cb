//! Latency histograms and the report, as a table for people or JSON.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, shared by all connections.
pub struct Latency(Mutex<Histogram<u64>>);

impl Latency {
    pub fn new() -> anyhow::Result<Self> {
        // 1 µs to 10 min, 3 significant digits.
        Ok(Latency(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?)))
    }

    pub fn record(&self, d: Duration) {
        if let Ok(mut h) = self.0.lock() {
            h.saturating_record((d.as_micros() as u64).max(1));
        }
    }

    pub fn summary(&self) -> Percentiles {
        let Ok(h) = self.0.lock() else {
            return Percentiles::default();
        };
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

/// Milliseconds at the usual quantiles.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What the server process used during the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub cpu_percent_of_one_core: f64,
    /// Server CPU per message acked in the window.
    pub cpu_us_per_message: f64,
    /// Bytes the server wrote to storage in the window (/proc/PID/io), and
    /// per message acked; absent where /proc does not say.
    pub disk_write_bytes: Option<u64>,
    pub disk_bytes_per_message: Option<f64>,
    pub peak_rss_mib: f64,
}

/// What the processes of one name (`--watch`) used during the measured
/// window; per message once the run's rate is known.
#[derive(Debug, Clone, Serialize)]
pub struct WatchedUsage {
    /// How many ran at the end of the window.
    pub processes: usize,
    pub cpu_seconds: f64,
    pub cores: f64,
    /// Per message acked in the window.
    pub cpu_us_per_message: f64,
}

/// Everything a load run found.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub users: usize,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub delivered: u64,
    /// Acked, not received live by the end of the run, brought by the
    /// recipient's replay when it connected again.
    pub late: u64,
    /// Acked and never received, not even by that replay.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub errors: BTreeMap<String, u64>,
    pub disconnects: u64,
    pub latency_ms: BTreeMap<&'static str, Percentiles>,
    pub server: Option<ServerUsage>,
    pub bench_cpu_seconds: Option<f64>,
    /// `--watch`: CPU by process name over the window.
    pub watched: BTreeMap<String, WatchedUsage>,
}

impl LoadReport {
    pub fn print(&self) {
        println!(
            "users {}  target {:.0}/s  achieved {:.0}/s  over {:.0} s (after {:.0} s warm-up)",
            self.users, self.target_rate, self.achieved_rate, self.duration_s, self.warmup_s
        );
        println!(
            "sent {}  acked {}  received {}  delivered {}  late {}  lost {}  duplicated {}  out of order {}  disconnects {}",
            self.sent,
            self.acked,
            self.received,
            self.delivered,
            self.late,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.disconnects
        );
        if !self.errors.is_empty() {
            println!("errors {:?}", self.errors);
        }
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in &self.latency_ms {
            println!(
                "{:<22} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name, p.count, p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
        if let Some(s) = &self.server {
            println!(
                "server pid {}: {:.1} CPU s ({:.0}% of one core, {:.1} µs per message), peak RSS {:.1} MiB",
                s.pid, s.cpu_seconds, s.cpu_percent_of_one_core, s.cpu_us_per_message, s.peak_rss_mib
            );
            if let (Some(bytes), Some(per)) = (s.disk_write_bytes, s.disk_bytes_per_message) {
                println!(
                    "server wrote {:.1} MiB to disk ({per:.0} bytes per message)",
                    bytes as f64 / 1048576.0
                );
            }
        }
        if let Some(cpu) = self.bench_cpu_seconds {
            println!("load generator: {cpu:.1} CPU s");
        }
        for (name, w) in &self.watched {
            println!(
                "{name} ({} processes): {:.1} CPU s ({:.2} cores, {:.1} µs per message)",
                w.processes, w.cpu_seconds, w.cores, w.cpu_us_per_message
            );
        }
    }
}
