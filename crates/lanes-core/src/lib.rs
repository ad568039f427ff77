//! Sans-IO rules of Lanes: what a valid send is, what a connection does with each input, and how
//! pending commits are batched. Never awaits, spawns, does IO or reads the clock: time is passed in.

pub mod commit_queue;
pub mod connection;
pub mod cursors;
pub mod fuzz;
pub mod membership;
pub mod validate;

pub use commit_queue::CommitQueue;
pub use connection::{Connection, ConnectionConfig, Output, Violation};
pub use cursors::{Admission, Cursors};
pub use validate::{Limits, Rejection, ValidSend};
