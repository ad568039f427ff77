//! Server configuration: what `lanes serve` reads from its config file, environment and flags.
//! Every field has a default, so an empty configuration is a working single-node server.

use std::net::SocketAddr;
use std::path::PathBuf;

use lanes_core::Limits;
use serde::Deserialize;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityConfig {
    /// fsync on every commit (SQLite `synchronous=FULL`). The default and the Lanes promise.
    Full,
    /// SQLite `synchronous=NORMAL`: an acked message survives a process crash but may be lost
    /// on power loss or OS crash. Logged loudly at start-up.
    Normal,
}

/// Which credentials the server accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Password accounts (`/v1/register`, `/v1/login`).
    pub password: bool,
    /// Lifetime of a session token, in seconds.
    pub session_ttl_secs: u64,
    /// Shared secret for HS256 application JWTs.
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key for RS256 or EdDSA application JWTs.
    pub jwt_public_key_pem: Option<String>,
    /// `RS256` or `EdDSA`, for `jwt_public_key_pem`.
    pub jwt_algorithm: Option<String>,
    /// Required `iss` claim, if set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub jwt_audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            password: true,
            session_ttl_secs: 30 * 24 * 3600,
            jwt_hs256_secret: None,
            jwt_public_key_pem: None,
            jwt_algorithm: None,
            jwt_issuer: None,
            jwt_audience: None,
        }
    }
}

/// Limits a deployment may tighten.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message body, in bytes (at most 65536).
    pub message_body_bytes_max: usize,
    /// Most members of a group.
    pub group_members_max: usize,
    /// Most conversations one user may be in (as many as a `hello` may carry cursors for).
    pub conversations_per_user_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let limits = Limits::default();
        LimitsConfig {
            message_body_bytes_max: limits.message_body_bytes_max,
            group_members_max: limits.group_members_max,
            conversations_per_user_max: lanes_protocol::limits::HELLO_CURSORS_MAX,
        }
    }
}

/// WebSocket timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// How long a new connection may take to send a valid `hello`, in milliseconds.
    pub hello_timeout_ms: u64,
    /// How often the server pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// How long a silent peer is kept, in milliseconds.
    pub idle_timeout_ms: u64,
    /// How long one write to a peer may stall before the connection is dropped, in milliseconds.
    pub write_timeout_ms: u64,
    /// Frames queued for one connection before it is disconnected as a slow consumer.
    pub queue_len_max: usize,
    /// Browser origins (`https://app.example`) allowed to open WebSockets besides the server's
    /// own; `"*"` allows any. Requests without an `Origin` (non-browser clients) are allowed.
    pub allowed_origins: Vec<String>,
    /// Open WebSocket connections one user may have (devices, tabs).
    pub connections_per_user_max: usize,
    /// Open WebSocket connections from one IP address.
    pub connections_per_ip_max: usize,
}

impl Default for WebSocketConfig {
    fn default() -> WebSocketConfig {
        WebSocketConfig {
            hello_timeout_ms: 10_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 30_000,
            queue_len_max: lanes_protocol::limits::CONNECTION_QUEUE_LEN_MAX,
            allowed_origins: Vec::new(),
            connections_per_user_max: 64,
            connections_per_ip_max: 20_000,
        }
    }
}

/// TLS (rustls): serve HTTPS and WSS with this certificate chain and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_path: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// A token bucket: `per_sec` sustained, `burst` at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_sec: u32,
    /// Requests allowed at once.
    pub burst: u32,
}

impl Rate {
    const fn new(per_sec: u32, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }
}

/// Rate limits on what clients can repeat; over a limit they get `rate_limited` with a
/// retry-after.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// All limits on (the default) or off (benchmarks).
    pub enabled: bool,
    /// Lane events (sends, edits, deletes, reactions) per user.
    pub sends: Rate,
    /// `received` and `read` per user.
    pub receipts: Rate,
    /// WebSocket connects per IP address.
    pub connects: Rate,
    /// Logins per IP address.
    pub logins: Rate,
    /// Sign-ups per IP address.
    pub signups: Rate,
    /// Conversations created and members added per acting user (not through the admin API):
    /// members are added without their consent, and each addition counts against the added
    /// user's `limits.conversations_per_user_max`.
    pub memberships: Rate,
}

