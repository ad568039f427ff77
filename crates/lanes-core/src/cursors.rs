//! What a client holds of each conversation, and the rule that keeps a transport from writing a
//! seq twice or skipping one: `admit_live` for frames from the hub, `admit_caught_up` for pages
//! read from the store. Both transports (WebSocket, long-poll) decide with it.

use std::collections::HashMap;

use lanes_protocol::{ConversationId, Cursor, Seq};

/// What to do with a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write it.
    Write,
    /// The client already holds it: drop it.
    Duplicate,
    /// Messages before it are missing: catch up from the store instead (the live frame is then
    /// read back from there).
    Gap,
}

/// Per conversation, the last seq the client holds. ~24 bytes per conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    held: HashMap<ConversationId, Seq>,
}

impl Cursors {
    /// Cursors as a client sent them.
    pub fn from_cursors(cursors: impl IntoIterator<Item = Cursor>) -> Cursors {
        Cursors {
            held: cursors
                .into_iter()
                .map(|cursor| (cursor.conversation_id, cursor.seq))
                .collect(),
        }
    }

    /// The last seq held of `conversation_id` (0: nothing).
    pub fn held(&self, conversation_id: ConversationId) -> Seq {
        self.held
            .get(&conversation_id)
            .copied()
            .unwrap_or(Seq::ZERO)
    }

    /// Forgets everything (cursors from another store).
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// Every cursor, by conversation id.
    pub fn to_cursors(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .held
            .iter()
            .map(|(conversation_id, seq)| Cursor {
                conversation_id: *conversation_id,
                seq: *seq,
            })
            .collect();
        cursors.sort_by_key(|cursor| cursor.conversation_id);
        cursors
    }

    /// Decides whether a live message may be written, and records it if so. At or below what
    /// the client holds it is a duplicate (catch-up and live overlap). Past the next seq it
    /// would leave a gap.
    pub fn admit_live(&mut self, conversation_id: ConversationId, seq: Seq) -> Admission {
        let held = self.held.entry(conversation_id).or_insert(Seq::ZERO);
        if seq <= *held {
            Admission::Duplicate
        } else if seq == held.next() {
            *held = seq;
            Admission::Write
        } else {
            Admission::Gap
        }
    }

    /// Records a message read from the store during catch-up; false if the client holds it.
    /// Store pages are contiguous from the cursor, so no gap check is needed here.
    pub fn admit_caught_up(&mut self, conversation_id: ConversationId, seq: Seq) -> bool {
        let held = self.held.entry(conversation_id).or_insert(Seq::ZERO);
        if seq <= *held {
            return false;
        }
        *held = seq;
        true
    }
}
