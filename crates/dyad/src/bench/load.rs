//! The load run: users in pairs, each sending to its partner on a fixed
//! schedule, all together at an aggregate open-loop rate.
//!
//! Latency is measured from the *scheduled* send time, computed from the
//! schedule itself (the message body carries its index `k`), so a stalled
//! server cannot hide behind a stalled client.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use dyad_client::Connection;
use dyad_client::protocol::events::SendMessage;
use dyad_protocol::{ClientEvent, MessageId, ServerEvent, UserId};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use super::Target;
use super::procstat;
use super::report::{Latency, LoadReport, ServerUsage, WatchedUsage};
use crate::admin::BenchUser;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    target: Target,
    /// Connected users (an even number: they chat in pairs).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Aggregate send rate, messages per second, fixed in advance.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Time at full rate before measuring.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// After the last send, how long to wait for receipts before counting a
    /// message lost.
    #[arg(long, default_value = "5s", value_parser = duration)]
    grace: Duration,
    /// Size of each message text, in bytes.
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Also report the CPU time of every process with this command name
    /// over the measured window (repeatable): e.g. `postgres`,
    /// `redis-server`, or `dyad` for the nodes of a cluster (this bench is
    /// left out).
    #[arg(long)]
    watch: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Counters shared by every connection.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    disconnects: AtomicU64,
    measured_acked: AtomicU64,
}

struct Shared {
    counters: Counters,
    receive: Latency,
    ack: Latency,
    delivered: Latency,
    send_lag: Latency,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// The fixed schedule every user follows.
#[derive(Clone, Copy)]
struct Schedule {
    t0: Instant,
    period: Duration,
    warmup: Duration,
    end: Duration,
    users: usize,
}

impl Schedule {
    fn offset(&self, user: usize) -> Duration {
        self.period.mul_f64(user as f64 / self.users as f64)
    }

    /// When user `user` sends its `k`-th message, from t0.
    fn at(&self, user: usize, k: u64) -> Duration {
        self.offset(user) + self.period.mul_f64(k as f64)
    }

    /// How many messages `user` sends in all.
    fn count(&self, user: usize) -> u64 {
        let first = self.offset(user);
        if first >= self.end {
            return 0;
        }
        ((self.end - first).as_secs_f64() / self.period.as_secs_f64()).ceil() as u64
    }

    fn measured(&self, at: Duration) -> bool {
        at >= self.warmup
    }
}

/// What one user saw, for the loss count.
struct UserOutcome {
    acked: Vec<MessageId>,
    received: HashSet<MessageId>,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.users >= 2 && args.users.is_multiple_of(2),
        "--users must be an even number, at least 2"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let (servers, users) = args.target.prepare(args.users).await?;
    let users = &users[..args.users];
    eprintln!("connecting {} users to {}", users.len(), servers.urls.join(", "));

    // Connect everyone (user i to node i % nodes: partners land on different nodes).
    let connect_started = Instant::now();
    let connections: Vec<anyhow::Result<Connection>> =
        futures_util::stream::iter(users.iter().enumerate().map(|(i, u)| {
            let url = servers.urls[i % servers.urls.len()].clone();
            let token = u.token.clone();
            tokio::spawn(async move { open(&url, &token).await.map(|(conn, _)| conn) })
        }))
        .buffered(args.connect_concurrency.max(1))
        .map(|joined| joined.map_err(anyhow::Error::from).and_then(|r| r))
        .collect()
        .await;
    let connections = connections.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("connected in {:.2} s", connect_started.elapsed().as_secs_f64());

    let shared = Arc::new(Shared {
        counters: Counters::default(),
        receive: Latency::new()?,
        ack: Latency::new()?,
        delivered: Latency::new()?,
        send_lag: Latency::new()?,
        errors: Default::default(),
    });
    let schedule = Schedule {
        t0: Instant::now() + Duration::from_millis(200),
        period: Duration::from_secs_f64(args.users as f64 / args.rate),
        warmup: args.warmup,
        end: args.warmup + args.duration,
        users: args.users,
    };
    let total: u64 = (0..args.users).map(|u| schedule.count(u)).sum();
    let run_id = format!(
        "{:x}",
        std::process::id() as u64 * 1_000_003 + connect_started.elapsed().as_nanos() as u64
    );
    let body_pad = "x".repeat(args.message_bytes.saturating_sub(12));

    let mut tasks = Vec::with_capacity(args.users);
    for (i, conn) in connections.into_iter().enumerate() {
        let partner = users[i ^ 1].id;
        let (shared, run_id, pad) = (shared.clone(), run_id.clone(), body_pad.clone());
        tasks.push(tokio::spawn(drive(
            i, conn, partner, schedule, shared, run_id, pad, args.grace,
        )));
    }

