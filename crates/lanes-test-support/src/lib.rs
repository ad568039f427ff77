//! Test helpers: TestServer runs the real lanes binary on a free port with a temp data dir
