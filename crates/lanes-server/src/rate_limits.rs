//! Token buckets (`governor`) on everything a client can repeat: per user for lane events,
//! receipts and typing (typing's own bucket lives in `typing.rs`), per IP address for WebSocket
//! connects, logins and sign-ups. Exceeding one is answered `rate_limited` with a retry-after,
//! never with a silently dropped request or connection.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lanes_protocol::UserId;

use crate::config::{Rate, RateLimitsConfig};
use crate::error::ApiError;

/// One keyed bucket, or none when limits are off.
struct Bucket<K: std::hash::Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    what: &'static str,
}

impl<K: std::hash::Hash + Eq + Clone> Bucket<K> {
    fn new(rate: &Rate, enabled: bool, what: &'static str) -> Bucket<K> {
        let quota = match (NonZeroU32::new(rate.per_sec), NonZeroU32::new(rate.burst)) {
            (Some(per_sec), Some(burst)) if enabled => {
                Some(Quota::per_second(per_sec).allow_burst(burst))
            }
            _ => None,
        };
        Bucket {
            limiter: quota.map(RateLimiter::keyed),
            what,
        }
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::rate_limited(self.what, wait.max(Duration::from_millis(1)))
        })
    }

    fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

/// Every rate limit of the server.
pub(crate) struct RateLimits {
    sends: Bucket<UserId>,
    receipts: Bucket<UserId>,
    connects: Bucket<IpAddr>,
    logins: Bucket<IpAddr>,
    signups: Bucket<IpAddr>,
    memberships: Bucket<UserId>,
}

impl RateLimits {
    pub(crate) fn new(config: &RateLimitsConfig) -> RateLimits {
        let on = config.enabled;
        RateLimits {
            sends: Bucket::new(&config.sends, on, "messages"),
            receipts: Bucket::new(&config.receipts, on, "receipts"),
            connects: Bucket::new(&config.connects, on, "connections from this address"),
            logins: Bucket::new(&config.logins, on, "logins from this address"),
            signups: Bucket::new(&config.signups, on, "sign-ups from this address"),
            memberships: Bucket::new(&config.memberships, on, "conversations and members added"),
        }
    }

    /// A lane event (send, edit, delete, reaction) by `user_id`, over any transport.
    pub(crate) fn send(&self, user_id: &UserId) -> Result<(), ApiError> {
        self.sends.check(user_id)
    }

    /// A `received` or `read` by `user_id`.
    pub(crate) fn receipt(&self, user_id: &UserId) -> Result<(), ApiError> {
        self.receipts.check(user_id)
    }

    /// A WebSocket upgrade from `ip`.
    pub(crate) fn connect(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.connects.check(&ip)
    }

    /// A login attempt from `ip` (argon2 is expensive, passwords are guessable).
    pub(crate) fn login(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.logins.check(&ip)
    }

    /// A sign-up from `ip`.
    pub(crate) fn signup(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.signups.check(&ip)
    }

    /// A conversation created or a member added by `actor`.
    pub(crate) fn membership(&self, actor: &UserId) -> Result<(), ApiError> {
        self.memberships.check(actor)
    }

    /// Forgets buckets that are full again, so memory follows active keys only.
    pub(crate) fn retain_recent(&self) {
        self.sends.retain_recent();
        self.receipts.retain_recent();
        self.connects.retain_recent();
        self.logins.retain_recent();
        self.signups.retain_recent();
        self.memberships.retain_recent();
    }
}