    let progress = progress_bar(total, args.json);
    let ticker = tokio::spawn({
        let (shared, progress) = (shared.clone(), progress.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let c = &shared.counters;
                progress.set_position(c.acked.load(Ordering::Relaxed));
                progress.set_message(format!(
                    "received {} delivered {}",
                    c.received.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed)
                ));
            }
        }
    });

    // Server and own CPU over the measured window only.
    tokio::time::sleep_until(schedule.t0 + schedule.warmup).await;
    let server_cpu_start = servers.pid.and_then(procstat::cpu_seconds);
    let server_disk_start = servers.pid.and_then(procstat::disk_write_bytes);
    let own_cpu_start = procstat::cpu_seconds(procstat::own_pid());
    let watched_start: Vec<f64> = args.watch.iter().map(|n| procstat::cpu_seconds_of_named(n).0).collect();
    tokio::time::sleep_until(schedule.t0 + schedule.end).await;
    let watched_end: Vec<(f64, usize)> = args.watch.iter().map(|n| procstat::cpu_seconds_of_named(n)).collect();
    let server_cpu_end = servers.pid.and_then(procstat::cpu_seconds);
    let server_disk_end = servers.pid.and_then(procstat::disk_write_bytes);
    let own_cpu_end = procstat::cpu_seconds(procstat::own_pid());

    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await?);
    }
    ticker.abort();
    progress.finish_and_clear();

    let (late, lost) = recount(&outcomes, users, &servers.urls, args.connect_concurrency).await?;
    let c = &shared.counters;
    let measured = c.measured_acked.load(Ordering::Relaxed).max(1) as f64;
    let watched = args.watch.iter().zip(watched_start.iter().zip(watched_end));
    let watched = watched
        .map(|(name, (start, (end, processes)))| {
            let cpu_seconds = end - start;
            let usage = WatchedUsage {
                processes,
                cpu_seconds,
                cores: cpu_seconds / args.duration.as_secs_f64(),
                cpu_us_per_message: 1e6 * cpu_seconds / measured,
            };
            (name.clone(), usage)
        })
        .collect();
    let server = match (servers.pid, server_cpu_start, server_cpu_end) {
        (Some(pid), Some(a), Some(b)) => {
            let disk = server_disk_start.zip(server_disk_end).map(|(a, b)| b.saturating_sub(a));
            Some(ServerUsage {
                pid,
                cpu_seconds: b - a,
                cpu_percent_of_one_core: 100.0 * (b - a) / args.duration.as_secs_f64(),
                cpu_us_per_message: 1e6 * (b - a) / measured,
                disk_write_bytes: disk,
                disk_bytes_per_message: disk.map(|d| d as f64 / measured),
                peak_rss_mib: procstat::status_bytes(pid, "VmHWM:").unwrap_or(0) as f64 / (1024.0 * 1024.0),
            })
        }
        _ => None,
    };
    let report = LoadReport {
        users: args.users,
        target_rate: args.rate,
        achieved_rate: c.measured_acked.load(Ordering::Relaxed) as f64 / args.duration.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        sent: c.sent.load(Ordering::Relaxed),
        acked: c.acked.load(Ordering::Relaxed),
        received: c.received.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        late,
        lost,
        duplicated: c.duplicated.load(Ordering::Relaxed),
        out_of_order: c.out_of_order.load(Ordering::Relaxed),
        errors: shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        disconnects: c.disconnects.load(Ordering::Relaxed),
        latency_ms: BTreeMap::from([
            ("send_to_receive", shared.receive.summary()),
            ("send_to_ack", shared.ack.summary()),
            ("send_to_delivered", shared.delivered.summary()),
            ("send_lag (client)", shared.send_lag.summary()),
        ]),
        server,
        bench_cpu_seconds: own_cpu_start.zip(own_cpu_end).map(|(a, b)| b - a),
        watched,
    };
    servers.stop().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} acked, {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Connects, takes the replay of pending messages and acknowledges it.
/// Returns the connection and the ids the replay brought.
async fn open(url: &str, token: &str) -> anyhow::Result<(Connection, Vec<MessageId>)> {
    let mut conn = Connection::open(url, token).await?;
    let mut replayed = Vec::new();
    loop {
        match conn.next_event().await? {
            ServerEvent::ReceiveMessage(m) => replayed.push(m.message_id),
            ServerEvent::PendingComplete { .. } => break,
            _ => {}
        }
    }
    if !replayed.is_empty() {
        conn.delivery_ack(replayed.clone()).await?;
    }
    Ok((conn, replayed))
}

/// Messages acknowledged to their sender but not received live by the end:
/// each such recipient connects again, and what its replay brings was
/// `late`; the rest is `lost`.
async fn recount(
    outcomes: &[UserOutcome],
    users: &[BenchUser],
    urls: &[String],
    concurrency: usize,
) -> anyhow::Result<(u64, u64)> {
    let mut missing = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let sent_to_me = &outcomes[i ^ 1].acked;
        let unseen: HashSet<MessageId> = sent_to_me
            .iter()
            .filter(|id| !outcome.received.contains(id))
            .copied()
            .collect();
        if !unseen.is_empty() {
            missing.push((i, unseen));
        }
    }
    let checks = futures_util::stream::iter(missing.into_iter().map(|(i, unseen)| {
        let url = urls[i % urls.len()].clone();
        let token = users[i].token.clone();
        async move {
            let (conn, replayed) = open(&url, &token).await?;
            let _ = conn.close().await;
            let late = replayed.iter().filter(|id| unseen.contains(id)).count() as u64;
            anyhow::Ok((late, unseen.len() as u64 - late))
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    let (mut late, mut lost) = (0, 0);
    for check in checks {
        let (replayed, missing) = check?;
        late += replayed;
        lost += missing;
    }
    Ok((late, lost))
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    me: usize,
    conn: Connection,
    partner: UserId,
    schedule: Schedule,
    shared: Arc<Shared>,
    run_id: String,
    pad: String,
    grace: Duration,
) -> UserOutcome {
    let (mut tx, mut rx) = conn.split();
    let c = &shared.counters;
    let to_send = schedule.count(me);
    let expect_received = schedule.count(me ^ 1);
    let deadline = schedule.t0 + schedule.end + grace;
    let prefix = format!("{run_id}-");
    let mut next_k = 0u64;
    let mut scheduled_by_id: HashMap<MessageId, Duration> = HashMap::new();
    let mut outcome = UserOutcome {
        acked: Vec::new(),
        received: HashSet::new(),
    };
    let (mut answered, mut delivered, mut last_seq) = (0u64, 0u64, 0i64);
    // Made once and moved on after each send: a fresh timer per turn of the
    // loop cost the load generator a timer registration per frame read.
    let next_send = tokio::time::sleep_until(schedule.t0 + schedule.at(me, 0));
    let give_up = tokio::time::sleep_until(deadline);
    tokio::pin!(next_send, give_up);
    loop {
        if next_k >= to_send
            && answered >= to_send
            && delivered >= outcome.acked.len() as u64
            && outcome.received.len() as u64 >= expect_received
        {
            break;
        }
        tokio::select! {
            () = &mut next_send, if next_k < to_send => {
                let now = Instant::now();
                let at = schedule.at(me, next_k);
                if schedule.measured(at) {
                    shared.send_lag.record(now.saturating_duration_since(schedule.t0 + at));
                }
                let event = ClientEvent::SendMessage(SendMessage {
                    recipient_id: partner,
                    message: format!("{next_k}:{pad}"),
                    client_timestamp: None,
                    client_msg_id: Some(format!("{prefix}{next_k}")),
                });
                if tx.send(&event).await.is_err() {
                    c.disconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                c.sent.fetch_add(1, Ordering::Relaxed);
                next_k += 1;
                next_send.as_mut().reset(schedule.t0 + schedule.at(me, next_k));
            }
            event = rx.next_event() => {
                let now = Instant::now();
                match event {
                    Ok(ServerEvent::MessageAck { client_msg_id, message_id, .. }) => {
                        answered += 1;
                        let Some(k) = client_msg_id.as_deref().and_then(|id| id.strip_prefix(&prefix)).and_then(|k| k.parse().ok()) else { continue };
                        let at = schedule.at(me, k);
                        if schedule.measured(at) {
                            shared.ack.record(now.saturating_duration_since(schedule.t0 + at));
                            c.measured_acked.fetch_add(1, Ordering::Relaxed);
                        }
                        scheduled_by_id.insert(message_id, at);
                        outcome.acked.push(message_id);
                        c.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(ServerEvent::ReceiveMessage(m)) => {
                        if !outcome.received.insert(m.message_id) {
                            c.duplicated.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if m.seq <= last_seq {
                            c.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        last_seq = last_seq.max(m.seq);
                        c.received.fetch_add(1, Ordering::Relaxed);
                        if let Some(k) = m.message.split(':').next().and_then(|k| k.parse::<u64>().ok()) {
                            let at = schedule.at(me ^ 1, k);
                            if schedule.measured(at) {
                                shared.receive.record(now.saturating_duration_since(schedule.t0 + at));
                            }
                        }
                        if tx.send(&ClientEvent::DeliveryAck { message_ids: vec![m.message_id] }).await.is_err() {
                            c.disconnects.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Ok(ServerEvent::MessageDelivered { message_id, .. }) => {
                        if let Some(at) = scheduled_by_id.remove(&message_id) {
                            delivered += 1;
                            c.delivered.fetch_add(1, Ordering::Relaxed);
                            if schedule.measured(at) {
                                shared.delivered.record(now.saturating_duration_since(schedule.t0 + at));
                            }
                        }
                    }
                    Ok(ServerEvent::Error(e)) => {
                        if e.client_msg_id.is_some() {
                            answered += 1;
                        }
                        if let Ok(mut errors) = shared.errors.lock() {
                            *errors.entry(e.code.to_string()).or_default() += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        c.disconnects.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            () = &mut give_up => break,
        }
    }
    let _ = tx.close().await;
    outcome
}
