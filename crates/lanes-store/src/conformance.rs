//! The behaviours every `Store` backend must have, one function each. A backend's
//! `tests/conformance.rs` calls `run_all` with a factory for fresh, empty stores. If a behaviour
//! is not here, it is not a behaviour of `Store`.

// The suite is test code shipped as a library so every backend can run it: a failed step is a
// failed test, so panicking is the point.
#![allow(clippy::expect_used, clippy::panic)]
use lanes_protocol::http::{ConversationKind, Role, Settings};
use lanes_protocol::{ClientMsgId, Content, ConversationId, EventKind, Seq, UnixMillis, UserId};

use crate::{
    AppendOutcome, AppendRejection, ManageOutcome, MarkerUpdate, MembershipChange, NewMessage,
    Store, StoredUser,
};

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

/// One behaviour, run against a fresh store.
type Behaviour = fn(&dyn Store);

/// Runs every behaviour against fresh stores from `make_store`.
pub fn run_all(make_store: &dyn Fn() -> Box<dyn Store>) {
    let behaviours: &[(&str, Behaviour)] = &[
        ("users_are_unique", users_are_unique),
        ("sessions_expire_and_revoke", sessions_expire_and_revoke),
        ("direct_is_idempotent", direct_is_idempotent),
        ("append_assigns_gap_free_seq", append_assigns_gap_free_seq),
        (
            "duplicate_client_msg_id_returns_original",
            duplicate_client_msg_id_returns_original,
        ),
        ("non_member_cannot_append", non_member_cannot_append),
        (
            "duplicate_events_in_one_batch_apply_once",
            duplicate_events_in_one_batch_apply_once,
        ),
        (
            "a_removed_members_retry_gets_the_original",
            a_removed_members_retry_gets_the_original,
        ),
        ("messages_after_is_ordered", messages_after_is_ordered),
        (
            "messages_before_pages_backwards",
            messages_before_pages_backwards,
        ),
        ("membership_changes", membership_changes),
        ("owner_leaving_hands_over", owner_leaving_hands_over),
        ("conversation_views", conversation_views),
        (
            "managing_on_behalf_checks_the_actor",
            managing_on_behalf_checks_the_actor,
        ),
        ("epoch_is_stable", epoch_is_stable),
        ("edits_deletes_and_reactions", edits_deletes_and_reactions),
        (
            "events_refer_to_messages_only",
            events_refer_to_messages_only,
        ),
        ("markers_only_move_forward", markers_only_move_forward),
        (
            "large_groups_show_only_own_positions",
            large_groups_show_only_own_positions,
        ),
        ("listings_cap_members", listings_cap_members),
        ("members_come_in_pages", members_come_in_pages),
        ("conversations_come_in_pages", conversations_come_in_pages),
        ("settings_and_presence", settings_and_presence),
        ("unread_count_saturates", unread_count_saturates),
        (
            "system_messages_need_no_membership",
            system_messages_need_no_membership,
        ),
    ];
    for (name, behaviour) in behaviours {
        eprintln!("conformance: {name}");
        let store = make_store();
        behaviour(store.as_ref());
    }
}

fn user(store: &dyn Store, name: &str) -> UserId {
    let user_id = UserId::parse(name).expect("test user ids are valid");
    store.ensure_user(&user_id, NOW).expect("ensure_user");
    user_id
}

fn message(sender: &UserId, id: &str, conversation_id: ConversationId) -> NewMessage {
    NewMessage {
        sender_id: sender.clone(),
        client_msg_id: ClientMsgId::parse(id).expect("test ids are valid"),
        conversation_id,
        content: Content::Message {
            body: format!("body of {id}"),
            reply_to: None,
        },
    }
}

fn event(
    sender: &UserId,
    id: &str,
    conversation_id: ConversationId,
    content: Content,
) -> NewMessage {
    NewMessage {
        content,
        ..message(sender, id, conversation_id)
    }
}

fn append_one(store: &dyn Store, message: NewMessage) -> AppendOutcome {
    let mut outcomes = store.append_batch(&[message], NOW).expect("append");
    outcomes.pop().expect("one outcome")
}

fn history(
    store: &dyn Store,
    viewer: &UserId,
    conversation_id: ConversationId,
) -> Vec<lanes_protocol::MessageFrame> {
    store
        .messages_after(viewer, conversation_id, Seq::ZERO, 100)
        .expect("read")
        .expect("member")
}

fn appended_seqs(outcomes: &[AppendOutcome]) -> Vec<u64> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            AppendOutcome::Appended(frame) => frame.seq.0,
            other => panic!("expected Appended, got {other:?}"),
        })
        .collect()
}

