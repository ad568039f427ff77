//! Rust client SDK for Lanes: retrying sends, resume from cursor, dedupe