impl Default for RateLimitsConfig {
    fn default() -> RateLimitsConfig {
        RateLimitsConfig {
            enabled: true,
            sends: Rate::new(50, 200),
            receipts: Rate::new(50, 200),
            connects: Rate::new(200, 1000),
            logins: Rate::new(5, 20),
            signups: Rate::new(2, 10),
            memberships: Rate::new(5, 50),
        }
    }
}

/// The admin API for application backends (`/v1/admin/...`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Keys accepted as `Authorization: Bearer <key>` on `/v1/admin/...`; at least 32 bytes
    /// each. Empty (the default): the admin API is off.
    pub api_keys: Vec<String>,
}

/// Receipts, typing and presence.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// How long receipt positions are gathered before one transaction stores them all and the
    /// members are told, in milliseconds.
    pub receipts_flush_ms: u64,
    /// A typing `start` not refreshed within this many milliseconds becomes a `stop`.
    pub typing_ttl_ms: u64,
    /// Typing starts allowed per user per second, sustained.
    pub typing_starts_per_sec: u32,
    /// Typing starts allowed per user in a burst.
    pub typing_starts_burst: u32,
    /// Largest number of online members a conversation may have for typing to be announced
    /// there; beyond, starts are accepted and go to no one.
    pub typing_online_max: usize,
    /// How long a user whose last connection ended still shows as before, in milliseconds.
    pub presence_grace_ms: u64,
    /// How often presence changes are sent to watchers, in milliseconds.
    pub presence_flush_ms: u64,
    /// Largest conversation whose members are sent each other's receipt positions; in larger
    /// ones each member gets only their own (others' on request).
    pub receipts_members_max: usize,
}