/// `create_user` refuses a taken id and keeps the first password hash.
pub fn users_are_unique(store: &dyn Store) {
    let alice = UserId::parse("alice").expect("valid");
    let first = StoredUser {
        user_id: alice.clone(),
        password_hash: Some("hash-1".into()),
    };
    assert!(store.create_user(&first, NOW).expect("create"));
    let second = StoredUser {
        password_hash: Some("hash-2".into()),
        ..first.clone()
    };
    assert!(!store.create_user(&second, NOW).expect("create again"));
    assert_eq!(store.user(&alice).expect("user"), Some(first));
    store.ensure_user(&alice, NOW).expect("ensure existing");
    assert_eq!(
        store
            .user(&alice)
            .expect("user")
            .and_then(|u| u.password_hash),
        Some("hash-1".into())
    );
    assert_eq!(
        store
            .user(&UserId::parse("nobody").expect("valid"))
            .expect("user"),
        None
    );
}

/// Sessions resolve until they expire or are revoked.
pub fn sessions_expire_and_revoke(store: &dyn Store) {
    let alice = user(store, "alice");
    let hash = [7u8; 32];
    let expires_at = UnixMillis(NOW.0 + 1000);
    store
        .create_session(&hash, &alice, expires_at, NOW)
        .expect("create session");
    assert_eq!(
        store.session_user(&hash, NOW).expect("lookup"),
        Some((alice.clone(), expires_at))
    );
    assert_eq!(store.session_user(&hash, expires_at).expect("lookup"), None);
    assert_eq!(store.session_user(&[8u8; 32], NOW).expect("lookup"), None);
    store.revoke_session(&hash).expect("revoke");
    assert_eq!(store.session_user(&hash, NOW).expect("lookup"), None);
    store.revoke_session(&hash).expect("revoking twice is fine");
}

/// The same pair, in either order, always gets the same direct conversation.
pub fn direct_is_idempotent(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let (first, created) = store.create_direct(&alice, &bob, NOW).expect("create");
    assert!(created);
    let (again, created) = store.create_direct(&bob, &alice, NOW).expect("again");
    assert_eq!((again, created), (first, false));
    let (other, created) = store.create_direct(&alice, &carol, NOW).expect("other");
    assert!(created);
    assert_ne!(other, first);
    let info = store
        .conversation_info(first)
        .expect("info")
        .expect("exists");
    assert_eq!(info.kind, ConversationKind::Direct);
    assert_eq!(info.members.len(), 2);
}

