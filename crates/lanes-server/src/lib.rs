//! The Lanes server: HTTP routes, the WebSocket transport, the committer (the single writer that
//! group-commits sends), authentication and configuration. `serve(config, shutdown)` runs it.
//! The only crate that knows HTTP.

mod actions;
mod admin;
mod auth;
mod committer;
pub mod config;
mod error;
mod http;
mod listener;
mod longpoll;
mod metrics;
mod openapi;
mod presence;
mod rate_limits;
mod receipts;
mod subscribe;
mod typing;
mod web;
mod wire;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use lanes_hub::Hub;
use lanes_protocol::{StoreEpoch, UnixMillis};
use lanes_store::{Store, StoreError};
use lanes_store_sqlite::{Durability, SqliteStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use crate::auth::AuthConfigError;
use crate::auth::Authenticator;
use crate::committer::CommitRequest;
pub use crate::config::Config;
use crate::config::DurabilityConfig;
use crate::error::ApiError;
pub use crate::openapi::openapi_json;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store could not be opened.
    #[error("open store: {0}")]
    Store(#[from] StoreError),
    /// The auth configuration is unusable.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// Binding or serving the socket failed.
    #[error("listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Shared by every request and connection: one pointer to clone and to hold (every WebSocket
/// connection's task holds one).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    hub: Arc<Hub<Utf8Bytes>>,
    commits: mpsc::Sender<CommitRequest>,
    /// Receipt positions for the receipts writer.
    receipts: mpsc::Sender<lanes_store::MarkerUpdate>,
    typing: Arc<typing::Typing>,
    presence: Arc<presence::Presence>,
    rate_limits: Arc<rate_limits::RateLimits>,
    /// Open WebSocket connections per IP address (`websocket.connections_per_ip_max`).
    connections_by_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// One membership change of a conversation at a time (`http::MembershipLocks`).
    membership: http::MembershipLocks,
    /// Unpaged conversation listings built at once (`http::WHOLE_LISTINGS_MAX`).
    whole_listings: tokio::sync::Semaphore,
    auth: Arc<Authenticator>,
    config: Arc<Config>,
    epoch: StoreEpoch,
    /// Every WebSocket connection's settings, built once.
    connection_config: Arc<lanes_core::ConnectionConfig>,
    durability: &'static str,
    metrics: Arc<metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// Commits queued for the committer before senders wait (backpressure, not an error).
const COMMIT_CHANNEL_LEN_MAX: usize = 16 * 1024;

/// A bound, not yet serving, server: lets the caller print the address before serving.
pub struct Bound {
    listener: TcpListener,
    state: AppState,
    shutdown_sender: watch::Sender<bool>,
    committer: std::thread::JoinHandle<()>,
    committer_stopped: tokio::sync::oneshot::Receiver<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Bound {
    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener.local_addr().map_err(|source| ServeError::Io {
            addr: self.state.config.listen,
            source,
        })
    }

    /// Serves until `shutdown` resolves; then stops accepting, tells every WebSocket client to
    /// reconnect, finishes in-flight commits and acks, and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Bound {
            listener,
            state,
            shutdown_sender,
            committer,
            committer_stopped,
            tls,
        } = self;
        let app = http::router(state.clone());
        let hub = Arc::clone(&state.hub);
        let signal = async move {
            tokio::select! {
                _ = shutdown => {
                    tracing::info!("shutting down: closing connections, finishing commits");
                }
                _ = committer_stopped => {
                    // Without its single writer the server cannot ack anything: stop rather than
                    // look healthy.
                    tracing::error!("the committer stopped unexpectedly; shutting down");
                }
            }
            // The flag first, then the hub: a WebSocket that registers in between sees the
            // flag (ws.rs checks it after registering).
            let _ = shutdown_sender.send(true);
            hub.shut_down();
        };
        let header_read_timeout = Duration::from_millis(state.config.header_read_timeout_ms);
        listener::serve(listener, app, tls, header_read_timeout, signal).await;
        state.presence.store_last_seen_of_everyone().await;
        // Every connection is gone, so every commit sender but the state's is dropped; dropping
        // the state's lets the committer drain its queue and stop.
        drop(state);
        match tokio::task::spawn_blocking(move || committer.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("committer thread failed"),
        }
        Ok(())
    }
}

