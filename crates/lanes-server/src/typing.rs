//! Typing indicators: ephemeral, in memory only, never stored. A `start` is announced to the
//! conversation's other online members when the user was not already typing there, and a
//! `stop` when they say so, send a message, or let `typing_ttl_ms` pass without a refresh (a
//! sweeper expires them). Starts are rate-limited per user; both are dropped first for busy
//! connections. In a conversation with more than `typing_online_max` members online a start is
//! accepted and goes to no one: each would cost as many frames as a message, for nothing stored,
//! and a user alternating start and stop could make the server write thousands of frames for
//! each of theirs.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lanes_hub::{Delivery, Hub};
use lanes_protocol::codec::encode_server;
use lanes_protocol::{ConversationId, ErrorCode, ErrorFrame, ServerFrame, TypingState, UserId};

use crate::metrics::Metrics;

/// Who is typing where, until when.
pub(crate) struct Typing {
    hub: Arc<Hub<Utf8Bytes>>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    online_max: usize,
    starts: DefaultKeyedRateLimiter<UserId>,
    /// Conversation → who types there, until when. Looked up on every send, so keyed to need no
    /// allocation for the common "nobody is typing" case.
    active: Mutex<HashMap<ConversationId, HashMap<UserId, Instant>>>,
}

impl Typing {
    /// Typing state that expires after `ttl`, with at most `per_sec` starts per second per user
    /// (bursts of `burst`), announced where at most `online_max` members are online.
    pub(crate) fn new(
        hub: Arc<Hub<Utf8Bytes>>,
        metrics: Arc<Metrics>,
        ttl: Duration,
        online_max: usize,
        per_sec: NonZeroU32,
        burst: NonZeroU32,
    ) -> Typing {
        Typing {
            hub,
            metrics,
            ttl,
            online_max,
            starts: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            active: Mutex::new(HashMap::new()),
        }
    }

    /// A `typing` frame from `user_id`, whose connection the hub knows.
    pub(crate) fn update(
        &self,
        user_id: &UserId,
        conversation_id: ConversationId,
        state: TypingState,
    ) -> Result<(), ErrorFrame> {
        if !self.hub.is_online_member(user_id, conversation_id) {
            return Err(ErrorFrame::new(
                ErrorCode::NotFound,
                "conversation not found",
                None,
            ));
        }
        self.update_member(user_id, conversation_id, state)
    }

    /// A typing change from a member (checked by the caller, e.g. against the store).
    pub(crate) fn update_member(
        &self,
        user_id: &UserId,
        conversation_id: ConversationId,
        state: TypingState,
    ) -> Result<(), ErrorFrame> {
        match state {
            TypingState::Start => {
                if let Err(not_until) = self.starts.check_key(user_id) {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let mut error = ErrorFrame::new(
                        ErrorCode::RateLimited,
                        "too many typing events; slow down",
                        None,
                    );
                    error.retry_after_ms =
                        Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
                    return Err(error);
                }
                if self.hub.online_members(conversation_id) > self.online_max {
                    return Ok(());
                }
                let fresh = self
                    .lock()
                    .entry(conversation_id)
                    .or_default()
                    .insert(user_id.clone(), Instant::now() + self.ttl)
                    .is_none();
                if fresh {
                    self.announce(conversation_id, user_id, TypingState::Start);
                }
            }
            TypingState::Stop => self.stop(user_id, conversation_id),
        }
        Ok(())
    }

    /// The user stopped typing there (said so, or sent a message).
    pub(crate) fn stop(&self, user_id: &UserId, conversation_id: ConversationId) {
        let removed = {
            let mut active = self.lock();
            let Some(typing) = active.get_mut(&conversation_id) else {
                return;
            };
            let removed = typing.remove(user_id).is_some();
            if typing.is_empty() {
                active.remove(&conversation_id);
            }
            removed
        };
        if removed {
            self.announce(conversation_id, user_id, TypingState::Stop);
        }
    }

    /// Expires starts that were not refreshed in time.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut expired = Vec::new();
        self.lock().retain(|conversation_id, typing| {
            typing.retain(|user_id, deadline| {
                let keep = *deadline > now;
                if !keep {
                    expired.push((*conversation_id, user_id.clone()));
                }
                keep
            });
            !typing.is_empty()
        });
        for (conversation_id, user_id) in expired {
            self.announce(conversation_id, &user_id, TypingState::Stop);
        }
        self.starts.retain_recent();
    }

    fn announce(&self, conversation_id: ConversationId, user_id: &UserId, state: TypingState) {
        Metrics::add(&self.metrics.typing_events, 1);
        let payload = Utf8Bytes::from(encode_server(&ServerFrame::Typing {
            conversation_id,
            user_id: user_id.clone(),
            state,
        }));
        self.hub.signal(
            conversation_id,
            |member| (member != user_id).then(|| payload.clone()),
            Delivery::Droppable,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConversationId, HashMap<UserId, Instant>>> {
        // Inserts and removes cannot leave the map half-changed.
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the sweeper every quarter TTL until the server stops.
pub(crate) fn spawn_sweeper(typing: Arc<Typing>) {
    let period = (typing.ttl / 4).max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            typing.sweep(Instant::now());
        }
    });
}