/// Seqs start at 1 and are gap-free per conversation, in batch order, across batches.
pub fn append_assigns_gap_free_seq(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let (ac, _) = store.create_direct(&alice, &carol, NOW).expect("create");
    let batch = vec![
        message(&alice, "a1", ab),
        message(&bob, "b1", ab),
        message(&alice, "a2", ac),
        message(&alice, "a3", ab),
    ];
    assert_eq!(
        appended_seqs(&store.append_batch(&batch, NOW).expect("append")),
        [1, 2, 1, 3]
    );
    let batch = vec![message(&carol, "c1", ac), message(&bob, "b2", ab)];
    assert_eq!(
        appended_seqs(&store.append_batch(&batch, NOW).expect("append")),
        [2, 4]
    );
    let seqs: Vec<u64> = store
        .messages_after(&alice, ab, Seq::ZERO, 100)
        .expect("read")
        .expect("member")
        .iter()
        .map(|frame| frame.seq.0)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

/// A repeated (sender, client_msg_id) returns the original and writes nothing, even within one
/// batch and even naming another conversation; another sender may reuse the id.
pub fn duplicate_client_msg_id_returns_original(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let (ac, _) = store.create_direct(&alice, &carol, NOW).expect("create");
    let outcomes = store
        .append_batch(&[message(&alice, "m", ab), message(&alice, "m", ab)], NOW)
        .expect("append");
    let AppendOutcome::Appended(original) = outcomes[0].clone() else {
        panic!("first must be appended: {outcomes:?}");
    };
    assert_eq!(outcomes[1], AppendOutcome::Duplicate(original.clone()));
    let later = store
        .append_batch(
            &[message(&alice, "m", ac), message(&bob, "m", ab)],
            UnixMillis(NOW.0 + 5),
        )
        .expect("append");
    assert_eq!(later[0], AppendOutcome::Duplicate(original));
    assert_eq!(appended_seqs(&later[1..]), [2]);
    assert_eq!(
        store
            .messages_after(&alice, ac, Seq::ZERO, 10)
            .expect("read"),
        Some(vec![])
    );
}

/// An edit or a reaction repeated under its client_msg_id within one batch (a client's retry
/// that caught up with the original) is applied once; the repeat is the original's duplicate.
pub fn duplicate_events_in_one_batch_apply_once(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    append_one(store, message(&alice, "a1", ab));
    let edit = event(
        &alice,
        "e1",
        ab,
        Content::Edit {
            target_seq: Seq(1),
            body: "edited".into(),
        },
    );
    let react = event(
        &bob,
        "r1",
        ab,
        Content::Reaction {
            target_seq: Seq(1),
            emoji: "👍".into(),
            add: true,
        },
    );
    let outcomes = store
        .append_batch(&[edit.clone(), react.clone(), edit, react], NOW)
        .expect("append");
    let (AppendOutcome::Appended(edited), AppendOutcome::Appended(reacted)) =
        (outcomes[0].clone(), outcomes[1].clone())
    else {
        panic!("the first of each must be appended: {outcomes:?}");
    };
    assert_eq!(outcomes[2], AppendOutcome::Duplicate(edited));
    assert_eq!(outcomes[3], AppendOutcome::Duplicate(reacted));
    let read = history(store, &alice, ab);
    assert_eq!(read.len(), 3, "one edit and one reaction stored");
    assert_eq!(read[0].body, "edited");
    assert_eq!(read[0].reactions.len(), 1);
    assert_eq!(read[0].reactions[0].user_ids, [bob]);
}

/// A member removed after sending still gets the original ack for a retry of that send (it was
/// stored while they were a member), while a new send is `NotMember`.
pub fn a_removed_members_retry_gets_the_original(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let group = store
        .create_group(&alice, "team", std::slice::from_ref(&bob), NOW)
        .expect("create");
    let AppendOutcome::Appended(original) = append_one(store, message(&bob, "b1", group)) else {
        panic!("a member's send is appended");
    };
    store.remove_member(group, &bob).expect("remove");
    assert_eq!(
        append_one(store, message(&bob, "b1", group)),
        AppendOutcome::Duplicate(original)
    );
    assert_eq!(
        append_one(store, message(&bob, "b2", group)),
        AppendOutcome::NotMember
    );
    assert_eq!(history(store, &alice, group).len(), 1);
}

/// Non-members and unknown conversations get `NotMember`, and nothing is written, also in a
/// batch where the same sender or the same conversation has just passed the membership check.
pub fn non_member_cannot_append(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let mallory = user(store, "mallory");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let (bc, _) = store.create_direct(&bob, &carol, NOW).expect("create");
    let outcomes = store
        .append_batch(
            &[
                message(&alice, "z", ab),
                message(&mallory, "x", ab),
                message(&alice, "y", ConversationId(999_999)),
                message(&alice, "w", bc),
                message(&alice, "v", ab),
            ],
            NOW,
        )
        .expect("append");
    assert_eq!(appended_seqs(&outcomes[..1]), [1]);
    assert_eq!(outcomes[1], AppendOutcome::NotMember);
    assert_eq!(outcomes[2], AppendOutcome::NotMember);
    assert_eq!(outcomes[3], AppendOutcome::NotMember);
    assert_eq!(appended_seqs(&outcomes[4..]), [2]);
    assert_eq!(history(store, &bob, bc).len(), 0);
}

/// `messages_after` pages forwards in seq order.
pub fn messages_after_is_ordered(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let batch: Vec<NewMessage> = (0..25)
        .map(|i| message(&alice, &format!("m{i}"), ab))
        .collect();
    store.append_batch(&batch, NOW).expect("append");
    let mut cursor = Seq::ZERO;
    let mut seen = Vec::new();
    loop {
        let page = store
            .messages_after(&bob, ab, cursor, 10)
            .expect("read")
            .expect("member");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        cursor = page[page.len() - 1].seq;
        seen.extend(page.iter().map(|frame| (frame.seq.0, frame.body.clone())));
    }
    let expected: Vec<(u64, String)> = (0..25).map(|i| (i + 1, format!("body of m{i}"))).collect();
    assert_eq!(seen, expected);
}

/// `messages_before` returns the newest page below a seq, ascending.
pub fn messages_before_pages_backwards(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let batch: Vec<NewMessage> = (0..7)
        .map(|i| message(&bob, &format!("m{i}"), ab))
        .collect();
    store.append_batch(&batch, NOW).expect("append");
    let seqs = |before: u64, limit| -> Vec<u64> {
        store
            .messages_before(&alice, ab, Seq(before), limit)
            .expect("read")
            .expect("member")
            .iter()
            .map(|frame| frame.seq.0)
            .collect()
    };
    assert_eq!(seqs(8, 3), [5, 6, 7]);
    assert_eq!(seqs(5, 3), [2, 3, 4]);
    assert_eq!(seqs(2, 3), [1]);
    assert_eq!(seqs(1, 3), Vec::<u64>::new());
}

/// Adding and removing members is reflected in reads and in what may be appended.
pub fn membership_changes(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store
        .create_group(&alice, "team", std::slice::from_ref(&bob), NOW)
        .expect("group");
    let info = store
        .conversation_info(group)
        .expect("info")
        .expect("exists");
    assert_eq!(info.kind, ConversationKind::Group);
    assert_eq!(
        info.members,
        vec![(alice.clone(), Role::Owner), (bob.clone(), Role::Member)]
    );
    assert_eq!(
        store
            .add_member(group, &carol, Role::Admin, NOW)
            .expect("add"),
        MembershipChange::Changed
    );
    assert_eq!(
        store
            .add_member(group, &carol, Role::Member, NOW)
            .expect("add again"),
        MembershipChange::Unchanged
    );
    assert_eq!(
        store.remove_member(group, &bob).expect("remove"),
        MembershipChange::Changed
    );
    assert_eq!(
        store.remove_member(group, &bob).expect("again"),
        MembershipChange::Unchanged
    );
    let outcomes = store
        .append_batch(
            &[message(&bob, "late", group), message(&carol, "hi", group)],
            NOW,
        )
        .expect("append");
    assert_eq!(outcomes[0], AppendOutcome::NotMember);
    assert_eq!(appended_seqs(&outcomes[1..]), [1]);
    assert!(store.conversation_for(group, &bob).expect("view").is_none());
    assert_eq!(
        store
            .messages_after(&bob, group, Seq::ZERO, 10)
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .messages_before(&bob, group, Seq(10), 10)
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .messages_after(&alice, ConversationId(999_999), Seq::ZERO, 10)
            .expect("read"),
        None,
        "unknown conversations read like forbidden ones"
    );
    let heads: Vec<ConversationId> = store
        .heads_of(&bob)
        .expect("heads")
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert!(!heads.contains(&group));
    assert_eq!(
        store.heads_of(&carol).expect("heads"),
        vec![(group, Seq(1))]
    );
    assert_eq!(store.conversation_count(&carol).expect("count"), 1);
    assert_eq!(
        store.conversation_count(&bob).expect("count"),
        heads.len(),
        "a removed member no longer counts the group"
    );
    let nobody = user(store, "nobody");
    assert_eq!(store.conversation_count(&nobody).expect("count"), 0);
}

/// When the owner leaves, the longest-standing admin becomes owner (else the oldest member).
pub fn owner_leaving_hands_over(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store
        .create_group(&alice, "team", std::slice::from_ref(&bob), NOW)
        .expect("group");
    store
        .add_member(group, &carol, Role::Admin, UnixMillis(NOW.0 + 1))
        .expect("add");
    store.remove_member(group, &alice).expect("owner leaves");
    let info = store
        .conversation_info(group)
        .expect("info")
        .expect("exists");
    assert!(
        info.members.contains(&(carol.clone(), Role::Owner)),
        "{info:?}"
    );
    assert!(
        info.members.contains(&(bob.clone(), Role::Member)),
        "{info:?}"
    );
    store
        .remove_member(group, &carol)
        .expect("next owner leaves");
    let info = store
        .conversation_info(group)
        .expect("info")
        .expect("exists");
    assert_eq!(info.members, vec![(bob, Role::Owner)]);
}

/// Per-viewer views: last message, unread count (others' messages), newest activity first.
pub fn conversation_views(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let group = store
        .create_group(&alice, "team", &[bob.clone(), carol.clone()], NOW)
        .expect("group");
    store
        .append_batch(
            &[
                message(&bob, "b1", ab),
                message(&alice, "a1", ab),
                message(&carol, "c1", group),
            ],
            UnixMillis(NOW.0 + 10),
        )
        .expect("append");
    store
        .append_batch(&[message(&bob, "b2", ab)], UnixMillis(NOW.0 + 20))
        .expect("append");
    let list = store.conversations_of(&alice).expect("list");
    let ids: Vec<ConversationId> = list.iter().map(|c| c.conversation_id).collect();
    assert_eq!(ids, [ab, group], "newest activity first");
    assert_eq!(list[0].head_seq, Seq(3));
    assert_eq!(list[0].unread_count, 2, "own messages are not unread");
    assert_eq!(
        list[0].last_message.as_ref().map(|m| m.body.as_str()),
        Some("body of b2")
    );
    assert_eq!(list[0].name, None);
    assert_eq!(list[1].name.as_deref(), Some("team"));
    assert_eq!(list[1].members.len(), 3);
    let view = store
        .conversation_for(group, &carol)
        .expect("view")
        .expect("member");
    assert_eq!(view.unread_count, 0);
    assert_eq!(view.head_seq, Seq(1));
    let empty = store.create_direct(&bob, &carol, NOW).expect("create").0;
    let view = store
        .conversation_for(empty, &bob)
        .expect("view")
        .expect("member");
    assert_eq!((view.head_seq, view.last_message), (Seq::ZERO, None));
}

/// The epoch is non-empty and does not change while the store lives.
pub fn epoch_is_stable(store: &dyn Store) {
    let epoch = store.epoch();
    assert!(!epoch.0.is_empty());
    assert_eq!(store.epoch(), epoch);
}

/// The rule the suite manages with: owners manage non-owners, admins manage members.
fn may_manage(actor: Role, target: Role) -> bool {
    matches!(
        (actor, target),
        (Role::Owner, Role::Admin | Role::Member) | (Role::Admin, Role::Member)
    )
}

/// `add_member_as` / `remove_member_as` decide from the actor's role, the group's size and the
/// users' existence as stored in the same transaction, and write nothing unless `Changed`.
pub fn managing_on_behalf_checks_the_actor(store: &dyn Store) {
    let owner = user(store, "owner");
    let admin = user(store, "admin");
    let member = user(store, "member");
    let extra = user(store, "extra");
    let outsider = user(store, "outsider");
    let ghost = UserId::parse("ghost").expect("valid");
    let group = store
        .create_group(&owner, "team", std::slice::from_ref(&member), NOW)
        .expect("group");
    let (direct, _) = store.create_direct(&owner, &member, NOW).expect("direct");
    let add = |actor: &UserId, target: &UserId, role: Role, max: usize| {
        store
            .add_member_as(actor, group, target, role, max, may_manage, NOW)
            .expect("add")
    };
    assert_eq!(
        add(&outsider, &extra, Role::Member, 10),
        ManageOutcome::NotFound
    );
    assert_eq!(
        add(&member, &extra, Role::Member, 10),
        ManageOutcome::Forbidden
    );
    assert_eq!(add(&owner, &admin, Role::Admin, 10), ManageOutcome::Changed);
    assert_eq!(
        add(&admin, &extra, Role::Admin, 10),
        ManageOutcome::Forbidden
    );
    assert_eq!(
        add(&admin, &ghost, Role::Member, 10),
        ManageOutcome::UnknownUser
    );
    assert_eq!(add(&admin, &extra, Role::Member, 3), ManageOutcome::Full);
    assert_eq!(add(&admin, &extra, Role::Member, 4), ManageOutcome::Changed);
    assert_eq!(
        add(&admin, &extra, Role::Member, 4),
        ManageOutcome::Unchanged
    );
    assert_eq!(
        store
            .add_member_as(&owner, direct, &extra, Role::Member, 10, may_manage, NOW)
            .expect("add"),
        ManageOutcome::Direct
    );
    let remove = |actor: &UserId, target: &UserId| {
        store
            .remove_member_as(actor, group, target, may_manage)
            .expect("remove")
    };
    assert_eq!(remove(&member, &extra), ManageOutcome::Forbidden);
    assert_eq!(remove(&admin, &owner), ManageOutcome::Forbidden);
    assert_eq!(remove(&admin, &outsider), ManageOutcome::NotMember);
    assert_eq!(remove(&outsider, &member), ManageOutcome::NotFound);
    assert_eq!(remove(&admin, &extra), ManageOutcome::Changed);
    assert_eq!(
        remove(&member, &member),
        ManageOutcome::Changed,
        "anyone may leave"
    );
    assert_eq!(remove(&owner, &owner), ManageOutcome::Changed);
    let info = store
        .conversation_info(group)
        .expect("info")
        .expect("exists");
    assert_eq!(
        info.members,
        vec![(admin, Role::Owner)],
        "the admin inherited the group"
    );
}

/// `unread_count` counts at most `UNREAD_COUNT_MAX`, so listing never scans a whole history.
pub fn unread_count_saturates(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let over = lanes_protocol::limits::UNREAD_COUNT_MAX + 5;
    let batch: Vec<NewMessage> = (0..over)
        .map(|i| message(&bob, &format!("m{i}"), ab))
        .collect();
    store.append_batch(&batch, NOW).expect("append");
    let view = store
        .conversation_for(ab, &alice)
        .expect("view")
        .expect("member");
    assert_eq!(view.head_seq, Seq(over));
    assert_eq!(view.unread_count, lanes_protocol::limits::UNREAD_COUNT_MAX);
}

/// Edits replace the text, deletes erase it (and the edits' texts) but keep the seq, reactions
/// add and remove; each is a lane event with its own seq, and messages read back carry their
/// current state.
pub fn edits_deletes_and_reactions(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    store
        .append_batch(&[message(&alice, "a1", ab), message(&bob, "b1", ab)], NOW)
        .expect("append");
    let edit = Content::Edit {
        target_seq: Seq(1),
        body: "edited".into(),
    };
    let edited = append_one(store, event(&alice, "e1", ab, edit.clone()));
    assert!(
        matches!(&edited, AppendOutcome::Appended(frame) if frame.seq == Seq(3) && frame.kind == EventKind::Edit && frame.target_seq == Some(Seq(1)))
    );
    assert!(
        matches!(append_one(store, event(&alice, "e1", ab, edit)), AppendOutcome::Duplicate(frame) if frame.seq == Seq(3)),
        "a retried edit is the original"
    );
    let thumbs = |add| Content::Reaction {
        target_seq: Seq(1),
        emoji: "👍".into(),
        add,
    };
    assert!(
        matches!(append_one(store, event(&bob, "r1", ab, thumbs(true))), AppendOutcome::Appended(frame) if frame.kind == EventKind::ReactionAdd && frame.emoji.as_deref() == Some("👍"))
    );
    assert_eq!(
        append_one(store, event(&bob, "r2", ab, thumbs(true))),
        AppendOutcome::Rejected(AppendRejection::ReactionUnchanged)
    );
    append_one(store, event(&alice, "r3", ab, thumbs(true)));
    let reply = Content::Message {
        body: "answer".into(),
        reply_to: Some(Seq(1)),
    };
    assert!(
        matches!(append_one(store, event(&bob, "b2", ab, reply)), AppendOutcome::Appended(frame) if frame.reply_to == Some(Seq(1)))
    );
    let read = history(store, &bob, ab);
    assert_eq!(read.len(), 6);
    assert_eq!(read[0].body, "edited");
    assert!(read[0].edited_at.is_some());
    assert_eq!(read[0].reactions.len(), 1);
    assert_eq!(read[0].reactions[0].user_ids, [alice.clone(), bob.clone()]);
    assert_eq!(read[5].reply_to, Some(Seq(1)));
    append_one(store, event(&bob, "r4", ab, thumbs(false)));
    assert!(
        matches!(append_one(store, event(&alice, "d1", ab, Content::Delete { target_seq: Seq(1) })), AppendOutcome::Appended(frame) if frame.seq == Seq(8))
    );
    let read = history(store, &bob, ab);
    assert_eq!(read.len(), 8, "deleting keeps every seq");
    assert!(read[0].deleted && read[0].body.is_empty() && read[0].reactions.is_empty());
    assert!(
        read[2].deleted && read[2].body.is_empty(),
        "the edit's text is gone too"
    );
    assert_eq!(read[7].kind, EventKind::Delete);
    assert_eq!(
        append_one(
            store,
            event(
                &alice,
                "e2",
                ab,
                Content::Edit {
                    target_seq: Seq(1),
                    body: "again".into()
                }
            )
        ),
        AppendOutcome::Rejected(AppendRejection::Deleted)
    );
    let list = store.conversations_of(&alice).expect("list");
    assert_eq!(
        list[0].last_message.as_ref().map(|m| m.seq),
        Some(Seq(6)),
        "the last message is the last text message"
    );
}

/// Edits and deletes are the author's; targets must be messages of the conversation.
pub fn events_refer_to_messages_only(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    append_one(store, message(&alice, "a1", ab));
    let edit = |seq| Content::Edit {
        target_seq: Seq(seq),
        body: "x".into(),
    };
    assert_eq!(
        append_one(store, event(&bob, "e1", ab, edit(1))),
        AppendOutcome::Rejected(AppendRejection::NotAuthor)
    );
    assert_eq!(
        append_one(
            store,
            event(&bob, "d1", ab, Content::Delete { target_seq: Seq(1) })
        ),
        AppendOutcome::Rejected(AppendRejection::NotAuthor)
    );
    assert_eq!(
        append_one(store, event(&alice, "e2", ab, edit(9))),
        AppendOutcome::Rejected(AppendRejection::NoSuchMessage),
        "beyond the head"
    );
    append_one(store, event(&alice, "e3", ab, edit(1)));
    assert_eq!(
        append_one(store, event(&alice, "e4", ab, edit(2))),
        AppendOutcome::Rejected(AppendRejection::NoSuchMessage),
        "an edit is not a message"
    );
    assert_eq!(
        append_one(store, event(&carol, "c1", ab, edit(1))),
        AppendOutcome::NotMember
    );
    assert_eq!(
        history(store, &alice, ab).len(),
        2,
        "nothing else was written"
    );
    assert_eq!(history(store, &alice, ab)[0].body, "x");
}

/// Receipt positions move forward only, never past the head, and reading implies receiving.
pub fn markers_only_move_forward(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let batch: Vec<NewMessage> = (0..5)
        .map(|i| message(&alice, &format!("m{i}"), ab))
        .collect();
    store.append_batch(&batch, NOW).expect("append");
    let update = |user: &UserId, delivered, read| MarkerUpdate {
        conversation_id: ab,
        user_id: user.clone(),
        delivered: Seq(delivered),
        read: Seq(read),
    };
    let changed = store
        .advance_markers(&[update(&bob, 3, 0)])
        .expect("advance");
    assert_eq!(changed.len(), 1);
    assert_eq!(
        (changed[0].delivered_seq, changed[0].read_seq),
        (Seq(3), Seq::ZERO)
    );
    assert!(
        store
            .advance_markers(&[update(&bob, 2, 0)])
            .expect("advance")
            .is_empty(),
        "backwards is a no-op"
    );
    let changed = store
        .advance_markers(&[update(&bob, 0, 4)])
        .expect("advance");
    assert_eq!(
        (changed[0].delivered_seq, changed[0].read_seq),
        (Seq(4), Seq(4))
    );
    let changed = store
        .advance_markers(&[update(&bob, 0, 99)])
        .expect("advance");
    assert_eq!(
        (changed[0].delivered_seq, changed[0].read_seq),
        (Seq(5), Seq(5)),
        "clamped to the head"
    );
    assert!(
        store
            .advance_markers(&[update(&carol, 1, 1)])
            .expect("advance")
            .is_empty(),
        "non-members have no positions"
    );
    let view = store
        .conversation_for(ab, &bob)
        .expect("view")
        .expect("member");
    assert_eq!((view.read_seq, view.unread_count), (Seq(5), 0));
    let receipts = store
        .receipts_of(&alice, None, usize::MAX)
        .expect("receipts");
    assert_eq!(receipts.len(), 1);
    assert_eq!((&receipts[0].user_id, receipts[0].read_seq), (&bob, Seq(5)));
    assert_eq!(
        store
            .receipts_of(&alice, Some(ab), usize::MAX)
            .expect("receipts"),
        receipts
    );
    assert!(
        store
            .receipts_of(&carol, Some(ab), usize::MAX)
            .expect("receipts")
            .is_empty(),
        "only a member sees a conversation's positions"
    );
}

/// The listing names at most `MEMBERS_LISTED_MAX` members (the viewer first) and counts them
/// all; so does the conversation's own view, and `members_page` walks through everyone.
pub fn listings_cap_members(store: &dyn Store) {
    let max = lanes_protocol::limits::MEMBERS_LISTED_MAX;
    let owner = user(store, "owner");
    let others: Vec<UserId> = (0..max + 5)
        .map(|n| user(store, &format!("m{n:03}")))
        .collect();
    let group = store
        .create_group(&owner, "crowd", &others, NOW)
        .expect("group");
    let small = store
        .create_group(&owner, "few", &others[..3], NOW)
        .expect("group");
    let viewer = &others[50];
    let listing = store.conversations_of(viewer).expect("listing");
    let crowd = listing
        .iter()
        .find(|c| c.conversation_id == group)
        .expect("listed");
    assert_eq!(crowd.member_count, (max + 6) as u64);
    assert_eq!(crowd.members.len(), max);
    assert_eq!(&crowd.members[0].user_id, viewer, "the viewer comes first");
    let rest: Vec<&UserId> = crowd.members[1..].iter().map(|m| &m.user_id).collect();
    let mut expected: Vec<&UserId> = std::iter::once(&owner)
        .chain(others.iter())
        .filter(|user_id| *user_id != viewer)
        .collect();
    expected.sort();
    expected.truncate(max - 1);
    assert_eq!(rest, expected, "then the others by user id");
    let view = store
        .conversation_for(group, viewer)
        .expect("view")
        .expect("member");
    assert_eq!(view.members, crowd.members, "the same cap as the listing");
    assert_eq!(view.member_count, (max + 6) as u64);
    let mut everyone = Vec::new();
    loop {
        let page = store
            .members_page(group, viewer, everyone.last(), 40)
            .expect("page")
            .expect("member");
        if page.is_empty() {
            break;
        }
        everyone.extend(page.into_iter().map(|member| member.user_id));
    }
    assert_eq!(everyone.len(), max + 6, "the pages hold everyone");
    let few = store.conversations_of(&others[0]).expect("listing");
    let few = few
        .iter()
        .find(|c| c.conversation_id == small)
        .expect("listed");
    assert_eq!((few.members.len(), few.member_count), (4, 4));
}

/// The listing comes in pages that join up to the whole, in its order, ties included.
pub fn conversations_come_in_pages(store: &dyn Store) {
    let alice = user(store, "alice");
    let mut groups = Vec::new();
    for (n, now) in [NOW, NOW, UnixMillis(NOW.0 + 5), NOW, UnixMillis(NOW.0 + 9)]
        .into_iter()
        .enumerate()
    {
        let group = store
            .create_group(&alice, &format!("g{n}"), &[], now)
            .expect("group");
        groups.push(group);
    }
    // A message makes the first group the most recently active.
    store
        .append_batch(&[message(&alice, "m", groups[0])], UnixMillis(NOW.0 + 20))
        .expect("append");
    let whole: Vec<ConversationId> = store
        .conversations_of(&alice)
        .expect("listing")
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    assert_eq!(whole.len(), 5);
    assert_eq!(whole[0], groups[0], "newest activity first");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store.conversations_page(&alice, after, 2).expect("page");
        assert!(page.len() <= 2);
        paged.extend(page.iter().map(|c| c.conversation_id));
        match next {
            Some(cursor) => {
                assert_eq!(Some(&cursor.conversation_id), paged.last());
                after = Some(cursor);
            }
            None => break,
        }
    }
    assert_eq!(paged, whole, "the pages join up to the listing");
    let (all, next) = store.conversations_page(&alice, None, 5).expect("page");
    assert_eq!(
        (all.len(), next),
        (5, None),
        "nothing follows a full last page"
    );
}

