//! The hub: which live connections belong to which user, and which online users are members of
//! which conversation. `publish` hands a frame, encoded once and shared, to every connection of
//! every online member with `try_send`: publishing never waits on a slow reader. A connection
//! whose bounded queue is full is dropped from the hub and flagged slow. Never touches the store.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use lanes_protocol::{AckFrame, ConversationId, ErrorFrame, Seq, UserId};

mod queue;

pub use queue::QueueReceiver;
use queue::{QueueSender, queue};

/// What a connection receives from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A committed message (or other lane event) of a conversation.
    Message {
        /// The conversation.
        conversation_id: ConversationId,
        /// Its seq, for dedupe against catch-up.
        seq: Seq,
        /// The encoded frame, shared by every receiver.
        payload: P,
    },
    /// The user became a member: catch the conversation up, then it continues live. `large`:
    /// the conversation has more members than the server's receipts bound (the caller says).
    Joined {
        /// The conversation.
        conversation_id: ConversationId,
        /// Passed on to the client (`joined`'s `large`).
        large: bool,
    },
    /// The user is no longer a member: nothing more of it follows.
    Left(ConversationId),
    /// A frame outside the lanes (receipts, typing, presence): written as it is, no seq.
    Signal(P),
    /// The credential this connection authenticated with was revoked: close it.
    Revoked,
    /// The server is stopping: finish what is in flight and close (see `Hub::shut_down`).
    ShuttingDown,
    /// The outcome of one of this connection's own sends. It travels in the same queue as the
    /// messages, after every message the committer published before it, so an ack takes its
    /// message's place in the conversation's order on this connection. Boxed: inline, it made
    /// every queued event 72 bytes instead of 56.
    Committed(Box<Result<AckFrame, ErrorFrame>>),
}

/// How a signal treats a busy connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Like a message: a full queue makes the connection a slow consumer (it resyncs later).
    Reliable,
    /// Typing and presence: dropped for a connection whose queue is half full, which stays
    /// connected. Such signals go first so durable events never have to.
    Droppable,
}

/// Identifies one connection in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

/// A registered connection's end: its queue and its slow flag.
#[derive(Debug)]
pub struct Subscription<P> {
    /// Identifies the connection for `unregister`.
    pub connection_id: ConnectionId,
    /// Frames for this connection, at most `queue_len_max` waiting.
    pub receiver: QueueReceiver<Event<P>>,
    /// Set when the queue overflowed; the connection must close and the client resume.
    pub slow: Arc<AtomicBool>,
    /// Membership version at registration, for `set_conversations`.
    pub version: u64,
}

#[derive(Debug)]
struct ConnectionEntry<P> {
    connection_id: ConnectionId,
    sender: QueueSender<Event<P>>,
    slow: Arc<AtomicBool>,
    /// Identifies the revocable credential (session token) it authenticated with; 0: none.
    credential: u64,
}

/// The hub's tables hash with foldhash (randomly seeded, so user-chosen ids cannot be made to
/// collide): SipHash was ~4% of the CPU of a 10,000-member fan-out.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An online user's place in `Inner::online`.
type Slot = usize;

#[derive(Debug)]
struct UserEntry {
    slot: Slot,
    /// The user's conversations, each with the user's index in its online members: leaving
    /// one is a swap-remove at that index, not a search through a list that may hold 10,000
    /// slots (and does so under the write lock that `publish` waits for).
    conversations: Map<ConversationId, usize>,
    /// Bumped by every membership change, so a connection that listed the user's conversations
    /// from the store can tell whether a change raced with its listing.
    version: u64,
}

#[derive(Debug)]
struct Online<P> {
    user_id: UserId,
    connections: Vec<ConnectionEntry<P>>,
}

#[derive(Debug)]
struct Inner<P> {
    /// Online members of each conversation with at least one online member, as slots:
    /// publishing walks them without hashing or comparing a single user id (that lookup per
    /// member was most of a 10,000-member fan-out's publishing, docs/BENCHMARKS.md).
    conversations: Map<ConversationId, Vec<Slot>>,
    users: Map<UserId, UserEntry>,
    /// Each online user's connections, by slot; `None`: free (listed in `free`).
    online: Vec<Option<Online<P>>>,
    free: Vec<Slot>,
    /// Credentials revoked in the last `REVOKED_KEPT`, and when: a connection that checked its
    /// token just before the revocation and registers just after it is told at registration.
    revoked: HashMap<u64, std::time::Instant>,
}

/// How long a revoked credential is remembered: far longer than any connection takes from
/// checking its token to registering.
const REVOKED_KEPT: std::time::Duration = std::time::Duration::from_secs(300);

