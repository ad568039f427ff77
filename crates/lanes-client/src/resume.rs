//! The resume point the app can persist: cursors and epoch as of the last event the app took
//! from `Events::next`, so that events still queued for the app are never counted as held.

use std::collections::BTreeMap;

use lanes_protocol::{ConversationId, Cursor, Seq, StoreEpoch};

use crate::client::Event;
use crate::delivery::epoch_changed;

/// Cursors and epoch, advanced by each event in the order the app receives them.
#[derive(Debug, Default)]
pub(crate) struct ResumePoint {
    epoch: Option<StoreEpoch>,
    cursors: BTreeMap<ConversationId, Seq>,
}

impl ResumePoint {
    /// Starts where the app said it was.
    pub(crate) fn new(cursors: &[Cursor], epoch: Option<StoreEpoch>) -> ResumePoint {
        let mut resume = ResumePoint {
            epoch,
            cursors: BTreeMap::new(),
        };
        for cursor in cursors {
            resume.advance(cursor.conversation_id, cursor.seq);
        }
        resume
    }

    /// The app received `event`. Messages arrive gap-free per conversation, so the last seq
    /// received is the contiguous cursor. A welcome from another epoch starts over, and `Left`
    /// forgets the conversation, exactly when the driver's dedupe state did, because both see
    /// the same sequence of events.
    pub(crate) fn observe(&mut self, event: &Event) {
        match event {
            Event::Connected { epoch, .. } => {
                if epoch_changed(self.epoch.as_ref(), epoch) {
                    self.cursors.clear();
                }
                self.epoch = Some(epoch.clone());
            }
            Event::Message(message) => self.advance(message.conversation_id, message.seq),
            Event::Left(conversation_id) => {
                self.cursors.remove(conversation_id);
            }
            Event::Synced
            | Event::Joined(_)
            | Event::MemberAdded { .. }
            | Event::MemberRemoved { .. }
            | Event::Disconnected { .. }
            | Event::Receipts { .. }
            | Event::Typing { .. }
            | Event::Presence(_)
            | Event::ServerError(_) => {}
        }
    }

    /// Cursors by conversation id.
    pub(crate) fn cursors(&self) -> Vec<Cursor> {
        self.cursors
            .iter()
            .map(|(conversation_id, seq)| Cursor {
                conversation_id: *conversation_id,
                seq: *seq,
            })
            .collect()
    }

    /// The epoch the cursors belong to.
    pub(crate) fn epoch(&self) -> Option<StoreEpoch> {
        self.epoch.clone()
    }

    fn advance(&mut self, conversation_id: ConversationId, seq: Seq) {
        let cursor = self.cursors.entry(conversation_id).or_default();
        *cursor = (*cursor).max(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_protocol::{ClientMsgId, MessageFrame, MessageId, UnixMillis, UserId};

    fn connected(epoch: &str) -> Event {
        Event::Connected {
            user_id: UserId::parse("alice").unwrap(),
            epoch: StoreEpoch(epoch.into()),
            receipts_members_max: 100,
        }
    }

    fn message(conversation: u64, seq: u64) -> Event {
        Event::Message(MessageFrame::new_message(
            ConversationId(conversation),
            Seq(seq),
            MessageId(seq),
            UserId::parse("bob").unwrap(),
            ClientMsgId::parse("m").unwrap(),
            String::new(),
            UnixMillis(0),
        ))
    }

    fn check(
        initial: &[(u64, u64)],
        epoch: Option<&str>,
        events: Vec<Event>,
        expected: &[(u64, u64)],
        expected_epoch: Option<&str>,
    ) {
        let initial: Vec<Cursor> = initial
            .iter()
            .map(|&(conversation, seq)| Cursor {
                conversation_id: ConversationId(conversation),
                seq: Seq(seq),
            })
            .collect();
        let mut resume = ResumePoint::new(&initial, epoch.map(|epoch| StoreEpoch(epoch.into())));
        for event in &events {
            resume.observe(event);
        }
        let cursors: Vec<(u64, u64)> = resume
            .cursors()
            .iter()
            .map(|cursor| (cursor.conversation_id.0, cursor.seq.0))
            .collect();
        assert_eq!(cursors, expected);
        assert_eq!(
            resume.epoch(),
            expected_epoch.map(|epoch| StoreEpoch(epoch.into()))
        );
    }

    #[test]
    fn follows_received_events() {
        check(&[], None, vec![], &[], None);
        check(
            &[(2, 4)],
            None,
            vec![
                connected("e1"),
                message(1, 1),
                message(1, 2),
                Event::Synced,
                message(2, 5),
            ],
            &[(1, 2), (2, 5)],
            Some("e1"),
        );
        check(
            &[(1, 7)],
            Some("e1"),
            vec![
                connected("e1"),
                message(1, 8),
                message(2, 1),
                Event::Left(ConversationId(1)),
            ],
            &[(2, 1)],
            Some("e1"),
        );
        // Joined again: counted from the server's catch-up, which starts at seq 1.
        check(
            &[(1, 7)],
            Some("e1"),
            vec![
                Event::Left(ConversationId(1)),
                Event::Joined(ConversationId(1)),
                message(1, 1),
            ],
            &[(1, 1)],
            Some("e1"),
        );
        // A new epoch drops the old cursors; messages before it in the stream still count.
        check(
            &[(1, 7)],
            Some("e1"),
            vec![
                connected("e1"),
                message(1, 8),
                Event::Disconnected {
                    reason: "reset".into(),
                },
                connected("e2"),
                message(3, 1),
            ],
            &[(3, 1)],
            Some("e2"),
        );
    }
}
