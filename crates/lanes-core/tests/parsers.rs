//! Every parser of client input against arbitrary and structured random inputs (proptest), and
//! the fuzzers' corpus (`fuzz/corpus/`) replayed, so what fuzzing found stays fixed.

use std::path::PathBuf;

use lanes_core::fuzz;
use proptest::prelude::*;

/// Client frames built from the protocol's own vocabulary, so most of them decode and reach the
/// state machine (random bytes rarely do).
fn frame_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("hello"),
        Just("send"),
        Just("edit"),
        Just("delete"),
        Just("react"),
        Just("received"),
        Just("read"),
        Just("typing"),
        Just("presence"),
        Just("watch_presence"),
        Just("ping"),
    ];
    let number = prop_oneof![Just(0u64), 1u64..1000, Just(u64::MAX)];
    let text = prop_oneof![
        Just(String::new()),
        "[a-z0-9 ]{0,20}",
        "\\PC{0,8}",
        Just("👍".to_owned()),
        Just("👨‍👩‍👧‍👦".to_owned()),
    ];
    (
        kind,
        number.clone(),
        number,
        text.clone(),
        text,
        any::<bool>(),
    )
        .prop_map(|(kind, a, b, t1, t2, flag)| {
            serde_json::json!({
                "type": kind, "token": t1, "client_msg_id": format!("id{a}"),
                "conversation_id": a, "body": t2, "target_seq": b, "seq": b,
                "emoji": t1, "remove": flag, "state": if flag { "start" } else { "away" },
                "user_ids": [t1], "cursors": [{"conversation_id": a, "seq": b}],
            })
            .to_string()
        })
}

proptest! {
    #[test]
    fn random_bytes_never_break_the_parsers(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz::client_frame(&data);
        fuzz::http_body(&data);
        fuzz::fields(&data);
    }

    #[test]
    fn protocol_shaped_frames_round_trip_and_never_break_a_connection(text in frame_text()) {
        fuzz::client_frame(text.as_bytes());
        fuzz::http_body(text.as_bytes());
    }

    #[test]
    fn random_text_fields(text in "\\PC{0,80}") {
        fuzz::fields(text.as_bytes());
    }
}

/// Replays every input kept in `fuzz/corpus/<target>/` through its target.
#[test]
fn fuzz_corpus_replays_cleanly() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 3] = [
        ("client_frame", fuzz::client_frame),
        ("http_body", fuzz::http_body),
        ("fields", fuzz::fields),
    ];
    let mut replayed = 0;
    for (name, target) in targets {
        let dir = root.join(name);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("corpus {}: {err}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|err| panic!("{err}")).path();
            let data = std::fs::read(&path).unwrap_or_else(|err| panic!("{err}"));
            target(&data);
            replayed += 1;
        }
    }
    assert!(replayed >= 3, "the corpus is empty");
}
