//! `dyad bench attack`: one of the attacks from the "safe on the open
//! internet" issue against a server with its default limits, while a
//! legitimate user on other addresses keeps logging in, sending and asking
//! `/healthz`. It reports the server's memory before, at its peak during,
//! and after the attack, and the legitimate user's latencies before and
//! during it. Source addresses 127.x.y.z stand in for different clients.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use dyad_client::protocol::{ServerEvent, UserId};
use dyad_client::{Client, Connection, tcp_from};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::procstat::status_bytes;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Attack {
    /// 10 addresses send failed logins with 1 MB usernames.
    BigNames,
    /// 60 addresses hold 250 silent TCP connections each, and reopen each
    /// one the server closes.
    IdleSockets,
    /// Wrong passwords: 256 at once from one address, and 8 at once from
    /// each of 30 more.
    LoginFlood,
    /// One address registers accounts as fast as it is answered.
    RegisterFlood,
    /// One user opens 3,000 WebSockets.
    SocketsPerUser,
}

#[derive(Debug, Args)]
pub struct AttackArgs {
    /// The attack.
    #[arg(value_enum)]
    attack: Attack,
    /// A running server (with its default limits). Without it, the bench
    /// starts `dyad serve` with default flags on a fresh SQLite file.
    #[arg(long)]
    url: Option<String>,
    /// The server's process id, for its memory (set when the bench starts it).
    #[arg(long)]
    server_pid: Option<u32>,
    /// How long the attack lasts.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// One legitimate user's view: latencies of each probe, in ms.
#[derive(Default)]
struct Probes {
    login: Vec<f64>,
    send: Vec<f64>,
    health: Vec<f64>,
}

/// The legitimate user: two accounts chatting, logging in from fresh
/// addresses (so that its own login budget never runs out).
struct Legit {
    base: String,
    alice: Connection,
    bob_id: UserId,
    next_address: u32,
    sent: u64,
    http: reqwest::Client,
}

/// Probes that take longer than this count as this long (and as failures).
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

impl Legit {
    async fn new(base: &str) -> anyhow::Result<Legit> {
        let from = |n: u8| Client::from_address(base, IpAddr::V4(Ipv4Addr::new(127, 0, 9, n)));
        let tag = std::process::id();
        let (a, b) = (format!("legit_a{tag}"), format!("legit_b{tag}"));
        let mut alice = from(1)?;
        let mut bob = from(1)?;
        for name in [&a, &b] {
            from(1)?
                .register(name, super::super::admin::PROVISIONED_PASSWORD)
                .await?;
        }
        alice.login(&a, super::super::admin::PROVISIONED_PASSWORD).await?;
        let bob_id = bob.login(&b, super::super::admin::PROVISIONED_PASSWORD).await?.user_id;
        let mut conn = alice.connect().await?;
        while !matches!(conn.next_event().await?, ServerEvent::PendingComplete { .. }) {}
        Ok(Legit {
            base: base.to_owned(),
            alice: conn,
            bob_id,
            next_address: 0,
            sent: 0,
            http: reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 9, 2)))
                .build()?,
        })
    }

    /// One round of probes, added to `into`.
    async fn probe(&mut self, into: &mut Probes) {
        self.next_address += 1;
        let n = self.next_address;
        let address = IpAddr::V4(Ipv4Addr::new(127, 10, (n >> 8) as u8, n as u8));
        let name = format!("legit_a{}", std::process::id());
        // Made before the clock starts: a new HTTP client reads the system's
        // certificate authorities, which takes longer than the login.
        let Ok(mut client) = Client::from_address(&self.base, address) else {
            into.login.push(ms(Instant::now(), false));
            return;
        };
        let started = Instant::now();
        let login = client.login(&name, super::super::admin::PROVISIONED_PASSWORD);
        let ok = matches!(tokio::time::timeout(PROBE_DEADLINE, login).await, Ok(Ok(_)));
        into.login.push(ms(started, ok));

        self.sent += 1;
        let key = format!("probe-{}", self.sent);
        let started = Instant::now();
        let send = async {
            self.alice.send_message(self.bob_id, "probe", Some(&key)).await?;
            loop {
                if let ServerEvent::MessageAck {
                    client_msg_id: Some(k), ..
                } = self.alice.next_event().await?
                    && k == key
                {
                    return Ok::<_, dyad_client::ClientError>(());
                }
            }
        };
        let ok = matches!(tokio::time::timeout(PROBE_DEADLINE, send).await, Ok(Ok(())));
        into.send.push(ms(started, ok));

        let started = Instant::now();
        let health = self.http.get(format!("{}/healthz", self.base)).send();
        let ok = matches!(tokio::time::timeout(PROBE_DEADLINE, health).await, Ok(Ok(r)) if r.status().is_success());
        into.health.push(ms(started, ok));
    }
}

fn ms(started: Instant, ok: bool) -> f64 {
    if ok {
        started.elapsed().as_secs_f64() * 1000.0
    } else {
        PROBE_DEADLINE.as_secs_f64() * 1000.0
    }
}

