//! Frame-level abuse after a good handshake: absurd declared lengths, junk bytes, bad
//! close codes, and a message cut into thousands of 1-byte fragments. Each peer must get
//! the close code RFC 6455 and docs/security.md promise, promptly, and the server must
//! stay healthy for everyone else.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use roomcast_adversarial::raw::{self, Ending, RawWs, CLOSE, CONT, PING, PONG, TEXT};
use roomcast_adversarial::{ws, Rng, Server, WAIT};
use serde_json::json;

/// A bystander gets an answer (within the harness's bound; how fast is reported, not
/// asserted): the server is still fine.
async fn assert_healthy(server: &Server) {
    let (mut c, _) = ws::connect(server.addr, "/ws").await;
    let t = Instant::now();
    let r = ws::request(&mut c, json!({"type": "ping", "id": "alive"}), |_| {}).await;
    assert_eq!(r["type"], "pong");
    println!("bystander pong after {:?}", t.elapsed());
    server.assert_no_panic();
}

#[tokio::test]
async fn declared_length_with_top_bit_set_closes_1002_at_once() {
    let server = Server::start(&[]);
    for opcode in [TEXT, raw::BINARY] {
        let mut peer = RawWs::welcomed(server.addr, "/ws").await;
        // 2^63: the top bit of the 64-bit length must be 0 (RFC 6455 §5.2). No payload
        // follows: the answer must not wait for one.
        peer.send_raw(&raw::header_declaring(opcode, 1 << 63))
            .await
            .unwrap();
        let t = Instant::now();
        let end = peer.ending(WAIT).await;
        println!("2^63 opcode {opcode}: {end:?} after {:?}", t.elapsed());
        assert_eq!(end.code(), Some(1002), "{end:?}");
        assert!(
            peer.r.tcp_closed(WAIT).await,
            "TCP left open after the close"
        );
    }
    assert_healthy(&server).await;
}

#[tokio::test]
async fn huge_declared_lengths_close_1009_before_any_payload() {
    let server = Server::start(&[]);
    let rss_before = server.rss_kib();
    // 2^62 is a legal length; anything over --max-message-size (1 MiB by default) must
    // be refused from the header alone.
    for len in [1u64 << 62, u64::from(u32::MAX), (1 << 20) + 1] {
        let mut peer = RawWs::welcomed(server.addr, "/ws").await;
        peer.send_raw(&raw::header_declaring(TEXT, len))
            .await
            .unwrap();
        let t = Instant::now();
        let end = peer.ending(WAIT).await;
        println!("declared {len} bytes: {end:?} after {:?}", t.elapsed());
        assert_eq!(end.code(), Some(1009), "declared {len}: {end:?}");
    }
    // A message under the limit in its first frame, over it with the next header.
    let mut peer = RawWs::welcomed(server.addr, "/ws").await;
    peer.send_frame(false, TEXT, &[b' '; 1000]).await.unwrap();
    peer.send_raw(&raw::header_declaring(CONT, 1 << 20))
        .await
        .unwrap();
    let end = peer.ending(WAIT).await;
    assert_eq!(end.code(), Some(1009), "across fragments: {end:?}");
    let grown = server.rss_kib().saturating_sub(rss_before);
    println!("server RSS growth over these peers: {grown} KiB");
    assert!(
        grown < 8 * 1024,
        "the server buffered something: +{grown} KiB"
    );
    assert_healthy(&server).await;
}

#[tokio::test]
async fn random_bytes_after_the_handshake_close_the_peer_alone() {
    let server = Server::start(&[]);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 1..=40u64 {
        let mut peer = RawWs::welcomed(server.addr, "/ws").await;
        let junk = Rng::new(seed).bytes(4096);
        // The server may close before reading everything: a failed write is fine.
        let _ = peer.send_raw(&junk).await;
        let end = peer.ending(WAIT).await;
        let key = match &end {
            Ending::Close(Some((code, _))) => code.to_string(),
            other => format!("{other:?}"),
        };
        *codes.entry(key).or_default() += 1;
        // Junk is a protocol error (1002), unless it happens to parse as a text frame
        // with bad UTF-8 (1007) or a frame declaring more than the size limit (1009).
        assert!(
            matches!(end.code(), Some(1002 | 1007 | 1009)),
            "seed {seed}: {end:?}"
        );
    }
    println!("close codes for 40 junk peers: {codes:?}");
    assert!(codes.get("1002").copied().unwrap_or(0) >= 20, "{codes:?}");
    assert_healthy(&server).await;
    // Every junk peer is gone from the hub: only the bystander's connection remained,
    // and it closed too.
    server
        .wait_metric("roomcast_connections", WAIT, |v| v == 0.0)
        .await
        .expect("every junk connection released");
}

