//! The wait for a server says what it waits for, and keeps saying it while it waits.

use std::time::Duration;

use streamrec_loadgen::{wait_ready_noting, Target};

#[test]
fn the_wait_for_readiness_says_what_it_waits_for_and_how_long() {
    // A loopback port where nothing listens.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let mut notes = Vec::new();
    let e = wait_ready_noting(
        &Target::new(url.clone(), "m"),
        Duration::from_millis(700),
        Duration::from_millis(100),
        &mut |line| notes.push(line),
    )
    .unwrap_err()
    .to_string();
    let ready = format!("{url}/v2/models/m/ready");
    assert_eq!(
        notes[0],
        format!("waiting for {ready} to answer 200 (timeout 0.7 s)...")
    );
    // Polls 200 ms apart in 700 ms: at least one progress line, each with the last answer.
    assert!(notes.len() >= 2, "{notes:?}");
    for n in &notes[1..] {
        assert!(
            n.starts_with(&format!("still waiting for {ready}: "))
                && n.contains("of 0.7 s (last: "),
            "{n}"
        );
    }
    assert!(e.contains("not ready after 0.7 s"), "{e}");
}
