//! Presence: online / away / offline with last-seen, in memory, driven by connections (whose
//! liveness the heartbeat and idle timeout guarantee). A user with no connection left stays as
//! they were for `presence_grace_ms`, so a quick reconnect does not flap offline→online. Clients
//! watch only the users they show (`watch_presence`, at most `PRESENCE_WATCH_MAX`), and only
//! users who share a conversation with them; changes are collected and sent every
//! `presence_flush_ms`, one frame per watching connection, so a flapping user costs at most one
//! update per flush. Last-seen times are stored when users go offline.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use lanes_hub::{ConnectionId, Delivery, Hub};
use lanes_protocol::codec::encode_server;
use lanes_protocol::{PresenceState, ServerFrame, UnixMillis, UserId, UserPresence};
use lanes_store::Store;

use crate::metrics::Metrics;
use crate::now_millis;

#[derive(Default)]
struct UserState {
    /// Each live connection and whether it said it is away.
    connections: HashMap<ConnectionId, bool>,
    /// With no connection left: when the user becomes offline.
    offline_at: Option<Instant>,
    /// What watchers were last told (or would be).
    shown: Option<PresenceState>,
}

#[derive(Default)]
struct Inner {
    /// Users with a connection, or within their grace period.
    users: HashMap<UserId, UserState>,
    /// Watched user → the connections watching them.
    watchers: HashMap<UserId, HashSet<(UserId, ConnectionId)>>,
    /// Watching connection → whom it watches.
    watching: HashMap<ConnectionId, Vec<UserId>>,
    /// When users went offline since start (the store has older ones).
    last_seen: HashMap<UserId, UnixMillis>,
    /// Users whose shown state changed since the last flush.
    changed: HashSet<UserId>,
    /// Grace periods in the order they end (the grace is the same for all), each with its
    /// user: a flush takes only those that ended instead of looking at every user. An entry
    /// whose user came back (or left again later) no longer matches `offline_at` and is skipped.
    expiring: VecDeque<(Instant, UserId)>,
}

/// The presence table.
pub(crate) struct Presence {
    hub: Arc<Hub<Utf8Bytes>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    grace: Duration,
    inner: Mutex<Inner>,
}

impl Inner {
    /// What `user_id` should be shown as now.
    fn current(&self, user_id: &UserId) -> PresenceState {
        match self.users.get(user_id) {
            Some(user) if user.connections.is_empty() => {
                user.shown.unwrap_or(PresenceState::Online)
            }
            Some(user) if user.connections.values().all(|away| *away) => PresenceState::Away,
            Some(_) => PresenceState::Online,
            None => PresenceState::Offline,
        }
    }

    fn refresh(&mut self, user_id: &UserId) {
        let state = self.current(user_id);
        if let Some(user) = self.users.get_mut(user_id)
            && user.shown != Some(state)
        {
            user.shown = Some(state);
            self.changed.insert(user_id.clone());
        }
    }

    fn connect(&mut self, user_id: &UserId, connection_id: ConnectionId) {
        let user = self.users.entry(user_id.clone()).or_default();
        user.connections.insert(connection_id, false);
        user.offline_at = None;
        self.refresh(user_id);
    }

    /// The connection ended; with it the user's last, the user goes offline at `offline_at`.
    fn disconnect(&mut self, user_id: &UserId, connection_id: ConnectionId, offline_at: Instant) {
        self.unwatch(user_id, connection_id);
        if let Some(user) = self.users.get_mut(user_id) {
            user.connections.remove(&connection_id);
            if user.connections.is_empty() {
                user.offline_at = Some(offline_at);
                self.expiring.push_back((offline_at, user_id.clone()));
            }
        }
        self.refresh(user_id);
    }

    /// Takes out the users whose grace period ended by `now`.
    fn expire(&mut self, now: Instant) -> Vec<UserId> {
        let mut expired = Vec::new();
        while let Some((at, _)) = self.expiring.front()
            && *at <= now
        {
            let Some((at, user_id)) = self.expiring.pop_front() else {
                break;
            };
            if self
                .users
                .get(&user_id)
                .is_some_and(|user| user.offline_at == Some(at))
            {
                self.users.remove(&user_id);
                expired.push(user_id);
            }
        }
        expired
    }

    fn watch(&mut self, watcher: &(UserId, ConnectionId), watched: UserId) {
        self.watchers
            .entry(watched.clone())
            .or_default()
            .insert(watcher.clone());
        self.watching.entry(watcher.1).or_default().push(watched);
    }