impl Default for RealtimeConfig {
    fn default() -> RealtimeConfig {
        RealtimeConfig {
            // Longer gathers larger batches, whose transaction holds the writer longer: at 50 ms,
            // sends waiting behind it doubled the p99 latency (docs/BENCHMARKS.md).
            receipts_flush_ms: 10,
            typing_ttl_ms: 6_000,
            typing_starts_per_sec: 2,
            typing_starts_burst: 10,
            typing_online_max: 1_000,
            presence_grace_ms: 5_000,
            presence_flush_ms: 250,
            receipts_members_max: lanes_protocol::limits::RECEIPTS_MEMBERS_DEFAULT,
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite database lives.
    pub data_dir: PathBuf,
    /// fsync policy.
    pub durability: DurabilityConfig,
    /// How long the committer waits for more sends before committing a batch, in microseconds.
    /// 0 (the default) commits whatever arrived while the previous commit ran.
    pub commit_linger_micros: u64,
    /// Credentials.
    pub auth: AuthConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// WebSocket timing.
    pub websocket: WebSocketConfig,
    /// Receipts, typing and presence.
    pub realtime: RealtimeConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Rate limits.
    pub rate_limits: RateLimitsConfig,
    /// TLS; absent: plain HTTP (put a TLS-terminating proxy in front, or set this).
    pub tls: Option<TlsConfig>,
    /// How long a client may take to send a request's headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request's body after its headers, in milliseconds.
    pub body_read_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./lanes-data"),
            durability: DurabilityConfig::Full,
            commit_linger_micros: 0,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            websocket: WebSocketConfig::default(),
            realtime: RealtimeConfig::default(),
            admin: AdminConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            tls: None,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Why this configuration cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        self.core_limits().check()?;
        if self.commit_linger_micros > 100_000 {
            return Err("commit_linger_micros must be at most 100000 (0.1 s)".into());
        }
        let websocket = &self.websocket;
        if websocket.queue_len_max == 0
            || websocket.queue_len_max > lanes_protocol::limits::CONNECTION_QUEUE_LEN_MAX
        {
            return Err(format!(
                "websocket.queue_len_max must be 1 to {}",
                lanes_protocol::limits::CONNECTION_QUEUE_LEN_MAX
            ));
        }
        if websocket.hello_timeout_ms == 0
            || websocket.ping_interval_ms == 0
            || websocket.write_timeout_ms == 0
        {
            return Err("websocket timeouts must be positive".into());
        }
        if websocket.connections_per_user_max == 0 || websocket.connections_per_ip_max == 0 {
            return Err("websocket connection limits must be positive".into());
        }
        if websocket.idle_timeout_ms <= websocket.ping_interval_ms {
            return Err("websocket.idle_timeout_ms must exceed ping_interval_ms".into());
        }
        if self.limits.conversations_per_user_max == 0 {
            return Err("limits.conversations_per_user_max must be positive".into());
        }
        if self.header_read_timeout_ms == 0 {
            return Err("header_read_timeout_ms must be positive".into());
        }
        if self.body_read_timeout_ms == 0 {
            return Err("body_read_timeout_ms must be positive".into());
        }
        let limits = &self.rate_limits;
        if [
            &limits.sends,
            &limits.receipts,
            &limits.connects,
            &limits.logins,
            &limits.signups,
            &limits.memberships,
        ]
        .iter()
        .any(|rate| rate.per_sec == 0 || rate.burst == 0)
        {
            return Err("rate limits must be positive (turn them off with enabled = false)".into());
        }
        if self.admin.api_keys.iter().any(|key| key.len() < 32) {
            return Err("admin.api_keys must be at least 32 bytes each".into());
        }
        let realtime = &self.realtime;
        if realtime.receipts_flush_ms > 10_000 || realtime.presence_flush_ms > 10_000 {
            return Err("realtime flush intervals must be at most 10000 ms".into());
        }
        if realtime.presence_flush_ms == 0 || realtime.typing_ttl_ms == 0 {
            return Err("realtime.presence_flush_ms and typing_ttl_ms must be positive".into());
        }
        if realtime.typing_starts_per_sec == 0 || realtime.typing_starts_burst == 0 {
            return Err("realtime typing rate limits must be positive".into());
        }
        if realtime.receipts_members_max < 2 || realtime.typing_online_max < 2 {
            return Err(
                "realtime.receipts_members_max and typing_online_max must be at least 2".into(),
            );
        }
        Ok(())
    }

    /// The per-connection settings of the state machine.
    pub fn connection_config(
        &self,
        epoch: lanes_protocol::StoreEpoch,
    ) -> lanes_core::ConnectionConfig {
        let mut config = lanes_core::ConnectionConfig::new(epoch);
        config.limits = self.core_limits();
        config.hello_timeout = std::time::Duration::from_millis(self.websocket.hello_timeout_ms);
        config.ping_interval = std::time::Duration::from_millis(self.websocket.ping_interval_ms);
        config.idle_timeout = std::time::Duration::from_millis(self.websocket.idle_timeout_ms);
        config.receipts_members_max = self.realtime.receipts_members_max;
        config
    }

    /// The limits as the core uses them.
    pub fn core_limits(&self) -> Limits {
        Limits {
            message_body_bytes_max: self.limits.message_body_bytes_max,
            group_members_max: self.limits.group_members_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_and_typing_are_shared_at_least_between_two() {
        let refused =
            Err("realtime.receipts_members_max and typing_online_max must be at least 2".into());
        let mut config = Config::default();
        assert_eq!(config.check(), Ok(()));
        config.realtime.receipts_members_max = 1;
        assert_eq!(config.check(), refused);
        config.realtime.receipts_members_max = 2;
        assert_eq!(config.check(), Ok(()));
        config.realtime.typing_online_max = 1;
        assert_eq!(config.check(), refused);
        config.realtime.typing_online_max = 2;
        assert_eq!(config.check(), Ok(()));
    }
}