/// Opens the store, starts the committer and binds the listener.
pub async fn bind(config: Config) -> Result<Bound, ServeError> {
    config.check().map_err(ServeError::Config)?;
    let tls = config
        .tls
        .as_ref()
        .map(listener::tls_acceptor)
        .transpose()
        .map_err(ServeError::Config)?;
    let durability = match config.durability {
        DurabilityConfig::Full => Durability::Full,
        DurabilityConfig::Normal => Durability::Normal,
    };
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir, durability))
        .await
        .map_err(|err| ServeError::Config(format!("store open task failed: {err}")))??;
    match durability {
        Durability::Full => {
            tracing::info!("durability: full (SQLite WAL, synchronous=FULL): an ack means fsync'd")
        }
        Durability::Normal => tracing::warn!(
            "durability: NORMAL (synchronous=NORMAL): acked messages may be lost on power loss \
             or OS crash; do not use in production"
        ),
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let epoch = store.epoch();
    let hub = Arc::new(Hub::new(config.websocket.queue_len_max));
    let metrics = Arc::new(metrics::Metrics::default());
    let (commits, commit_receiver) = mpsc::channel(COMMIT_CHANNEL_LEN_MAX);
    let (committer, committer_stopped) = committer::spawn(
        commit_receiver,
        Arc::clone(&store),
        Arc::clone(&hub),
        Arc::clone(&metrics),
        Duration::from_micros(config.commit_linger_micros),
    )
    .map_err(|err| ServeError::Config(format!("start committer thread: {err}")))?;
    let auth = Arc::new(Authenticator::new(Arc::clone(&store), &config.auth)?);
    let realtime = &config.realtime;
    let receipts = receipts::spawn(
        Arc::clone(&store),
        Arc::clone(&hub),
        Arc::clone(&metrics),
        Duration::from_millis(realtime.receipts_flush_ms),
        realtime.receipts_members_max,
    );
    let (Some(per_sec), Some(burst)) = (
        NonZeroU32::new(realtime.typing_starts_per_sec),
        NonZeroU32::new(realtime.typing_starts_burst),
    ) else {
        return Err(ServeError::Config(
            "typing rate limits must be positive".into(),
        ));
    };
    let typing = Arc::new(typing::Typing::new(
        Arc::clone(&hub),
        Arc::clone(&metrics),
        Duration::from_millis(realtime.typing_ttl_ms),
        realtime.typing_online_max,
        per_sec,
        burst,
    ));
    typing::spawn_sweeper(Arc::clone(&typing));
    let presence = Arc::new(presence::Presence::new(
        Arc::clone(&hub),
        Arc::clone(&store),
        Arc::clone(&metrics),
        Duration::from_millis(realtime.presence_grace_ms),
    ));
    let rate_limits = Arc::new(rate_limits::RateLimits::new(&config.rate_limits));
    {
        let rate_limits = Arc::clone(&rate_limits);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticks.tick().await;
                rate_limits.retain_recent();
            }
        });
    }
    presence::spawn_flusher(
        Arc::clone(&presence),
        Duration::from_millis(realtime.presence_flush_ms),
    );
    let listener = listen(config.listen).map_err(|source| ServeError::Io {
        addr: config.listen,
        source,
    })?;
    let (shutdown_sender, shutdown) = watch::channel(false);
    let state = AppState(Arc::new(Shared {
        store,
        hub,
        commits,
        receipts,
        typing,
        presence,
        rate_limits,
        connections_by_ip: Arc::default(),
        membership: http::MembershipLocks::default(),
        whole_listings: tokio::sync::Semaphore::new(http::WHOLE_LISTINGS_MAX),
        auth,
        connection_config: Arc::new(config.connection_config(epoch.clone())),
        config: Arc::new(config),
        epoch,
        durability: durability.as_str(),
        metrics,
        shutdown,
    }));
    Ok(Bound {
        listener,
        state,
        shutdown_sender,
        committer,
        committer_stopped,
        tls,
    })
}

/// Pending connections the kernel queues before `accept`. tokio's default of 1,024 overflowed
/// in connect bursts (clients then wait for a 1 s SYN retransmit); the kernel caps this at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds and serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    bind(config).await?.serve(shutdown).await
}

/// The server's clock.
pub(crate) fn now_millis() -> UnixMillis {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or(0);
    UnixMillis(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(store);
    let result = tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|err| {
            tracing::error!("store task failed: {err}");
            ApiError::new(lanes_protocol::ErrorCode::Internal, "internal error")
        })?;
    Ok(result?)
}
