//! Hub tests: admission, welcome, heartbeat, shutdown and what a connection leaves behind.

use serde_json::{json, Value};

use super::*;

#[test]
fn welcome_has_conn_user_and_heartbeat() {
    let mut t = T::new();
    let id = t
        .hub
        .connect(
            Timestamp(0),
            ConnectRequest {
                user: Some("ann".into()),
                ..Default::default()
            },
        )
        .unwrap();
    t.drain();
    let w = &t.take(id)[0];
    assert_eq!(w["type"], "welcome");
    assert!(!w["conn"].as_str().unwrap().is_empty());
    assert_eq!(w["user"], "ann");
    assert_eq!(
        w["heartbeat"],
        json!({"interval_ms":25000,"timeout_ms":20000})
    );
    let anon = t.connect(None);
    assert_ne!(anon, id);
    assert!(matches!(t.events[0], Event::Connected { .. }));
}

#[test]
fn anonymous_welcome_has_null_user() {
    let mut t = T::new();
    let id = t
        .hub
        .connect(Timestamp(0), ConnectRequest::default())
        .unwrap();
    t.drain();
    assert_eq!(t.take(id)[0]["user"], Value::Null);
}

#[test]
fn bad_user_and_full_server_refused() {
    let mut t = T::with(HubConfig {
        max_connections: 1,
        ..Default::default()
    });
    assert_eq!(
        t.hub.connect(
            Timestamp(0),
            ConnectRequest {
                user: Some(String::new()),
                ..Default::default()
            }
        ),
        Err(ConnectError::BadUser)
    );
    t.connect(None);
    assert_eq!(
        t.hub.connect(Timestamp(0), ConnectRequest::default()),
        Err(ConnectError::Full)
    );
}

#[test]
fn ids_are_never_reused() {
    let mut t = T::new();
    let a = t.connect(None);
    t.hub
        .handle_disconnect(
            Timestamp(0),
            a,
            DisconnectReason::Closed { code: Some(1000) },
        )
        .unwrap();
    let b = t.connect(None);
    assert_ne!(a, b);
    assert_eq!(a.slot(), b.slot(), "slot reused, id not");
    assert!(t.hub.handle_text(Timestamp(0), a, "{}").is_err());
}

#[test]
fn heartbeat_pings_idle_and_reaps_silent_peers_exactly_when_due() {
    let mut t = T::with(HubConfig {
        heartbeat: HeartbeatConfig {
            interval_ms: 1000,
            timeout_ms: 800,
            max_missed: 2,
            server_pings: true,
        },
        ..Default::default()
    });
    let a = t.connect(None);
    let b = t.connect(None);
    assert_eq!(t.hub.poll_timeout(), Some(Timestamp(1000)));
    t.advance(1000);
    assert_eq!(t.pings.len(), 2);
    // b answers at 1500
    t.now = 1500;
    t.hub.handle_activity(Timestamp(1500), b).unwrap();
    t.advance(499);
    assert!(t.closes.is_empty());
    t.advance(1); // t = 2000 = a's last_seen (0) + 2 × 1000
    assert_eq!(t.closes, vec![(a, 1001, "heartbeat timeout".into())]);
    assert!(t.events.iter().any(|e| matches!(e, Event::Disconnected { conn, reason: DisconnectReason::HeartbeatTimeout, .. } if *conn == a)));
    // b: last seen 1500; pinged at 2500, dead at 3500
    t.advance(500);
    assert!(t.pings.iter().filter(|&&p| p == b).count() >= 2);
    t.advance(999);
    assert_eq!(t.closes.len(), 1);
    t.advance(1);
    assert_eq!(t.closes.len(), 2);
    assert_eq!(t.hub.stats().heartbeat_timeouts, 2);
    // closing slots are freed after the grace period even if the adapter never reports
    t.advance(10_000);
    assert!(t.hub.is_empty());
    assert_eq!(t.hub.poll_timeout(), None);
}

#[test]
fn no_server_pings_means_no_timers() {
    let mut t = T::with(HubConfig {
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..Default::default()
        },
        ..Default::default()
    });
    t.connect(None);
    assert_eq!(t.hub.poll_timeout(), None);
}

#[test]
fn shutdown_closes_everyone_1001() {
    let mut t = T::new();
    let a = t.connect(None);
    let b = t.connect(None);
    t.hub.shutdown(Timestamp(t.now));
    t.drain();
    let mut codes: Vec<_> = t.closes.iter().map(|(c, code, _)| (*c, *code)).collect();
    codes.sort();
    let mut want = vec![(a, 1001), (b, 1001)];
    want.sort();
    assert_eq!(codes, want);
}

#[test]
fn memory_returns_to_empty() {
    let mut t = T::new();
    let ids: Vec<ConnId> = (0..20)
        .map(|i| t.connect(Some(&format!("u{}", i % 3))))
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        t.join(id, &format!("room{}", i % 4));
        t.send(
            id,
            json!({"type":"subscribe","channel":format!("ch{}", i % 5)}),
        );
    }
    for id in ids {
        t.hub
            .handle_disconnect(
                Timestamp(0),
                id,
                DisconnectReason::Closed { code: Some(1000) },
            )
            .unwrap();
        t.drain();
        t.hub.check_invariants();
    }
    assert!(t.hub.is_empty());
}

#[test]
fn output_stays_small() {
    // one Output per receiver per message: keep the enum small so fan-out moves little
    assert!(
        std::mem::size_of::<Output>() <= 64,
        "{}",
        std::mem::size_of::<Output>()
    );
}

#[test]
fn churned_connections_leave_no_timers_behind() {
    let mut t = T::new();
    let keep: Vec<_> = (0..10).map(|_| t.connect(None)).collect();
    for _ in 0..20_000 {
        let c = t.connect(None);
        t.hub
            .handle_disconnect(
                Timestamp(t.now),
                c,
                DisconnectReason::Closed { code: Some(1000) },
            )
            .unwrap();
        t.drain();
    }
    // Each churned connection scheduled a heartbeat 25 s out; none may stay queued.
    assert!(t.hub.timers.len() <= 1024, "{}", t.hub.timers.len());
    assert!(t.hub.timers.capacity() <= 4 * 1024);
    t.hub.check_invariants();
    // The survivors' timers were kept: they are still pinged on time.
    t.advance(t.hub.config().heartbeat.interval_ms);
    for k in keep {
        assert!(t.pings.contains(&k), "{k} not pinged");
    }
}
