//! Fan-out of frames from conversations to live connections, with bounded queues