impl<P> Inner<P> {
    fn connections(&self, user_id: &UserId) -> Option<&Vec<ConnectionEntry<P>>> {
        let slot = self.users.get(user_id)?.slot;
        self.at(slot).map(|online| &online.connections)
    }

    fn entry(&self, user_id: &UserId, connection_id: ConnectionId) -> Option<&ConnectionEntry<P>> {
        self.connections(user_id)?
            .iter()
            .find(|entry| entry.connection_id == connection_id)
    }

    fn connections_mut(&mut self, user_id: &UserId) -> Option<&mut Vec<ConnectionEntry<P>>> {
        let slot = self.users.get(user_id)?.slot;
        self.online
            .get_mut(slot)
            .and_then(Option::as_mut)
            .map(|online| &mut online.connections)
    }

    fn at(&self, slot: Slot) -> Option<&Online<P>> {
        self.online.get(slot).and_then(Option::as_ref)
    }

    /// The entry of `user_id`, made online (with no connection yet) if it was not.
    fn user(&mut self, user_id: &UserId) -> &mut UserEntry {
        if !self.users.contains_key(user_id) {
            let online = Some(Online {
                user_id: user_id.clone(),
                connections: Vec::new(),
            });
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.online[slot] = online;
                    slot
                }
                None => {
                    self.online.push(online);
                    self.online.len() - 1
                }
            };
            self.users.insert(
                user_id.clone(),
                UserEntry {
                    slot,
                    conversations: Map::default(),
                    version: 0,
                },
            );
        }
        self.users
            .get_mut(user_id)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Takes `user_id` offline: out of every conversation, its slot freed.
    fn remove_user(&mut self, user_id: &UserId) {
        let Some(user) = self.users.remove(user_id) else {
            return;
        };
        for (conversation_id, index) in user.conversations {
            self.remove_online_member(conversation_id, index);
        }
        self.online[user.slot] = None;
        self.free.push(user.slot);
    }

    /// Takes `user_id` off the online members of `conversation_id`; returns whether it was
    /// listed.
    fn leave(&mut self, user_id: &UserId, conversation_id: ConversationId) -> bool {
        let Some(index) = self
            .users
            .get_mut(user_id)
            .and_then(|user| user.conversations.remove(&conversation_id))
        else {
            return false;
        };
        self.remove_online_member(conversation_id, index);
        true
    }

    /// Removes the member at `index` (which the caller has just taken out of its user's
    /// `conversations`); the member moved into its place gets its new index.
    fn remove_online_member(&mut self, conversation_id: ConversationId, index: usize) {
        let Some(members) = self
            .conversations
            .get_mut(&conversation_id)
            .filter(|members| index < members.len())
        else {
            return;
        };
        members.swap_remove(index);
        if let Some(&moved) = members.get(index) {
            let moved_user = self.online.get(moved).and_then(Option::as_ref);
            if let Some(position) = moved_user
                .and_then(|online| self.users.get_mut(&online.user_id))
                .and_then(|user| user.conversations.get_mut(&conversation_id))
            {
                *position = index;
            }
        } else if members.is_empty() {
            self.conversations.remove(&conversation_id);
        }
    }

    /// Flags and removes connections whose queue overflowed. Dropping the sender ends the
    /// connection's queue; the flag tells it why.
    fn drop_slow(&mut self, user_id: &UserId, slow: &[ConnectionId], counter: &AtomicU64) {
        if slow.is_empty() {
            return;
        }
        let Some(connections) = self.connections_mut(user_id) else {
            return;
        };
        connections.retain(|entry| {
            if slow.contains(&entry.connection_id) {
                entry.slow.store(true, Ordering::Release);
                counter.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
        if connections.is_empty() {
            self.remove_user(user_id);
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubStats {
    /// Users with at least one connection.
    pub users: usize,
    /// Registered connections.
    pub connections: usize,
    /// Conversations with at least one online member.
    pub conversations: usize,
}

/// The fan-out table. `P` is the encoded frame type, cheap to clone (e.g. `Bytes`).
#[derive(Debug)]
pub struct Hub<P> {
    /// Readers: `publish`. Writers: (un)registration and membership changes. Never held across
    /// an await or a store call.
    inner: RwLock<Inner<P>>,
    next_connection_id: AtomicU64,
    queue_len_max: usize,
    /// Connections dropped because their queue overflowed, since start.
    slow_consumers: AtomicU64,
}

impl<P: Clone> Hub<P> {
    /// A hub whose connection queues hold at most `queue_len_max` events.
    pub fn new(queue_len_max: usize) -> Hub<P> {
        assert!(queue_len_max > 0, "a queue must hold at least one event");
        Hub {
            inner: RwLock::new(Inner {
                conversations: Map::default(),
                users: Map::default(),
                online: Vec::new(),
                free: Vec::new(),
                revoked: HashMap::new(),
            }),
            next_connection_id: AtomicU64::new(1),
            queue_len_max,
            slow_consumers: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<P>> {
        // Every mutation below completes its map updates before it can panic, so the data
        // behind a poisoned lock is consistent.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<P>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection of `user_id`. It receives nothing until the user's conversations
    /// are known: for a user's first connection, call `set_conversations` next.
    pub fn register(&self, user_id: &UserId) -> Subscription<P> {
        self.register_with_credential(user_id, 0)
    }

    /// `register`, for a connection authenticated with the revocable credential `credential`
    /// (non-zero), which `revoke` closes.
    pub fn register_with_credential(&self, user_id: &UserId, credential: u64) -> Subscription<P> {
        let connection_id = ConnectionId(self.next_connection_id.fetch_add(1, Ordering::Relaxed));
        let (sender, receiver) = queue(self.queue_len_max);
        let slow = Arc::new(AtomicBool::new(false));
        let mut inner = self.write();
        if credential != 0 && inner.revoked.contains_key(&credential) {
            // An empty queue: this cannot fail.
            sender.try_send(Event::Revoked);
        }
        let version = inner.user(user_id).version;
        if let Some(connections) = inner.connections_mut(user_id) {
            connections.push(ConnectionEntry {
                connection_id,
                sender,
                slow: Arc::clone(&slow),
                credential,
            });
        }
        Subscription {
            connection_id,
            receiver,
            slow,
            version,
        }
    }

    /// Records the user's conversations as listed from the store after `register`. Returns
    /// `false` (and changes nothing) if membership changed since `version`: list again with the
    /// returned version and retry.
    pub fn set_conversations(
        &self,
        user_id: &UserId,
        version: u64,
        conversation_ids: &[ConversationId],
    ) -> Result<(), u64> {
        let mut inner = self.write();
        let Inner {
            users,
            conversations,
            ..
        } = &mut *inner;
        let Some(user) = users.get_mut(user_id) else {
            return Ok(());
        };
        if user.version != version {
            return Err(user.version);
        }
        for conversation_id in conversation_ids {
            join(user, conversations, *conversation_id);
        }
        Ok(())
    }

    /// Removes a connection; the user's last connection takes the user out of every conversation.
    pub fn unregister(&self, user_id: &UserId, connection_id: ConnectionId) {
        let mut inner = self.write();
        let Some(connections) = inner.connections_mut(user_id) else {
            return;
        };
        connections.retain(|entry| entry.connection_id != connection_id);
        if connections.is_empty() {
            inner.remove_user(user_id);
        }
    }

    /// `user_id` became a member of `conversation_id` (after the store committed it); `large`
    /// goes with the `Joined` event.
    pub fn member_added(&self, conversation_id: ConversationId, user_id: &UserId, large: bool) {
        let mut inner = self.write();
        let Inner {
            users,
            conversations,
            ..
        } = &mut *inner;
        let Some(user) = users.get_mut(user_id) else {
            return;
        };
        user.version += 1;
        let slot = user.slot;
        join(user, conversations, conversation_id);
        let slow = inner.at(slot).map_or_else(Vec::new, |online| {
            let joined = Event::Joined {
                conversation_id,
                large,
            };
            notify(&online.connections, &joined)
        });
        inner.drop_slow(user_id, &slow, &self.slow_consumers);
    }

    /// `user_id` is no longer a member of `conversation_id`: called *before* the store commits
    /// the removal, so that nothing the committer publishes meanwhile reaches the user, and
    /// again after it (a connection that listed its conversations in between has the
    /// conversation back). Nothing published after the second call reaches the user.
    pub fn member_removed(&self, conversation_id: ConversationId, user_id: &UserId) {
        let mut inner = self.write();
        let Some(user) = inner.users.get_mut(user_id) else {
            return;
        };
        // Bumped even when the conversation is not (yet) in the set: a listing taken before this
        // call may still hold it, and must be redone.
        user.version += 1;
        let slot = user.slot;
        if !inner.leave(user_id, conversation_id) {
            return;
        }
        let slow = inner.at(slot).map_or_else(Vec::new, |online| {
            notify(&online.connections, &Event::Left(conversation_id))
        });
        inner.drop_slow(user_id, &slow, &self.slow_consumers);
    }

    /// `publish`: hands the frame to every connection of every online member, without waiting,
    /// except `origin` (the connection that sent the message: its ack is its copy). Returns how
    /// many connections received it.
    pub fn publish(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
        payload: P,
        origin: Option<ConnectionId>,
    ) -> usize {
        let event = Event::Message {
            conversation_id,
            seq,
            payload,
        };
        let mut delivered = 0;
        let mut slow: Vec<(UserId, ConnectionId)> = Vec::new();
        {
            let inner = self.read();
            let Some(members) = inner.conversations.get(&conversation_id) else {
                return 0;
            };
            for online in members.iter().filter_map(|slot| inner.at(*slot)) {
                for entry in &online.connections {
                    if Some(entry.connection_id) == origin {
                        continue;
                    }
                    if entry.sender.try_send(event.clone()) {
                        delivered += 1;
                    } else {
                        slow.push((online.user_id.clone(), entry.connection_id));
                    }
                }
            }
        }
        self.drop_all_slow(slow);
        delivered
    }

    /// Sends a signal to every connection of every online member of `conversation_id` for which
    /// `payload_for(user)` gives a payload (per-recipient payloads: e.g. hidden read positions).
    /// Returns how many connections received it.
    pub fn signal(
        &self,
        conversation_id: ConversationId,
        payload_for: impl Fn(&UserId) -> Option<P>,
        delivery: Delivery,
    ) -> usize {
        let mut delivered = 0;
        let mut slow: Vec<(UserId, ConnectionId)> = Vec::new();
        {
            let inner = self.read();
            let Some(members) = inner.conversations.get(&conversation_id) else {
                return 0;
            };
            for online in members.iter().filter_map(|slot| inner.at(*slot)) {
                let Some(payload) = payload_for(&online.user_id) else {
                    continue;
                };
                for entry in &online.connections {
                    if self.offer(entry, Event::Signal(payload.clone()), delivery) {
                        delivered += 1;
                    } else if delivery == Delivery::Reliable {
                        slow.push((online.user_id.clone(), entry.connection_id));
                    }
                }
            }
        }
        self.drop_all_slow(slow);
        delivered
    }

    /// Sends a signal to one connection; `false` if it is gone or (droppable) busy.
    pub fn signal_connection(
        &self,
        user_id: &UserId,
        connection_id: ConnectionId,
        payload: P,
        delivery: Delivery,
    ) -> bool {
        let sent = {
            let inner = self.read();
            let Some(entry) = inner.entry(user_id, connection_id) else {
                return false;
            };
            self.offer(entry, Event::Signal(payload), delivery)
        };
        if !sent && delivery == Delivery::Reliable {
            self.drop_all_slow(vec![(user_id.clone(), connection_id)]);
        }
        sent
    }

    /// Whether `credential` (non-zero) was revoked in the last `REVOKED_KEPT`: for a long poll
    /// that registered just after its session's logout, which must not answer with catch-up.
    pub fn is_revoked(&self, credential: u64) -> bool {
        credential != 0 && self.read().revoked.contains_key(&credential)
    }

    /// The credential `credential` (non-zero) of `user_id` was revoked: its connections get
    /// `Event::Revoked` (a full queue makes them slow consumers, which closes them too), and so
    /// does one that registers with it within `REVOKED_KEPT`. Returns how many were told now.
    pub fn revoke(&self, user_id: &UserId, credential: u64) -> usize {
        if credential == 0 {
            return 0;
        }
        let mut slow = Vec::new();
        let mut told = 0;
        {
            let mut inner = self.write();
            let now = std::time::Instant::now();
            inner
                .revoked
                .retain(|_, at| now.duration_since(*at) < REVOKED_KEPT);
            inner.revoked.insert(credential, now);
            let Some(connections) = inner.connections(user_id) else {
                return 0;
            };
            for entry in connections
                .iter()
                .filter(|entry| entry.credential == credential)
            {
                if entry.sender.try_send(Event::Revoked) {
                    told += 1;
                } else {
                    slow.push((user_id.clone(), entry.connection_id));
                }
            }
        }
        self.drop_all_slow(slow);
        told
    }

    /// The server is stopping: every registered connection gets `Event::ShuttingDown` (a full
    /// queue makes it a slow consumer, which closes it too). Connections learn it here rather
    /// than each holding a wait on a shutdown signal: an idle connection's future stays smaller.
    /// One that registers later must check the server's own flag after registering.
    pub fn shut_down(&self) {
        let mut slow = Vec::new();
        {
            let inner = self.read();
            for online in inner.online.iter().flatten() {
                for entry in &online.connections {
                    if !entry.sender.try_send(Event::ShuttingDown) {
                        slow.push((online.user_id.clone(), entry.connection_id));
                    }
                }
            }
        }
        self.drop_all_slow(slow);
    }

    /// How many connections `user_id` has registered.
    pub fn connections_of(&self, user_id: &UserId) -> usize {
        self.read().connections(user_id).map_or(0, Vec::len)
    }

    /// How many members of `conversation_id` are online (users, not connections).
    pub fn online_members(&self, conversation_id: ConversationId) -> usize {
        self.read()
            .conversations
            .get(&conversation_id)
            .map_or(0, Vec::len)
    }

    /// Whether `user_id` is online and a member of `conversation_id` (as the hub knows it).
    pub fn is_online_member(&self, user_id: &UserId, conversation_id: ConversationId) -> bool {
        self.read()
            .users
            .get(user_id)
            .is_some_and(|user| user.conversations.contains_key(&conversation_id))
    }

    fn offer(&self, entry: &ConnectionEntry<P>, event: Event<P>, delivery: Delivery) -> bool {
        match delivery {
            Delivery::Reliable => entry.sender.try_send(event),
            Delivery::Droppable => entry.sender.try_send_within(event, self.queue_len_max / 2),
        }
    }

    fn drop_all_slow(&self, slow: Vec<(UserId, ConnectionId)>) {
        if slow.is_empty() {
            return;
        }
        let mut inner = self.write();
        for (user_id, connection_id) in slow {
            inner.drop_slow(&user_id, &[connection_id], &self.slow_consumers);
        }
    }

    /// How many connections were dropped as slow consumers since start.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// Queues the outcome of a send for the connection that made it. Like `publish`, it never
    /// waits: a full queue drops the connection as a slow consumer (it resumes and retries).
    /// Returns whether the connection got it.
    pub fn reply(
        &self,
        user_id: &UserId,
        connection_id: ConnectionId,
        outcome: Result<AckFrame, ErrorFrame>,
    ) -> bool {
        let event = Event::Committed(Box::new(outcome));
        let delivered = {
            let inner = self.read();
            let Some(entry) = inner.entry(user_id, connection_id) else {
                return false;
            };
            entry.sender.try_send(event)
        };
        if !delivered {
            self.drop_all_slow(vec![(user_id.clone(), connection_id)]);
        }
        delivered
    }

    /// Current sizes.
    pub fn stats(&self) -> HubStats {
        let inner = self.read();
        HubStats {
            users: inner.users.len(),
            connections: inner
                .online
                .iter()
                .flatten()
                .map(|online| online.connections.len())
                .sum(),
            conversations: inner.conversations.len(),
        }
    }
}

/// Lists online `user` among the online members of `conversation_id` (`Inner::conversations`),
/// unless it is already.
fn join(
    user: &mut UserEntry,
    conversations: &mut Map<ConversationId, Vec<Slot>>,
    conversation_id: ConversationId,
) {
    if let Entry::Vacant(vacant) = user.conversations.entry(conversation_id) {
        let members = conversations.entry(conversation_id).or_default();
        vacant.insert(members.len());
        members.push(user.slot);
    }
}

/// Offers `event` to each connection; returns those whose queue was full (or closed).
fn notify<P: Clone>(connections: &[ConnectionEntry<P>], event: &Event<P>) -> Vec<ConnectionId> {
    connections
        .iter()
        .filter(|entry| !entry.sender.try_send(event.clone()))
        .map(|entry| entry.connection_id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    /// A connection of `user_id`, registered and listed as a member of `conversation`.
    fn online(hub: &Hub<u32>, user_id: &UserId, conversation: u64) -> Subscription<u32> {
        let subscription = hub.register(user_id);
        hub.set_conversations(
            user_id,
            subscription.version,
            &[ConversationId(conversation)],
        )
        .unwrap();
        subscription
    }

    fn drain(subscription: &mut Subscription<u32>) -> Vec<Event<u32>> {
        std::iter::from_fn(|| subscription.receiver.try_recv()).collect()
    }

    fn message(conversation: u64, seq: u64, payload: u32) -> Event<u32> {
        Event::Message {
            conversation_id: ConversationId(conversation),
            seq: Seq(seq),
            payload,
        }
    }

    #[test]
    fn revoking_a_credential_reaches_only_its_connections() {
        let hub: Hub<u32> = Hub::new(4);
        let alice = user("alice");
        let mut phone = hub.register_with_credential(&alice, 7);
        let mut laptop = hub.register_with_credential(&alice, 8);
        let mut app = hub.register(&alice);
        assert_eq!(hub.revoke(&alice, 7), 1);
        assert_eq!(hub.revoke(&alice, 0), 0, "credential 0 is not revocable");
        assert_eq!(drain(&mut phone), [Event::Revoked]);
        assert_eq!(drain(&mut laptop), []);
        assert_eq!(drain(&mut app), []);
    }

    /// A connection that checked its token before a logout and registers after it (no
    /// connection of the credential was there to tell) is told at registration.
    #[test]
    fn a_connection_registering_after_its_credential_was_revoked_is_told() {
        let hub: Hub<u32> = Hub::new(4);
        let alice = user("alice");
        assert_eq!(hub.revoke(&alice, 7), 0, "nobody to tell yet");
        let mut late = hub.register_with_credential(&alice, 7);
        let mut other = hub.register_with_credential(&alice, 8);
        let mut app = hub.register(&alice);
        assert_eq!(drain(&mut late), [Event::Revoked]);
        assert_eq!(drain(&mut other), []);
        assert_eq!(drain(&mut app), []);
        assert!(hub.is_revoked(7));
        assert!(!hub.is_revoked(8) && !hub.is_revoked(0));
    }

    #[test]
    fn a_reused_slot_does_not_inherit_its_previous_user_s_conversations() {
        let hub: Hub<u32> = Hub::new(8);
        let (alice, bob) = (user("alice"), user("bob"));
        let phone = online(&hub, &alice, 1);
        hub.unregister(&alice, phone.connection_id);
        let mut laptop = online(&hub, &bob, 2);
        assert_eq!(hub.publish(ConversationId(1), Seq(1), 1, None), 0);
        assert_eq!(hub.publish(ConversationId(2), Seq(1), 2, None), 1);
        assert_eq!(drain(&mut laptop), [message(2, 1, 2)]);
        assert_eq!(hub.stats().conversations, 1);
    }

    #[test]
    fn shutting_down_reaches_every_connection_and_a_full_queue_is_dropped() {
        let hub: Hub<u32> = Hub::new(1);
        let (alice, bob) = (user("alice"), user("bob"));
        let mut phone = hub.register(&alice);
        let mut laptop = hub.register(&alice);
        let mut busy = hub.register(&bob);
        assert!(hub.signal_connection(&bob, busy.connection_id, 1, Delivery::Reliable));
        hub.shut_down();
        assert_eq!(drain(&mut phone), [Event::ShuttingDown]);
        assert_eq!(drain(&mut laptop), [Event::ShuttingDown]);
        assert_eq!(drain(&mut busy), [Event::Signal(1)]);
        assert!(
            busy.slow.load(Ordering::Acquire),
            "a full queue is a slow consumer"
        );
    }

    #[test]
    fn droppable_signals_give_way_and_reliable_ones_do_not() {
        let hub: Hub<u32> = Hub::new(4);
        let (alice, bob) = (user("alice"), user("bob"));
        let mut alice_phone = online(&hub, &alice, 1);
        let _bob_phone = online(&hub, &bob, 2);
        assert!(hub.is_online_member(&alice, ConversationId(1)));
        assert!(!hub.is_online_member(&bob, ConversationId(1)));
        assert_eq!(hub.online_members(ConversationId(1)), 1);
        assert_eq!(hub.online_members(ConversationId(9)), 0);
        let to_alice = |user: &UserId| (user.as_str() == "alice").then_some(7);
        assert_eq!(
            hub.signal(ConversationId(1), to_alice, Delivery::Droppable),
            1
        );
        assert_eq!(
            hub.signal(ConversationId(1), to_alice, Delivery::Droppable),
            1
        );
        // Half full: droppable signals are dropped, the connection stays.
        assert_eq!(
            hub.signal(ConversationId(1), to_alice, Delivery::Droppable),
            0
        );
        assert_eq!(hub.publish(ConversationId(1), Seq(1), 1, None), 1);
        assert_eq!(
            hub.signal(ConversationId(1), to_alice, Delivery::Reliable),
            1
        );
        assert!(!alice_phone.slow.load(Ordering::Acquire));
        // Full: a reliable signal makes it a slow consumer.
        assert_eq!(
            hub.signal(ConversationId(1), to_alice, Delivery::Reliable),
            0
        );
        assert!(alice_phone.slow.load(Ordering::Acquire));
        assert_eq!(
            drain(&mut alice_phone),
            [
                Event::Signal(7),
                Event::Signal(7),
                message(1, 1, 1),
                Event::Signal(7)
            ]
        );
    }

    #[test]
    fn publish_reaches_every_connection_of_every_online_member() {
        let hub: Hub<u32> = Hub::new(16);
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let mut alice_phone = online(&hub, &alice, 1);
        let mut alice_laptop = hub.register(&alice);
        let mut bob_phone = online(&hub, &bob, 1);
        let mut carol_phone = online(&hub, &carol, 2);
        assert_eq!(hub.publish(ConversationId(1), Seq(1), 10, None), 3);
        assert_eq!(drain(&mut alice_phone), [message(1, 1, 10)]);
        assert_eq!(drain(&mut alice_laptop), [message(1, 1, 10)]);
        assert_eq!(drain(&mut bob_phone), [message(1, 1, 10)]);
        assert_eq!(drain(&mut carol_phone), []);
        assert_eq!(hub.publish(ConversationId(3), Seq(1), 11, None), 0);
        // The sending connection gets its ack instead of a copy.
        assert_eq!(
            hub.publish(
                ConversationId(1),
                Seq(2),
                12,
                Some(alice_phone.connection_id)
            ),
            2
        );
        assert_eq!(drain(&mut alice_phone), []);
        assert_eq!(drain(&mut alice_laptop), [message(1, 2, 12)]);
    }

    #[test]
    fn a_reply_follows_what_was_published_before_it() {
        let hub: Hub<u32> = Hub::new(16);
        let (alice, bob) = (user("alice"), user("bob"));
        let mut phone = online(&hub, &alice, 1);
        let bob_phone = online(&hub, &bob, 1);
        let ack = |seq| AckFrame {
            client_msg_id: lanes_protocol::ClientMsgId::parse("a").unwrap(),
            conversation_id: ConversationId(1),
            message_id: lanes_protocol::MessageId(seq),
            seq: Seq(seq),
            server_ts: lanes_protocol::UnixMillis(0),
        };
        hub.publish(ConversationId(1), Seq(1), 1, Some(bob_phone.connection_id));
        hub.publish(ConversationId(1), Seq(2), 2, Some(phone.connection_id));
        assert!(hub.reply(&alice, phone.connection_id, Ok(ack(2))));
        hub.publish(ConversationId(1), Seq(3), 3, Some(bob_phone.connection_id));
        assert_eq!(
            drain(&mut phone),
            [
                message(1, 1, 1),
                Event::Committed(Box::new(Ok(ack(2)))),
                message(1, 3, 3)
            ]
        );
        assert!(
            !hub.reply(&alice, ConnectionId(999), Ok(ack(4))),
            "unknown connection"
        );
    }

    #[test]
    fn a_queued_event_stays_small() {
        // A 32-byte payload, as the server's shared frames: every queued event is this size.
        assert!(std::mem::size_of::<Event<[usize; 4]>>() <= 56);
    }

    #[test]
    fn membership_changes_take_effect_at_once() {
        let hub: Hub<u32> = Hub::new(16);
        let alice = user("alice");
        let mut phone = hub.register(&alice);
        hub.set_conversations(&alice, phone.version, &[]).unwrap();
        hub.member_added(ConversationId(5), &alice, true);
        hub.publish(ConversationId(5), Seq(1), 1, None);
        hub.member_removed(ConversationId(5), &alice);
        hub.publish(ConversationId(5), Seq(2), 2, None);
        assert_eq!(
            drain(&mut phone),
            [
                Event::Joined {
                    conversation_id: ConversationId(5),
                    large: true
                },
                message(5, 1, 1),
                Event::Left(ConversationId(5))
            ]
        );
    }

    #[test]
    fn a_membership_change_racing_the_listing_forces_a_relist() {
        let hub: Hub<u32> = Hub::new(16);
        let alice = user("alice");
        let phone = hub.register(&alice);
        // The store listing was taken, then a removal committed and reached the hub.
        hub.member_removed(ConversationId(5), &alice);
        let current = hub
            .set_conversations(&alice, phone.version, &[ConversationId(5)])
            .unwrap_err();
        hub.set_conversations(&alice, current, &[]).unwrap();
        assert_eq!(hub.publish(ConversationId(5), Seq(1), 1, None), 0);
    }

    #[test]
    fn a_full_queue_drops_and_flags_only_that_connection() {
        let hub: Hub<u32> = Hub::new(2);
        let (alice, bob) = (user("alice"), user("bob"));
        let slow = online(&hub, &alice, 1);
        let mut fast = online(&hub, &bob, 1);
        for seq in 1..=3 {
            hub.publish(ConversationId(1), Seq(seq), seq as u32, None);
            drain(&mut fast);
        }
        assert!(slow.slow.load(Ordering::Acquire));
        assert!(!fast.slow.load(Ordering::Acquire));
        assert_eq!(hub.slow_consumers(), 1);
        assert_eq!(hub.stats().users, 1);
        assert_eq!(hub.publish(ConversationId(1), Seq(4), 4, None), 1);
    }

    /// Every user's stored index points at its own slot, and each list holds exactly the users
    /// that name it.
    fn assert_positions_hold(hub: &Hub<u32>) {
        let inner = hub.read();
        let mut listed = 0;
        for user in inner.users.values() {
            for (conversation_id, index) in &user.conversations {
                assert_eq!(
                    inner.conversations[conversation_id].get(*index),
                    Some(&user.slot)
                );
                listed += 1;
            }
        }
        assert_eq!(
            inner.conversations.values().map(Vec::len).sum::<usize>(),
            listed
        );
    }

    /// Which of `subscriptions` got a message published to `conversation`.
    fn reached(
        hub: &Hub<u32>,
        subscriptions: &mut [Subscription<u32>],
        conversation: u64,
    ) -> Vec<usize> {
        hub.publish(ConversationId(conversation), Seq(1), 0, None);
        let mut reached = Vec::new();
        for (index, subscription) in subscriptions.iter_mut().enumerate() {
            if drain(subscription)
                .iter()
                .any(|event| matches!(event, Event::Message { .. }))
            {
                reached.push(index);
            }
        }
        reached
    }

    #[test]
    fn a_member_moved_by_a_leave_leaves_from_its_new_place() {
        let hub: Hub<u32> = Hub::new(8);
        let users = [user("alice"), user("bob"), user("carol")];
        let mut subscriptions: Vec<_> = users.iter().map(|user| online(&hub, user, 1)).collect();
        // alice leaves from the front: carol, last, takes her place.
        hub.member_removed(ConversationId(1), &users[0]);
        assert_positions_hold(&hub);
        assert_eq!(reached(&hub, &mut subscriptions, 1), [1, 2]);
        // carol leaves from there; bob must still be listed.
        hub.unregister(&users[2], subscriptions[2].connection_id);
        assert_positions_hold(&hub);
        assert_eq!(reached(&hub, &mut subscriptions, 1), [1]);
        hub.member_removed(ConversationId(1), &users[1]);
        assert_eq!(hub.stats().conversations, 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Connect(usize),
        Disconnect(usize),
        Add(u64, usize),
        Remove(u64, usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6usize).prop_map(Step::Connect),
            (0..6usize).prop_map(Step::Disconnect),
            (0..3u64, 0..6usize).prop_map(|(c, u)| Step::Add(c, u)),
            (0..3u64, 0..6usize).prop_map(|(c, u)| Step::Remove(c, u)),
        ]
    }

    proptest::proptest! {
        /// Joins, leaves, connects and disconnects in any order: a message reaches exactly
        /// the online members, and every stored index still points at its user.
        #[test]
        fn any_membership_history_reaches_exactly_the_online_members(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let hub: Hub<u32> = Hub::new(64);
            let users: Vec<UserId> = (0..6).map(|i| user(&format!("user{i}"))).collect();
            let mut members = std::collections::BTreeSet::new();
            let mut subscriptions: Vec<Option<Subscription<u32>>> = (0..6).map(|_| None).collect();
            for step in steps {
                match step {
                    Step::Connect(u) if subscriptions[u].is_none() => {
                        let subscription = hub.register(&users[u]);
                        let listed: Vec<ConversationId> = members
                            .iter()
                            .filter(|(_, member)| *member == u)
                            .map(|(c, _)| ConversationId(*c))
                            .collect();
                        hub.set_conversations(&users[u], subscription.version, &listed).unwrap();
                        subscriptions[u] = Some(subscription);
                    }
                    Step::Disconnect(u) => {
                        if let Some(subscription) = subscriptions[u].take() {
                            hub.unregister(&users[u], subscription.connection_id);
                        }
                    }
                    Step::Add(c, u) if members.insert((c, u)) => {
                        hub.member_added(ConversationId(c), &users[u], false);
                    }
                    Step::Remove(c, u) if members.remove(&(c, u)) => {
                        hub.member_removed(ConversationId(c), &users[u]);
                    }
                    _ => {}
                }
                assert_positions_hold(&hub);
                for c in 0..3 {
                    hub.publish(ConversationId(c), Seq(1), 0, None);
                    for (u, subscription) in subscriptions.iter_mut().enumerate() {
                        let Some(subscription) = subscription else { continue };
                        let got = drain(subscription)
                            .iter()
                            .any(|event| matches!(event, Event::Message { .. }));
                        proptest::prop_assert_eq!(got, members.contains(&(c, u)));
                    }
                }
            }
        }
    }

    #[test]
    fn last_connection_leaving_clears_the_user() {
        let hub: Hub<u32> = Hub::new(4);
        let alice = user("alice");
        let phone = online(&hub, &alice, 1);
        let laptop = hub.register(&alice);
        hub.unregister(&alice, phone.connection_id);
        assert_eq!(
            hub.stats(),
            HubStats {
                users: 1,
                connections: 1,
                conversations: 1
            }
        );
        hub.unregister(&alice, laptop.connection_id);
        assert_eq!(hub.stats(), HubStats::default());
    }
}