pub async fn run(args: AttackArgs) -> anyhow::Result<()> {
    let (url, pid, server) = match &args.url {
        Some(url) => (url.clone(), args.server_pid, None),
        None => {
            let dir = tempfile::tempdir()?;
            let db = format!("sqlite://{}", dir.path().join("attack.db").display());
            let (child, url) = super::spawn_server(&db, &["--log", "error"], &[]).await?;
            (url, child.id(), Some((child, dir)))
        }
    };
    let rss = || {
        pid.and_then(|p| status_bytes(p, "VmRSS:"))
            .map_or(0.0, |b| b as f64 / 1048576.0)
    };
    let mut legit = Legit::new(&url).await.context("setting up the legitimate user")?;
    let mut before = Probes::default();
    for _ in 0..5 {
        legit.probe(&mut before).await;
    }
    let rss_before = rss();

    let stop = CancellationToken::new();
    let hits = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let attack = start(args.attack, &url, stop.clone(), hits.clone(), refused.clone()).await?;
    let mut during = Probes::default();
    let mut peak = rss_before;
    let started = Instant::now();
    while started.elapsed() < args.duration {
        legit.probe(&mut during).await;
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    attack.join_all().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss();

    println!("attack {:?} for {:?} against {url}", args.attack, args.duration);
    println!(
        "  attacker: {} requests or connections answered, {} refused or closed",
        hits.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    println!("  server RSS (MiB): before {rss_before:.1}, peak during {peak:.1}, after {rss_after:.1}");
    println!("  legitimate user (ms)      before p50      during p50   during max   probes");
    for (what, b, d) in [
        ("login", &before.login, &during.login),
        ("send -> ack", &before.send, &during.send),
        ("GET /healthz", &before.health, &during.health),
    ] {
        println!(
            "  {what:<22} {:>12.1} {:>15.1} {:>12.1} {:>8}",
            median(b),
            median(d),
            d.iter().copied().fold(0.0, f64::max),
            d.len()
        );
    }
    if let Some((mut child, _dir)) = server {
        let _ = child.kill().await;
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Starts the attack's tasks; they run until `stop`.
async fn start(
    attack: Attack,
    base: &str,
    stop: CancellationToken,
    hits: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> anyhow::Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    let count = move |status: Option<u16>, hits: &AtomicU64, refused: &AtomicU64| match status {
        Some(s) if s < 400 => hits.fetch_add(1, Ordering::Relaxed),
        _ => refused.fetch_add(1, Ordering::Relaxed),
    };
    let http_from = |a: u8, b: u8| {
        reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::new(127, 20, a, b)))
            .build()
    };
    match attack {
        Attack::BigNames => {
            for n in 0..10u8 {
                let (http, stop, hits, refused) = (http_from(1, n)?, stop.clone(), hits.clone(), refused.clone());
                let url_base = base.to_owned();
                tasks.spawn(async move {
                    let big = "x".repeat(1 << 20);
                    let mut i = 0u64;
                    while !stop.is_cancelled() {
                        i += 1;
                        let r = http
                            .post(format!("{url_base}/api/v1/sessions"))
                            .json(&serde_json::json!({"username": format!("{big}{i}"), "password": "wrong password"}))
                            .send()
                            .await;
                        count(r.ok().map(|r| r.status().as_u16()), &hits, &refused);
                    }
                });
            }
        }
        Attack::LoginFlood => {
            let spread = (0..256)
                .map(|_| 0u8)
                .chain((1..=30).flat_map(|a| std::iter::repeat_n(a, 8)));
            for a in spread {
                let (http, stop, hits, refused) = (http_from(2, a)?, stop.clone(), hits.clone(), refused.clone());
                let url_base = base.to_owned();
                tasks.spawn(async move {
                    while !stop.is_cancelled() {
                        let r = http
                            .post(format!("{url_base}/api/v1/sessions"))
                            .json(&serde_json::json!({"username": format!("legit_a{}", std::process::id()), "password": "wrong password"}))
                            .send()
                            .await;
                        count(r.ok().map(|r| r.status().as_u16()), &hits, &refused);
                    }
                });
            }
        }
        Attack::RegisterFlood => {
            let (http, stop, hits, refused) = (http_from(3, 1)?, stop.clone(), hits.clone(), refused.clone());
            let url_base = base.to_owned();
            tasks.spawn(async move {
                let mut i = 0u64;
                while !stop.is_cancelled() {
                    i += 1;
                    let r = http
                        .post(format!("{url_base}/api/v1/users"))
                        .json(&serde_json::json!({"username": format!("flood{}_{i}", std::process::id()), "password": "correct horse"}))
                        .send()
                        .await;
                    count(r.ok().map(|r| r.status().as_u16()), &hits, &refused);
                }
            });
        }
        Attack::IdleSockets => {
            let remote: SocketAddr = base.trim_start_matches("http://").parse()?;
            for a in 0..60u8 {
                for _ in 0..250 {
                    let (stop, hits, refused) = (stop.clone(), hits.clone(), refused.clone());
                    let local = IpAddr::V4(Ipv4Addr::new(127, 30, 0, a));
                    tasks.spawn(async move {
                        let mut buf = [0u8; 512];
                        while !stop.is_cancelled() {
                            let Ok(mut tcp) = tcp_from(remote, local).await else {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            };
                            hits.fetch_add(1, Ordering::Relaxed);
                            // Say nothing; when the server hangs up, dial again.
                            tokio::select! {
                                _ = async { while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {} } => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                }
                                () = stop.cancelled() => {}
                            }
                        }
                    });
                }
            }
        }
        Attack::SocketsPerUser => {
            let mut user = Client::new(base);
            let name = format!("many{}", std::process::id());
            let registrar = Client::from_address(base, IpAddr::V4(Ipv4Addr::new(127, 20, 4, 1)))?;
            registrar.register(&name, "correct horse").await?;
            user.login(&name, "correct horse").await?;
            let token = user.token().unwrap_or_default().to_owned();
            let url_base = base.to_owned();
            tasks.spawn(async move {
                let mut held = Vec::new();
                for _ in 0..3000 {
                    if stop.is_cancelled() {
                        break;
                    }
                    match Connection::open(&url_base, &token).await {
                        Ok(conn) => {
                            hits.fetch_add(1, Ordering::Relaxed);
                            held.push(conn);
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                stop.cancelled().await;
            });
        }
    }
    Ok(tasks)
}