#[tokio::test]
async fn close_frames_with_invalid_codes_close_1002() {
    let server = Server::start(&[]);
    // Codes a peer may not send (RFC 6455 §7.4): 0-999, 1004-1006, 1015, 1016-2999 are
    // reserved, unassigned or not for the wire, >= 5000 is not a close code; and a 1-byte payload.
    let mut bad: Vec<Vec<u8>> = [
        0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ]
    .iter()
    .map(|c| c.to_be_bytes().to_vec())
    .collect();
    bad.push(vec![0x03]);
    for payload in &bad {
        let mut peer = RawWs::welcomed(server.addr, "/ws").await;
        peer.send_frame(true, CLOSE, payload).await.unwrap();
        let end = peer.ending(WAIT).await;
        assert_eq!(end.code(), Some(1002), "close payload {payload:?}: {end:?}");
    }
    // A valid code with a reason that is not UTF-8: 1007.
    let mut peer = RawWs::welcomed(server.addr, "/ws").await;
    peer.send_frame(true, CLOSE, &[0x03, 0xE8, 0xFF, 0xFE])
        .await
        .unwrap();
    assert_eq!(peer.ending(WAIT).await.code(), Some(1007));
    // Valid codes are answered with a close that is not an error.
    for code in [1000u16, 1001, 1012, 1014, 3000, 4999] {
        let mut peer = RawWs::welcomed(server.addr, "/ws").await;
        peer.send_frame(true, CLOSE, &code.to_be_bytes())
            .await
            .unwrap();
        let end = peer.ending(WAIT).await;
        assert!(
            matches!(end.code(), Some(c) if c != 1002 && c != 1007),
            "valid code {code}: {end:?}"
        );
    }
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_one_byte_fragments_are_reassembled() {
    let server = Server::start(&[]);
    // A bystander measures round trips while the fragments stream in.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let addr = server.addr;
    let bystander = tokio::spawn(async move {
        let (mut c, _) = ws::connect(addr, "/ws").await;
        let (mut worst, mut n) = (Duration::ZERO, 0u32);
        while !*stop_rx.borrow_and_update() {
            let t = Instant::now();
            let r = ws::request(&mut c, json!({"type": "ping", "id": n}), |_| {}).await;
            assert_eq!(r["type"], "pong");
            worst = worst.max(t.elapsed());
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (worst, n)
    });
    let raw::RawWs { mut r, mut w } = RawWs::welcomed(server.addr, "/ws").await;
    const FRAGMENTS: usize = 200_000;
    let pad = "x".repeat(FRAGMENTS - 32);
    let msg = json!({"type": "ping", "id": "frag", "pad": pad}).to_string();
    // One frame per byte, with a ping between fragments every 1000 (control frames may
    // interleave), written in batches by their own task.
    let pings = (msg.len() / 1000) as u32;
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let bytes = msg.as_bytes();
        let mut batch = Vec::with_capacity(8 * 4096);
        let mut ping = 0u32;
        for (i, b) in bytes.iter().enumerate() {
            let fin = i + 1 == bytes.len();
            let op = if i == 0 { TEXT } else { CONT };
            batch.extend_from_slice(&raw::encode_frame(fin, op, &[*b], [9, 8, 7, 6]));
            if i % 1000 == 999 {
                ping += 1;
                let p = ping.to_be_bytes();
                batch.extend_from_slice(&raw::encode_frame(true, PING, &p, [1, 2, 3, 4]));
            }
            if batch.len() >= 4096 * 7 || fin {
                w.send_raw(&batch).await.unwrap();
                batch.clear();
            }
        }
        // Keep the write half: dropping it would send a FIN.
        (bytes.len(), w)
    });
    // Pongs (coalesced, in order, the latest one certainly) then the reassembled reply.
    let (mut last_pong, mut pongs) = (0u32, 0u32);
    let reply = loop {
        let f = r
            .read_frame(Duration::from_secs(30))
            .await
            .expect("pongs and the reply");
        match f.opcode {
            PONG => {
                let n = u32::from_be_bytes(f.payload.as_slice().try_into().unwrap());
                assert!(n > last_pong, "pong {n} after {last_pong}");
                last_pong = n;
                pongs += 1;
            }
            TEXT => break f.json(),
            op => panic!("unexpected opcode {op}"),
        }
    };
    let took = t.elapsed();
    let (len, _w) = writer.await.unwrap();
    stop_tx.send_replace(true);
    let (worst, n) = bystander.await.unwrap();
    println!(
        "{len} one-byte fragments + {pings} interleaved pings ({pongs} pongs): reassembled \
         reply after {took:?}; bystander worst round trip {worst:?} over {n}"
    );
    assert_eq!(reply, json!({"type": "pong", "id": "frag"}));
    assert_eq!(last_pong, pings, "the latest ping answered");
    // The bystander's worst round trip is reported above, not asserted (a speed limit).
    assert_healthy(&server).await;
}
