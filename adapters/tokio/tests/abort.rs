//! A slow consumer whose close cannot be delivered is reset (RST), not left to linger:
//! before, the server's end of a reader that stopped sat in FIN-WAIT-1 holding megabytes
//! of unsent data for minutes. With SO_LINGER 0 the kernel drops it at once, and the peer
//! sees a reset instead of a clean end after the whole backlog.

mod common;

use std::time::Duration;

use common::*;
use roomcast_tokio::{Config, Server};
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_slow_consumer_that_cannot_take_its_close_is_reset() {
    let mut config = Config::default();
    config.hub.max_buffered_bytes = 256 * 1024;
    config.close_timeout = Duration::from_millis(300);
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr();
    let rc = server.roomcast().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    // A member that joins and then never reads again.
    let mut stalled = RawWs::connect(addr, "/ws").await;
    stalled.read_frame().await.expect("welcome");
    stalled
        .send_frame(TEXT, br#"{"type":"join","room":"r","id":1}"#, true)
        .await;
    stalled.read_frame().await.expect("ack");

    // The server sends until it finds it slow (the kernel's buffers on both ends fill
    // first), closes it 1013, and the close frame cannot get out either.
    let blob = "x".repeat(64 * 1024);
    let data = serde_json::value::RawValue::from_string(json!(blob).to_string()).unwrap();
    let mut closed = false;
    for _ in 0..2_000 {
        let data = data.clone();
        rc.call(move |h, now| h.send_to_room(now, "r", "blob", Some(&data), &[]).map(drop))
            .await
            .unwrap()
            .ok();
        if rc.call(|h, _| h.stats().slow_consumers).await.unwrap() > 0 {
            closed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(closed, "the stalled member was never found slow");
    // Past the close bound, its socket is reset: reading now drains at most what our
    // own buffer holds and ends in ECONNRESET, not in a clean end of stream.
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(WAIT, async {
        // wait for the socket task to give up (300 ms bound), reading nothing meanwhile
        while rc.open_sockets() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            match stalled.stream_mut().read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e.kind()),
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert_eq!(
        ended,
        Err(std::io::ErrorKind::ConnectionReset),
        "a reset, not a lingering close"
    );
    let _ = stop.send(());
    serving.await.unwrap();
}
