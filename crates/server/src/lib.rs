//! The dyad chat service and its gateway.
//!
//! [`serve`] runs a whole node on a listener it is handed: REST and WebSocket
//! routes ([`gateway`]), accounts ([`accounts`]), the group commit
//! ([`committer`]) and the hub of live connections ([`hub`]), which shares
//! [`presence`] and events ([`bus`]) with other nodes, if any ([`cluster`]).
#![warn(missing_docs)]

pub mod abuse;
pub mod accounts;
pub mod bus;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod committer;
pub mod config;
pub use dyad_protocol::domain;
pub mod errors;
pub mod flood;
mod gateway;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod presence;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dyad_store::{MessageStore, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use abuse::AbuseGuard;
use accounts::Accounts;
use bus::{Payload, Revoked};
use cluster::Shared;
use committer::GroupCommit;
use flood::FloodControl;
use hub::{CloseReason, Hub};
use metrics::Metrics;

/// How long shutdown waits for connections to send their close frames.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The shared state of a running node.
pub(crate) struct App {
    config: Config,
    store: Arc<dyn MessageStore>,
    accounts: Arc<Accounts>,
    guard: Arc<AbuseGuard>,
    hub: Arc<Hub>,
    commits: GroupCommit,
    flood: FloodControl,
    metrics: Arc<Metrics>,
    connections: TaskTracker,
    shutdown: CancellationToken,
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed at start-up.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// Redis could not be reached at start-up.
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    /// The account service could not start (no randomness for its decoy hash).
    #[error("accounts: {0}")]
    Accounts(#[source] accounts::AccountError),
    /// The HTTP task ended abnormally (it panicked).
    #[error("http: {0}")]
    Http(#[from] tokio::task::JoinError),
}

/// Serves dyad on `listener` until `shutdown` resolves, then stops cleanly:
/// it stops accepting, stops reading frames, commits and acks every write in
/// flight, closes each WebSocket with a close frame (1001), and returns.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn MessageStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::default());
    let shared = match &config.cluster {
        Some(c) => Shared::join(c).await?,
        None => Shared::alone(),
    };
    let hub = Arc::new(Hub::new(store.clone(), metrics.clone(), config.presence_grace, shared));
    let (commits, commit_task) = GroupCommit::start(store.clone(), hub.clone(), metrics.clone(), config.max_batch);
    let guard = Arc::new(AbuseGuard::new(config.abuse.clone(), metrics.guard.clone()));
    let accounts =
        Arc::new(Accounts::new(store.clone(), config.token_ttl, guard.clone()).map_err(ServeError::Accounts)?);
    // Sessions revoked on other nodes leave the session cache here too.
    let to_accounts = Arc::downgrade(&accounts);
    hub.start(move |payload| {
        if let (Payload::Revoked { user, revoked }, Some(accounts)) = (payload, to_accounts.upgrade()) {
            match revoked {
                Revoked::Session(session) => accounts.forget_session(*session),
                Revoked::Account => accounts.forget_user(*user),
            }
        }
    })
    .await;
    let heartbeat = tokio::spawn({
        let hub = hub.clone();
        async move {
            let mut tick = tokio::time::interval(hub.renew_every());
            loop {
                tick.tick().await;
                hub.renew_presence().await;
            }
        }
    });
    let app = Arc::new(App {
        flood: FloodControl::new(config.rate_limit, config.rate_burst),
        config,
        store,
        accounts,
        guard,
        hub,
        commits,
        metrics,
        connections: TaskTracker::new(),
        shutdown: CancellationToken::new(),
    });
    // Housekeeping: forget full flood buckets; every minute, store last_seen
    // and when sessions were last used.
    let sweeper = tokio::spawn({
        let app = app.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            for round in 1u64.. {
                every.tick().await;
                app.flood.sweep();
                if round % 6 == 0 {
                    app.hub.persist_last_seen().await;
                    persist_sessions_used(&app).await;
                }
            }
        }
    });

    // Sessions revoked behind this node's back close within a check.
    let session_check = tokio::spawn({
        let app = app.clone();
        async move {
            let mut every = tokio::time::interval(app.config.session_check.max(Duration::from_millis(10)));
            every.tick().await;
            loop {
                every.tick().await;
                match app.hub.close_sessions_revoked_in_store().await {
                    Ok(revoked) => revoked.into_iter().for_each(|id| app.accounts.forget_session(id)),
                    Err(e) => tracing::warn!(error = %e, "could not check sessions for revocations"),
                }
            }
        }
    });

    let stop = app.shutdown.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let http = tokio::spawn(
        listener::Listener {
            tcp: listener,
            router: gateway::router(app.clone()),
            guard: app.guard.clone(),
            metrics: app.metrics.clone(),
            max_connections: app.config.max_connections,
            request_deadline: app.config.request_deadline,
            tls: app.config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            trusted_proxies: app.config.trusted_proxies.clone(),
        }
        .run(app.shutdown.clone(), CLOSE_WAIT),
    );
    app.shutdown.cancelled().await;
    tracing::info!("shutting down: finishing writes in flight");
    app.hub.stop_reading_all();

    // Readers have stopped; everything they queued is committed and acked
    // before the sockets close.
    if app.commits.flush().await.is_err() {
        tracing::warn!("group commit had already stopped");
    }
    app.hub.close_all(CloseReason::SHUTDOWN);
    app.connections.close();
    if tokio::time::timeout(CLOSE_WAIT, app.connections.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    app.hub.persist_last_seen().await;
    persist_sessions_used(&app).await;
    sweeper.abort();
    session_check.abort();
    heartbeat.abort();
    // After the heartbeat, which would renew it.
    app.hub.leave().await;
    http.await?;
    drop(app);
    let _ = commit_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Stores when sessions were last used: those that made a request since
/// the last time, and those with a WebSocket open here (now).
async fn persist_sessions_used(app: &App) {
    let now = clock::now_ms();
    // A session with an open socket here is in use now, whatever else it did.
    let mut used: std::collections::HashMap<_, _> = app.accounts.take_used().into_iter().collect();
    used.extend(app.hub.open_sessions().into_iter().map(|s| (s, now)));
    let used: Vec<_> = used.into_iter().collect();
    if !used.is_empty()
        && let Err(e) = app.store.touch_sessions(&used).await
    {
        tracing::warn!(error = %e, "could not store when sessions were last used");
    }
}