/// Members come in pages by user id, each after the last one seen; only members may look.
pub fn members_come_in_pages(store: &dyn Store) {
    let owner = user(store, "owner");
    let others: Vec<UserId> = (0..5).map(|n| user(store, &format!("m{n}"))).collect();
    let outsider = user(store, "outsider");
    let group = store
        .create_group(&owner, "five", &others, NOW)
        .expect("group");
    let page = |after: Option<&UserId>, limit| -> Vec<String> {
        store
            .members_page(group, &owner, after, limit)
            .expect("page")
            .expect("a member may look")
            .into_iter()
            .map(|member| member.user_id.as_str().to_owned())
            .collect()
    };
    assert_eq!(page(None, 2), ["m0", "m1"]);
    let m1 = UserId::parse("m1").expect("valid");
    assert_eq!(page(Some(&m1), 3), ["m2", "m3", "m4"]);
    let m4 = UserId::parse("m4").expect("valid");
    assert_eq!(page(Some(&m4), 3), ["owner"]);
    assert!(page(Some(&owner), 3).is_empty());
    let roles = store
        .members_page(group, &owner, Some(&m4), 1)
        .expect("page")
        .expect("member");
    assert_eq!(roles[0].role, Role::Owner);
    assert!(
        store
            .members_page(group, &outsider, None, 10)
            .expect("page")
            .is_none(),
        "not a member"
    );
}

