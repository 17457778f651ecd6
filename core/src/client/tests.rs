//! Client machine unit tests: scripted server messages, virtual time.

use super::*;

fn client() -> Client {
    Client::new(
        ClientConfig {
            url: "ws://x/ws".into(),
            ..Default::default()
        },
        [3; 32],
        Timestamp(0),
    )
}

fn drain(c: &mut Client) -> Vec<ClientOutput> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn sent(outs: &[ClientOutput]) -> Vec<serde_json::Value> {
    outs.iter()
        .filter_map(|o| match o {
            ClientOutput::Send { text, .. } => Some(serde_json::from_str(text).unwrap()),
            _ => None,
        })
        .collect()
}

fn welcome(c: &mut Client, now: u64) -> Vec<ClientOutput> {
    let socket = c.socket;
    c.handle_open(Timestamp(now), socket);
    c.handle_message(
        Timestamp(now),
        socket,
        r#"{"type":"welcome","conn":"c1","user":null,"heartbeat":{"interval_ms":1000,"timeout_ms":500}}"#,
    );
    drain(c)
}

#[test]
fn connects_then_opens_on_welcome() {
    let mut c = client();
    let outs = drain(&mut c);
    assert_eq!(
        outs[0],
        ClientOutput::Connect {
            socket: 1,
            url: "ws://x/ws".into()
        }
    );
    let outs = welcome(&mut c, 10);
    assert!(outs.contains(&ClientOutput::Event(ClientEvent::State(ClientState::Open))));
    assert_eq!(c.state(), &ClientState::Open);
}

#[test]
fn backoff_full_jitter_within_bounds_and_capped() {
    let mut c = client();
    drain(&mut c);
    let mut now = 0;
    let mut delays = Vec::new();
    for attempt in 1..=12u32 {
        let s = c.socket;
        c.handle_close(Timestamp(now), s, Some(1006));
        let outs = drain(&mut c);
        let delay = outs
            .iter()
            .find_map(|o| match o {
                ClientOutput::Event(ClientEvent::State(ClientState::Reconnecting {
                    attempt: a,
                    delay_ms,
                })) => {
                    assert_eq!(*a, attempt);
                    Some(*delay_ms)
                }
                _ => None,
            })
            .expect("reconnecting state");
        let cap = (500u64 << (attempt - 1)).min(30_000);
        assert!(delay <= cap, "attempt {attempt}: {delay} > {cap}");
        delays.push(delay);
        assert_eq!(c.poll_timeout(), Some(Timestamp(now + delay)));
        now += delay;
        c.handle_timeout(Timestamp(now));
        let outs = drain(&mut c);
        assert!(matches!(outs[0], ClientOutput::Connect { .. }));
    }
    assert!(delays[0] <= 500, "first retry within 0.5 s");
    assert!(delays.iter().any(|&d| d > 500), "backoff grows: {delays:?}");
}

#[test]
fn stable_connection_resets_backoff() {
    let mut c = client();
    drain(&mut c);
    for _ in 0..5 {
        let s = c.socket;
        c.handle_close(Timestamp(0), s, None);
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
    }
    drain(&mut c);
    let now = c.poll_timeout().map_or(0, |t| t.0);
    welcome(&mut c, now);
    let later = now + 20_000;
    // keep the heartbeat alive
    let s = c.socket;
    c.handle_message(Timestamp(later), s, r#"{"type":"pong"}"#);
    c.handle_close(Timestamp(later), s, Some(1001));
    let outs = drain(&mut c);
    assert!(outs.iter().any(|o| matches!(o, ClientOutput::Event(ClientEvent::State(ClientState::Reconnecting { attempt: 1, delay_ms })) if *delay_ms <= 500)));
}

#[test]
fn no_retry_after_1008_1009_or_close() {
    for code in [1008u16, 1009] {
        let mut c = client();
        welcome(&mut c, 0);
        let s = c.socket;
        c.handle_close(Timestamp(1), s, Some(code));
        assert_eq!(c.state(), &ClientState::Closed { code: Some(code) });
        assert_eq!(c.poll_timeout(), None);
    }
    let mut c = client();
    welcome(&mut c, 0);
    c.close();
    let outs = drain(&mut c);
    assert!(matches!(outs[0], ClientOutput::Close { code: 1000, .. }));
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.join("r", false), Err(ClientError::Closed));
}