    /// The connection `connection_id` of `user_id` watches nobody any more: each of its
    /// entries is removed by key, not by a search of everyone watching the same user.
    fn unwatch(&mut self, user_id: &UserId, connection_id: ConnectionId) {
        let Some(watched) = self.watching.remove(&connection_id) else {
            return;
        };
        let watcher = (user_id.clone(), connection_id);
        for watched in watched {
            if let Some(watchers) = self.watchers.get_mut(&watched) {
                watchers.remove(&watcher);
                if watchers.is_empty() {
                    self.watchers.remove(&watched);
                }
            }
        }
    }
}

impl Presence {
    /// A presence table whose users go offline `grace` after their last connection.
    pub(crate) fn new(
        hub: Arc<Hub<Utf8Bytes>>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        grace: Duration,
    ) -> Presence {
        Presence {
            hub,
            store,
            metrics,
            grace,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change below is a few map updates that cannot be left half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection of `user_id` is live.
    pub(crate) fn connected(&self, user_id: &UserId, connection_id: ConnectionId) {
        self.lock().connect(user_id, connection_id);
    }

    /// A connection of `user_id` ended.
    pub(crate) fn disconnected(&self, user_id: &UserId, connection_id: ConnectionId) {
        let mut inner = self.lock();
        // Taken under the lock, so the grace periods are queued in the order they end.
        let offline_at = Instant::now() + self.grace;
        inner.disconnect(user_id, connection_id, offline_at);
    }

    /// Every current connection of `user_id` is away (or back): the HTTP `POST /v1/presence`.
    pub(crate) fn set_away_all(&self, user_id: &UserId, away: bool) {
        let mut inner = self.lock();
        if let Some(user) = inner.users.get_mut(user_id) {
            for flag in user.connections.values_mut() {
                *flag = away;
            }
        }
        inner.refresh(user_id);
    }

    /// A connection said it is away (or back).
    pub(crate) fn set_away(&self, user_id: &UserId, connection_id: ConnectionId, away: bool) {
        let mut inner = self.lock();
        if let Some(flag) = inner
            .users
            .get_mut(user_id)
            .and_then(|user| user.connections.get_mut(&connection_id))
        {
            *flag = away;
        }
        inner.refresh(user_id);
    }

    /// Replaces what a connection watches with those of `candidates` who share a conversation
    /// with `user_id`, and returns their presence now.
    pub(crate) async fn watch(
        &self,
        user_id: &UserId,
        connection_id: ConnectionId,
        candidates: Vec<UserId>,
    ) -> Result<ServerFrame, crate::error::ApiError> {
        let users = self.peek(user_id, candidates, Some(connection_id)).await?;
        Ok(ServerFrame::Presence { users })
    }

    /// The presence now of those of `candidates` who share a conversation with `user_id`;
    /// with `watcher`, that connection watches them from now on (replacing what it watched).
    pub(crate) async fn peek(
        &self,
        user_id: &UserId,
        candidates: Vec<UserId>,
        watcher: Option<ConnectionId>,
    ) -> Result<Vec<UserPresence>, crate::error::ApiError> {
        let viewer = user_id.clone();
        let visible = crate::blocking(&self.store, move |store| {
            store.presence_visible(&viewer, &candidates)
        })
        .await?;
        let mut inner = self.lock();
        let watcher = watcher.map(|connection_id| (user_id.clone(), connection_id));
        if let Some((_, connection_id)) = watcher {
            inner.unwatch(user_id, connection_id);
        }
        let mut users = Vec::with_capacity(visible.len());
        for (watched, stored_last_seen) in visible {
            let state = inner.current(&watched);
            let last_seen = (state == PresenceState::Offline)
                .then(|| inner.last_seen.get(&watched).copied().or(stored_last_seen))
                .flatten();
            users.push(UserPresence {
                user_id: watched.clone(),
                state,
                last_seen,
            });
            if let Some(watcher) = &watcher {
                inner.watch(watcher, watched);
            }
        }
        Ok(users)
    }

    /// The server is stopping: everyone still shown (connected, or within the grace period) is
    /// last seen now. Without this a user online at a restart would show no last-seen time, or
    /// an old one, until they came and went again.
    pub(crate) async fn store_last_seen_of_everyone(&self) {
        let now_ms = now_millis();
        let seen: Vec<(UserId, UnixMillis)> = self
            .lock()
            .users
            .keys()
            .map(|user_id| (user_id.clone(), now_ms))
            .collect();
        if seen.is_empty() {
            return;
        }
        let stored = crate::blocking(&self.store, move |store| store.record_last_seen(&seen)).await;
        if let Err(err) = stored {
            tracing::warn!(
                "storing last-seen times at shutdown failed: {}",
                err.message
            );
        }
    }

    /// Ends grace periods that ran out and sends each watching connection the changes since
    /// the last flush, in one frame. Stores the last-seen times of users who went offline.
    pub(crate) async fn flush(&self, now: Instant) {
        let now_ms = now_millis();
        let mut went_offline = Vec::new();
        let mut frames: HashMap<(UserId, ConnectionId), Vec<UserPresence>> = HashMap::new();
        {
            let mut inner = self.lock();
            for user_id in inner.expire(now) {
                inner.last_seen.insert(user_id.clone(), now_ms);
                inner.changed.insert(user_id.clone());
                went_offline.push((user_id, now_ms));
            }
            let changed = std::mem::take(&mut inner.changed);
            for user_id in changed {
                let Some(watchers) = inner.watchers.get(&user_id) else {
                    continue;
                };
                let state = inner.current(&user_id);
                let presence = UserPresence {
                    user_id: user_id.clone(),
                    state,
                    last_seen: (state == PresenceState::Offline)
                        .then(|| inner.last_seen.get(&user_id).copied())
                        .flatten(),
                };
                for watcher in watchers {
                    frames
                        .entry(watcher.clone())
                        .or_default()
                        .push(presence.clone());
                }
            }
        }
        for ((watcher, connection_id), users) in frames {
            Metrics::add(&self.metrics.presence_updates, 1);
            let payload = Utf8Bytes::from(encode_server(&ServerFrame::Presence { users }));
            self.hub
                .signal_connection(&watcher, connection_id, payload, Delivery::Droppable);
        }
        if !went_offline.is_empty() {
            let stored = crate::blocking(&self.store, move |store| {
                store.record_last_seen(&went_offline)
            })
            .await;
            if let Err(err) = stored {
                tracing::warn!("storing last-seen times failed: {}", err.message);
            }
        }
    }
}

/// Flushes presence every `period` until the server stops.
pub(crate) fn spawn_flusher(presence: Arc<Presence>, period: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            presence.flush(Instant::now()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    /// Distinct connection ids, as the hub hands them out.
    fn connections(n: usize) -> Vec<ConnectionId> {
        let hub: Hub<u32> = Hub::new(1);
        (0..n)
            .map(|_| hub.register(&user("anyone")).connection_id)
            .collect()
    }

    #[test]
    fn a_grace_period_ends_once_and_not_for_a_user_who_came_back() {
        let (alice, bob) = (user("alice"), user("bob"));
        let ids = connections(3);
        let grace = Duration::from_secs(5);
        let start = Instant::now();
        let mut inner = Inner::default();
        inner.connect(&alice, ids[0]);
        inner.connect(&bob, ids[1]);
        inner.disconnect(&alice, ids[0], start + grace);
        inner.disconnect(&bob, ids[1], start + grace);
        assert_eq!(inner.expire(start + grace / 2), Vec::<UserId>::new());
        // bob comes back within his grace period, then leaves again later.
        inner.connect(&bob, ids[2]);
        assert_eq!(inner.expire(start + grace), std::slice::from_ref(&alice));
        assert_eq!(inner.current(&alice), PresenceState::Offline);
        assert_eq!(inner.current(&bob), PresenceState::Online);
        inner.disconnect(&bob, ids[2], start + grace * 2);
        assert_eq!(inner.expire(start + grace * 2), std::slice::from_ref(&bob));
        assert_eq!(inner.expire(start + grace * 3), Vec::<UserId>::new());
        assert!(inner.users.is_empty() && inner.expiring.is_empty());
    }

    #[test]
    fn a_connection_that_stops_watching_leaves_the_other_watchers_alone() {
        let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
        let ids = connections(3);
        let mut inner = Inner::default();
        let alice_phone = (alice.clone(), ids[0]);
        let alice_laptop = (alice.clone(), ids[1]);
        let dave_phone = (dave.clone(), ids[2]);
        for watched in [&bob, &carol] {
            inner.watch(&alice_phone, watched.clone());
            inner.watch(&alice_laptop, watched.clone());
        }
        inner.watch(&dave_phone, bob.clone());
        inner.unwatch(&alice, ids[0]);
        assert_eq!(
            inner.watchers[&bob],
            HashSet::from([alice_laptop.clone(), dave_phone.clone()])
        );
        assert_eq!(inner.watchers[&carol], HashSet::from([alice_laptop]));
        inner.disconnect(&alice, ids[1], Instant::now());
        assert_eq!(inner.watchers[&bob], HashSet::from([dave_phone]));
        assert!(!inner.watchers.contains_key(&carol));
        assert_eq!(inner.watching.keys().collect::<Vec<_>>(), [&ids[2]]);
    }
}