/// Beyond `members_max` members, a member is shown only their own positions; conversations are
/// judged by size one by one; `larger_than` finds the same ones.
pub fn large_groups_show_only_own_positions(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store
        .create_group(&alice, "team", &[bob.clone(), carol.clone()], NOW)
        .expect("group");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("direct");
    let batch = vec![message(&alice, "g1", group), message(&alice, "d1", ab)];
    store.append_batch(&batch, NOW).expect("append");
    let updates: Vec<MarkerUpdate> = [(&alice, group), (&bob, group), (&bob, ab), (&alice, ab)]
        .into_iter()
        .map(|(user, conversation_id)| MarkerUpdate {
            conversation_id,
            user_id: user.clone(),
            delivered: Seq(1),
            read: Seq::ZERO,
        })
        .collect();
    assert_eq!(store.advance_markers(&updates).expect("advance").len(), 4);
    let shown = |viewer: &UserId, conversation, members_max| -> Vec<(ConversationId, UserId)> {
        store
            .receipts_of(viewer, conversation, members_max)
            .expect("receipts")
            .into_iter()
            .map(|row| (row.conversation_id, row.user_id))
            .collect()
    };
    let mut all = vec![
        (group, alice.clone()),
        (group, bob.clone()),
        (ab, alice.clone()),
        (ab, bob.clone()),
    ];
    all.sort();
    assert_eq!(
        shown(&alice, None, 3),
        all,
        "three members are not more than 3"
    );
    let mut own_in_group = vec![
        (group, alice.clone()),
        (ab, alice.clone()),
        (ab, bob.clone()),
    ];
    own_in_group.sort();
    assert_eq!(
        shown(&alice, None, 2),
        own_in_group,
        "the group is larger than 2, the direct conversation is not"
    );
    for (members_max, expected, large) in [(2, &own_in_group, vec![group]), (3, &all, vec![])] {
        let (rows, found) = store
            .sync_receipts_of(&alice, members_max)
            .expect("sync receipts");
        let rows: Vec<(ConversationId, UserId)> = rows
            .into_iter()
            .map(|row| (row.conversation_id, row.user_id))
            .collect();
        assert_eq!(
            (&rows, found),
            (expected, large),
            "members_max {members_max}"
        );
    }
    assert_eq!(shown(&bob, Some(group), 2), vec![(group, bob.clone())]);
    assert!(
        shown(&carol, Some(group), 2).is_empty(),
        "carol has no position of her own"
    );
    assert_eq!(shown(&carol, Some(group), 3).len(), 2);
    assert_eq!(
        store.larger_than(&[ab, group], 2).expect("larger"),
        vec![group]
    );
    assert!(
        store
            .larger_than(&[ab, group], 3)
            .expect("larger")
            .is_empty()
    );
    assert_eq!(
        store
            .larger_than(&[group, ConversationId(999_999)], 0)
            .expect("larger"),
        vec![group],
        "a conversation that does not exist has no members"
    );
}