#[test]
fn heartbeat_pings_and_detects_dead_connection() {
    let mut c = client();
    welcome(&mut c, 0);
    assert_eq!(c.poll_timeout(), Some(Timestamp(1000)));
    c.handle_timeout(Timestamp(1000));
    let outs = drain(&mut c);
    assert_eq!(
        outs,
        vec![ClientOutput::Send {
            socket: 1,
            text: r#"{"type":"ping"}"#.into()
        }]
    );
    // pong arrives: alive
    c.handle_message(Timestamp(1200), 1, r#"{"type":"pong"}"#);
    assert_eq!(c.poll_timeout(), Some(Timestamp(2000)));
    c.handle_timeout(Timestamp(2000));
    drain(&mut c);
    // silence for timeout_ms: dead → close + reconnect
    c.handle_timeout(Timestamp(2500));
    let outs = drain(&mut c);
    assert!(
        matches!(&outs[0], ClientOutput::Close { socket: 1, reason, .. } if reason == "heartbeat timeout")
    );
    assert!(matches!(c.state(), ClientState::Reconnecting { .. }));
    // a late message on the dead socket is ignored
    c.handle_message(
        Timestamp(2600),
        1,
        r#"{"type":"message","room":"r","seq":1,"event":"e","from":null,"data":1}"#,
    );
    assert!(drain(&mut c).is_empty());
}

#[test]
fn rejoins_with_since_resubscribes_then_flushes_queue() {
    let mut c = client();
    welcome(&mut c, 0);
    let j = c.join("r", true).unwrap();
    let outs = drain(&mut c);
    assert_eq!(
        sent(&outs),
        vec![serde_json::json!({"type":"join","room":"r","id":j,"presence":true})]
    );
    c.handle_message(
        Timestamp(1),
        1,
        &format!(r#"{{"type":"ack","id":{j},"room":"r","members":1,"epoch":"E","seq":4}}"#),
    );
    c.subscribe("ch").unwrap();
    c.handle_message(
        Timestamp(1),
        1,
        r#"{"type":"message","room":"r","seq":5,"event":"e","from":null,"data":{"x":1}}"#,
    );
    let outs = drain(&mut c);
    assert!(outs.iter().any(
        |o| matches!(o, ClientOutput::Event(ClientEvent::Message(m)) if m.data == r#"{"x":1}"#)
    ));
    assert_eq!(c.last_seq("r"), Some(5));
    // connection drops; publish while offline
    c.handle_close(Timestamp(2), 1, Some(1006));
    let p = c
        .publish(
            PublishTarget::Room("r".into()),
            "say",
            Some("\"hi\""),
            false,
        )
        .unwrap();
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    drain(&mut c);
    let outs = welcome(&mut c, t.0);
    let s = sent(&outs);
    assert_eq!(s[0]["type"], "join");
    assert_eq!(s[0]["since"], 5);
    assert_eq!(s[0]["epoch"], "E");
    assert_eq!(s[0]["presence"], true);
    assert_eq!(s[1]["type"], "subscribe");
    assert_eq!(s[2]["type"], "publish");
    assert_eq!(s[2]["id"], p);
    assert_eq!(s[2]["data"], "hi");
    // replay overlaps what we saw: seq 5 again and 6 new, held until the ack
    let sock = c.socket;
    let jid = s[0]["id"].as_u64().unwrap();
    for seq in [5, 6] {
        c.handle_message(Timestamp(t.0), sock, &format!(r#"{{"type":"message","room":"r","seq":{seq},"event":"e","from":null,"data":{seq}}}"#));
    }
    assert!(drain(&mut c).is_empty(), "held until the join ack");
    c.handle_message(Timestamp(t.0), sock, &format!(r#"{{"type":"ack","id":{jid},"room":"r","members":1,"epoch":"E","seq":6,"recovered":true}}"#));
    let outs = drain(&mut c);
    let msgs: Vec<&Message> = outs
        .iter()
        .filter_map(|o| match o {
            ClientOutput::Event(ClientEvent::Message(m)) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 1, "seq 5 was already delivered");
    assert_eq!(msgs[0].data, "6");
    assert!(outs.contains(&ClientOutput::Event(ClientEvent::Recovered {
        room: "r".into(),
        recovered: true
    })));
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, ClientOutput::Event(ClientEvent::Ack { id, .. }) if *id == jid)),
        "internal rejoin acks are not surfaced"
    );
}

#[test]
fn new_epoch_restarts_seqs() {
    let mut c = client();
    welcome(&mut c, 0);
    let j = c.join("r", false).unwrap();
    c.handle_message(
        Timestamp(1),
        1,
        &format!(r#"{{"type":"ack","id":{j},"room":"r","members":1,"epoch":"E1","seq":9}}"#),
    );
    c.handle_close(Timestamp(2), 1, None);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    drain(&mut c);
    let outs = welcome(&mut c, t.0);
    let jid = sent(&outs)[0]["id"].as_u64().unwrap();
    let s = c.socket;
    c.handle_message(
        Timestamp(t.0),
        s,
        r#"{"type":"message","room":"r","seq":1,"event":"e","from":null,"data":1}"#,
    );
    c.handle_message(Timestamp(t.0), s, &format!(r#"{{"type":"ack","id":{jid},"room":"r","members":1,"epoch":"E2","seq":1,"recovered":false}}"#));
    let outs = drain(&mut c);
    assert!(outs.iter().any(|o| matches!(o, ClientOutput::Event(ClientEvent::Message(m)) if m.via == Via::Room { room: "r".into(), seq: 1 })));
    assert!(outs.contains(&ClientOutput::Event(ClientEvent::Recovered {
        room: "r".into(),
        recovered: false
    })));
    assert_eq!(c.last_seq("r"), Some(1));
}

#[test]
fn offline_queue_drops_oldest_with_count() {
    let mut c = Client::new(
        ClientConfig {
            url: "ws://x".into(),
            offline_queue: 2,
            ..Default::default()
        },
        [1; 32],
        Timestamp(0),
    );
    drain(&mut c);
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            c.publish(
                PublishTarget::Channel("c".into()),
                "e",
                Some(&i.to_string()),
                false,
            )
            .unwrap()
        })
        .collect();
    let outs = drain(&mut c);
    assert!(outs.contains(&ClientOutput::Event(ClientEvent::Dropped { total: 1 })));
    assert!(outs.iter().any(|o| matches!(o, ClientOutput::Event(ClientEvent::Error { id: Some(i), code, .. }) if *i == ids[0] && code == "dropped")));
    let outs = welcome(&mut c, 5);
    let s = sent(&outs);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["id"], ids[1]);
    assert_eq!(s[1]["id"], ids[2]);
}

#[test]
fn ack_timeout_yields_error() {
    let mut c = client();
    welcome(&mut c, 0);
    let id = c
        .publish(PublishTarget::User("u".into()), "e", None, false)
        .unwrap();
    drain(&mut c);
    // keep the heartbeat happy meanwhile
    c.handle_message(Timestamp(900), 1, r#"{"type":"pong"}"#);
    c.handle_timeout(Timestamp(10_000));
    let outs = drain(&mut c);
    assert!(outs.iter().any(|o| matches!(o, ClientOutput::Event(ClientEvent::Error { id: Some(i), code, .. }) if *i == id && code == "timeout")));
}

#[test]
fn server_errors_are_matched_to_requests() {
    let mut c = client();
    welcome(&mut c, 0);
    let id = c
        .publish(PublishTarget::Room("r".into()), "e", None, false)
        .unwrap();
    drain(&mut c);
    c.handle_message(
        Timestamp(1),
        1,
        &format!(r#"{{"type":"error","id":{id},"code":"not_member","message":"no"}}"#),
    );
    let outs = drain(&mut c);
    assert_eq!(
        outs,
        vec![ClientOutput::Event(ClientEvent::Error {
            id: Some(id),
            code: "not_member".into(),
            message: "no".into()
        })]
    );
    assert_eq!(
        c.poll_timeout(),
        Some(Timestamp(1000)),
        "only the heartbeat remains"
    );
}

#[test]
fn bad_input_from_the_caller_is_refused() {
    let mut c = client();
    assert_eq!(c.join("", false), Err(ClientError::BadName));
    assert_eq!(
        c.publish(PublishTarget::Room("r".into()), "e", Some("{nope"), false),
        Err(ClientError::BadData)
    );
}

fn errors(outs: &[ClientOutput]) -> Vec<(Option<u64>, String)> {
    outs.iter()
        .filter_map(|o| match o {
            ClientOutput::Event(ClientEvent::Error { id, code, .. }) => Some((*id, code.clone())),
            _ => None,
        })
        .collect()
}

fn acks(outs: &[ClientOutput]) -> Vec<u64> {
    outs.iter()
        .filter_map(|o| match o {
            ClientOutput::Event(ClientEvent::Ack { id, .. }) => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn every_join_request_is_settled() {
    // two joins of one room before connecting: one wire join, both acked
    let mut c = client();
    drain(&mut c);
    let a = c.join("r", false).unwrap();
    let b = c.join("r", false).unwrap();
    let outs = welcome(&mut c, 1);
    let s = sent(&outs);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["id"], a);
    c.handle_message(
        Timestamp(2),
        1,
        &format!(r#"{{"type":"ack","id":{a},"room":"r","members":1,"epoch":"E","seq":0}}"#),
    );
    let mut got = acks(&drain(&mut c));
    got.sort();
    assert_eq!(got, vec![a, b]);

    // a join made offline, then close(): settled with `closed`
    let mut c = client();
    drain(&mut c);
    let j = c.join("r", false).unwrap();
    c.close();
    assert_eq!(
        errors(&drain(&mut c)),
        vec![(Some(j), "closed".to_string())]
    );

    // a join made offline, then leave(): settled with `cancelled`, never sent
    let mut c = client();
    drain(&mut c);
    let j = c.join("r", false).unwrap();
    c.leave("r").unwrap();
    assert_eq!(
        errors(&drain(&mut c)),
        vec![(Some(j), "cancelled".to_string())]
    );
    assert!(sent(&welcome(&mut c, 1)).is_empty());
}

#[test]
fn internal_rejoin_ack_is_reported_as_rejoined() {
    let mut c = client();
    welcome(&mut c, 0);
    let j = c.join("r", true).unwrap();
    c.handle_message(
        Timestamp(1),
        1,
        &format!(
            r#"{{"type":"ack","id":{j},"room":"r","members":1,"epoch":"E","seq":0,"present":[]}}"#
        ),
    );
    c.handle_close(Timestamp(2), 1, None);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    drain(&mut c);
    let outs = welcome(&mut c, t.0);
    let jid = sent(&outs)[0]["id"].as_u64().unwrap();
    let ack = format!(
        r#"{{"type":"ack","id":{jid},"room":"r","members":2,"epoch":"E","seq":0,"recovered":true,"present":[]}}"#
    );
    c.handle_message(Timestamp(t.0), c.socket, &ack);
    let outs = drain(&mut c);
    assert!(outs.contains(&ClientOutput::Event(ClientEvent::Rejoined {
        room: "r".into(),
        ack
    })));
}

#[test]
fn own_room_messages_are_not_replayed_after_a_reconnect() {
    let mut c = client();
    welcome(&mut c, 0);
    let j = c.join("r", false).unwrap();
    c.handle_message(
        Timestamp(1),
        1,
        &format!(r#"{{"type":"ack","id":{j},"room":"r","members":2,"epoch":"E","seq":3}}"#),
    );
    let p = c
        .publish(PublishTarget::Room("r".into()), "e", None, false)
        .unwrap();
    c.handle_message(
        Timestamp(2),
        1,
        &format!(r#"{{"type":"ack","id":{p},"delivered":1,"seq":4}}"#),
    );
    assert_eq!(c.last_seq("r"), Some(4));
    c.handle_close(Timestamp(3), 1, None);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    drain(&mut c);
    let s = sent(&welcome(&mut c, t.0));
    assert_eq!(s[0]["since"], 4, "the rejoin starts after our own message");
}

// -------------------------------------------------------------------------------------
// Tokens and server-initiated membership

fn token_client() -> Client {
    Client::new(
        ClientConfig {
            url: "ws://x/ws".into(),
            token: true,
            ..Default::default()
        },
        [3; 32],
        Timestamp(0),
    )
}

fn ticket(outs: &[ClientOutput]) -> Option<u64> {
    outs.iter().find_map(|o| match o {
        ClientOutput::FetchToken { ticket } => Some(*ticket),
        _ => None,
    })
}

fn connects(outs: &[ClientOutput]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, ClientOutput::Connect { .. }))
        .count()
}

/// Runs the token handshake at `now`: answers the pending ticket, opens, welcomes.
fn token_welcome(c: &mut Client, t: u64, token: &str, now: u64) -> Vec<ClientOutput> {
    c.handle_token(Timestamp(now), t, Ok(token.into()));
    let outs = drain(c);
    assert_eq!(connects(&outs), 1, "the token brings the connect");
    let socket = c.socket;
    c.handle_open(Timestamp(now), socket);
    let first = sent(&drain(c));
    assert_eq!(
        first,
        vec![serde_json::json!({"type":"auth","token":token})]
    );
    c.handle_message(
        Timestamp(now),
        socket,
        r#"{"type":"welcome","conn":"c1","user":"ann","info":{"name":"Ann"}}"#,
    );
    drain(c)
}

#[test]
fn a_token_is_fetched_before_connecting_and_sent_first() {
    let mut c = token_client();
    let outs = drain(&mut c);
    assert_eq!(connects(&outs), 0, "no socket before the token");
    let t = ticket(&outs).expect("asks for a token");
    let outs = token_welcome(&mut c, t, "T1", 5);
    assert!(outs.contains(&ClientOutput::Event(ClientEvent::Welcome {
        conn: "c1".into(),
        user: Some("ann".into()),
        info: Some(serde_json::json!({"name":"Ann"})),
    })));
    assert_eq!(c.state(), &ClientState::Open);
    // a stale ticket's answer changes nothing
    c.handle_token(Timestamp(6), t, Ok("late".into()));
    assert!(drain(&mut c).is_empty());
}

#[test]
fn expiring_asks_for_a_new_token_and_sends_it_as_auth() {
    let mut c = token_client();
    let t = ticket(&drain(&mut c)).unwrap();
    token_welcome(&mut c, t, "T1", 0);
    let s = c.socket;
    c.handle_message(Timestamp(10), s, r#"{"type":"expiring","in_ms":30000}"#);
    let t2 = ticket(&drain(&mut c)).expect("refresh asked");
    // a second warning while the first fetch runs asks nothing more
    c.handle_message(Timestamp(11), s, r#"{"type":"expiring","in_ms":29000}"#);
    assert_eq!(ticket(&drain(&mut c)), None);
    c.handle_token(Timestamp(20), t2, Ok("T2".into()));
    let outs = drain(&mut c);
    let auth = sent(&outs);
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0]["type"], "auth");
    assert_eq!(auth[0]["token"], "T2");
    let id = auth[0]["id"].as_u64().expect("acked like any request");
    assert_eq!(connects(&outs), 0, "a refresh keeps the socket");
    // its ack is internal
    c.handle_message(Timestamp(21), s, &format!(r#"{{"type":"ack","id":{id}}}"#));
    assert!(drain(&mut c).is_empty());
}

#[test]
fn a_failed_refresh_is_reported_and_the_socket_kept() {
    let mut c = token_client();
    let t = ticket(&drain(&mut c)).unwrap();
    token_welcome(&mut c, t, "T1", 0);
    let s = c.socket;
    c.handle_message(Timestamp(10), s, r#"{"type":"expiring","in_ms":30000}"#);
    let t2 = ticket(&drain(&mut c)).unwrap();
    c.handle_token(Timestamp(20), t2, Err("backend down".into()));
    let outs = drain(&mut c);
    assert_eq!(
        outs,
        vec![ClientOutput::Event(ClientEvent::Error {
            id: None,
            code: "token_unavailable".into(),
            message: "backend down".into(),
        })]
    );
    assert_eq!(c.state(), &ClientState::Open);
}

#[test]
fn close_4001_reconnects_with_a_fresh_token_and_4003_ends_the_client() {
    let mut c = token_client();
    let t = ticket(&drain(&mut c)).unwrap();
    token_welcome(&mut c, t, "T1", 0);
    let s = c.socket;
    c.handle_close(Timestamp(100), s, Some(4001));
    assert!(matches!(c.state(), ClientState::Reconnecting { .. }));
    drain(&mut c);
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    let outs = drain(&mut c);
    assert_eq!(connects(&outs), 0);
    let t2 = ticket(&outs).expect("a new token before the new socket");
    assert!(t2 > t);
    token_welcome(&mut c, t2, "T2", at.0 + 1);
    let s = c.socket;
    c.handle_close(Timestamp(at.0 + 50), s, Some(4003));
    assert_eq!(c.state(), &ClientState::Closed { code: Some(4003) });
    assert_eq!(c.poll_timeout(), None, "no retry after 4003");
}

#[test]
fn a_token_that_does_not_come_is_a_failed_attempt() {
    let mut c = token_client();
    let t = ticket(&drain(&mut c)).unwrap();
    // the fetch fails: reported, retried with backoff
    c.handle_token(Timestamp(5), t, Err("offline".into()));
    let outs = drain(&mut c);
    assert!(outs.iter().any(|o| matches!(
        o,
        ClientOutput::Event(ClientEvent::Error { code, .. }) if code == "token_unavailable"
    )));
    assert!(matches!(
        c.state(),
        ClientState::Reconnecting { attempt: 1, .. }
    ));
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    let t2 = ticket(&drain(&mut c)).unwrap();
    // the fetch hangs: the connect timeout bounds it
    assert_eq!(c.poll_timeout(), Some(Timestamp(at.0 + 10_000)));
    c.handle_timeout(Timestamp(at.0 + 10_000));
    drain(&mut c);
    assert!(matches!(
        c.state(),
        ClientState::Reconnecting { attempt: 2, .. }
    ));
    // its late answer is ignored
    c.handle_token(Timestamp(at.0 + 10_001), t2, Ok("late".into()));
    assert_eq!(connects(&drain(&mut c)), 0);
}

#[test]
fn rooms_the_server_joins_are_tracked_and_rejoined() {
    let mut c = client();
    drain(&mut c);
    welcome(&mut c, 0);
    let s = c.socket;
    let joined = r#"{"type":"joined","room":"vip","members":3,"epoch":"e1","seq":4}"#;
    c.handle_message(Timestamp(1), s, joined);
    assert_eq!(
        drain(&mut c),
        vec![ClientOutput::Event(ClientEvent::Joined {
            room: "vip".into(),
            body: joined.into()
        })]
    );
    assert_eq!(c.last_seq("vip"), Some(4));
    // its messages are delivered (formerly dropped as "not joined")
    c.handle_message(
        Timestamp(2),
        s,
        r#"{"type":"message","room":"vip","seq":5,"event":"e","data":1}"#,
    );
    assert!(matches!(
        drain(&mut c)[..],
        [ClientOutput::Event(ClientEvent::Message(_))]
    ));
    // after a reconnect it is rejoined from where we were
    c.handle_close(Timestamp(3), s, Some(1006));
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    drain(&mut c);
    let outs = welcome(&mut c, at.0);
    let rejoin = sent(&outs);
    assert_eq!(rejoin[0]["type"], "join");
    assert_eq!(rejoin[0]["room"], "vip");
    assert_eq!(rejoin[0]["since"], 5);
    assert_eq!(rejoin[0]["epoch"], "e1");
    // the server takes us out: forgotten, not rejoined
    let s = c.socket;
    c.handle_message(
        Timestamp(at.0 + 1),
        s,
        r#"{"type":"left","room":"vip","reason":"token_expired"}"#,
    );
    assert!(
        drain(&mut c).contains(&ClientOutput::Event(ClientEvent::Left {
            room: "vip".into(),
            reason: "token_expired".into()
        }))
    );
    assert_eq!(c.rooms().count(), 0);
}

#[test]
fn a_server_join_during_a_rejoin_keeps_the_position_and_merges_by_seq() {
    let mut c = client();
    drain(&mut c);
    welcome(&mut c, 0);
    c.join("vip", false).unwrap();
    let s = c.socket;
    let id = sent(&drain(&mut c))[0]["id"].as_u64().unwrap();
    c.handle_message(
        Timestamp(1),
        s,
        &format!(r#"{{"type":"ack","id":{id},"room":"vip","members":1,"epoch":"e1","seq":2}}"#),
    );
    drain(&mut c);
    c.handle_close(Timestamp(2), s, Some(1006));
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    drain(&mut c);
    let outs = welcome(&mut c, at.0);
    let rejoin = &sent(&outs)[0];
    assert_eq!(rejoin["since"], 2);
    let rid = rejoin["id"].as_u64().unwrap();
    let s = c.socket;
    let t = Timestamp(at.0 + 1);
    // the token's `rooms` join lands first, then live 6, then the replay 3..=6, then the ack
    c.handle_message(
        t,
        s,
        r#"{"type":"joined","room":"vip","members":2,"epoch":"e1","seq":5}"#,
    );
    assert_eq!(
        c.last_seq("vip"),
        Some(2),
        "our position is kept for the rejoin"
    );
    for seq in [6, 3, 4, 5, 6] {
        c.handle_message(
            t,
            s,
            &format!(r#"{{"type":"message","room":"vip","seq":{seq},"event":"e","data":null}}"#),
        );
    }
    c.handle_message(
        t,
        s,
        &format!(r#"{{"type":"ack","id":{rid},"room":"vip","members":2,"epoch":"e1","seq":6,"recovered":true}}"#),
    );
    let seqs: Vec<u64> = drain(&mut c)
        .into_iter()
        .filter_map(|o| match o {
            ClientOutput::Event(ClientEvent::Message(Message {
                via: Via::Room { seq, .. },
                ..
            })) => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6], "each once, in order");
}

#[test]
fn each_retry_goes_to_the_next_url_in_turn() {
    let config = ClientConfig {
        url: "ws://a/ws".into(),
        fallback_urls: vec!["ws://b/ws".into(), "ws://c/ws".into()],
        ..ClientConfig::default()
    };
    let mut c = Client::new(config, [1; 32], Timestamp(0));
    let url_of = |outs: &[ClientOutput]| {
        outs.iter()
            .find_map(|o| match o {
                ClientOutput::Connect { url, .. } => Some(url.clone()),
                _ => None,
            })
            .expect("a connect")
    };
    let mut urls = vec![url_of(&drain(&mut c))];
    let mut now = 0;
    for _ in 0..4 {
        let s = c.socket;
        c.handle_close(Timestamp(now), s, Some(1006));
        now = c.poll_timeout().unwrap().0;
        c.handle_timeout(Timestamp(now));
        urls.push(url_of(&drain(&mut c)));
    }
    assert_eq!(
        urls,
        [
            "ws://a/ws",
            "ws://b/ws",
            "ws://c/ws",
            "ws://a/ws",
            "ws://b/ws"
        ]
    );
    // without fallbacks every attempt goes to the one URL
    let mut c = client();
    let first = url_of(&drain(&mut c));
    let s = c.socket;
    c.handle_close(Timestamp(0), s, Some(1006));
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    assert_eq!(url_of(&drain(&mut c)), first);
}
