//! The Lanes chat server: HTTP and WebSocket transports, committer, auth, config