/// Settings round-trip; presence is visible only between users who share a conversation.
pub fn settings_and_presence(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    store.create_direct(&alice, &bob, NOW).expect("create");
    assert!(!store.settings(&alice).expect("settings").hide_read_receipts);
    let hide = Settings {
        hide_read_receipts: true,
    };
    store.set_settings(&alice, &hide).expect("set");
    assert_eq!(store.settings(&alice).expect("settings"), hide);
    store
        .record_last_seen(&[(bob.clone(), UnixMillis(NOW.0 + 5))])
        .expect("last seen");
    let visible = store
        .presence_visible(&alice, &[bob.clone(), carol.clone(), alice.clone()])
        .expect("visible");
    assert_eq!(
        visible,
        [(bob, Some(UnixMillis(NOW.0 + 5))), (alice, None)],
        "carol shares nothing with alice"
    );
}

/// The application's system messages go into any existing conversation, idempotently.
pub fn system_messages_need_no_membership(store: &dyn Store) {
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let system = UserId::parse(lanes_protocol::SYSTEM_USER_ID).expect("valid");
    let (ab, _) = store.create_direct(&alice, &bob, NOW).expect("create");
    let post = |conversation_id| {
        event(
            &system,
            "s1",
            conversation_id,
            Content::System {
                body: "welcome".into(),
            },
        )
    };
    let first = append_one(store, post(ab));
    assert!(
        matches!(&first, AppendOutcome::Appended(frame) if frame.kind == EventKind::System && frame.seq == Seq(1))
    );
    assert!(
        matches!(append_one(store, post(ab)), AppendOutcome::Duplicate(frame) if frame.seq == Seq(1))
    );
    assert_eq!(
        append_one(
            store,
            event(
                &system,
                "s2",
                ConversationId(999),
                Content::System { body: "x".into() }
            )
        ),
        AppendOutcome::NotMember,
        "the conversation must exist"
    );
    assert_eq!(history(store, &alice, ab)[0].sender_id, system);
}
