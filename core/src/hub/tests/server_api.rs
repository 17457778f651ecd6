//! Hub tests: the server API, the backplane, events and the Input vocabulary.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

#[test]
fn server_api_sends_and_membership() {
    let mut t = T::new();
    let a = t.connect(Some("u"));
    let b = t.connect(None);
    t.hub.join(Timestamp(t.now), a, "r", false).unwrap();
    t.hub.join(Timestamp(t.now), b, "r", false).unwrap();
    assert!(t.hub.is_member(a, "r"));
    assert_eq!(t.hub.room_members("r").len(), 2);
    let d = t
        .hub
        .send_to_room(Timestamp(t.now), "r", "news", None, &[b])
        .unwrap();
    assert_eq!(
        d,
        Delivery {
            delivered: 1,
            seq: Some(1)
        }
    );
    t.drain();
    let m = t.take(a);
    // told of the server's join first (its client then tracks the room)
    assert_eq!(m[0]["type"], "joined");
    assert_eq!(m[1]["from"], Value::Null);
    let told = t.take(b);
    assert_eq!(told.len(), 1, "b is excluded from the message: {told:?}");
    assert_eq!(told[0]["type"], "joined");
    assert_eq!(
        t.hub
            .broadcast(Timestamp(t.now), "all", None, &[])
            .unwrap()
            .delivered,
        2
    );
    t.drain();
    let m = t.take(a);
    assert!(
        m[0].get("room").is_none() && m[0].get("channel").is_none() && m[0].get("user").is_none()
    );
    assert_eq!(
        t.hub
            .send_to_user(Timestamp(t.now), "u", "dm", None, &[])
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(
        t.hub
            .send_to_conn(Timestamp(t.now), b, "only", None)
            .unwrap()
            .delivered,
        1
    );
    t.hub.leave_all(Timestamp(t.now), a).unwrap();
    assert!(t.hub.rooms_of(a).is_empty());
    t.hub.disconnect(Timestamp(t.now), b, 4000, "bye").unwrap();
    t.drain();
    assert_eq!(t.closes, vec![(b, 4000, "bye".into())]);
    assert_eq!(t.hub.stats().connections, 1);
    assert!(t
        .hub
        .send_to_room(Timestamp(t.now), "nope", "e", None, &[])
        .is_err());
    assert_eq!(
        t.hub.send_to_room(Timestamp(t.now), "r", "", None, &[]),
        Err(HubError::BadName)
    );
}

#[test]
fn backplane_forwards_local_publishes_only() {
    let cfg = HubConfig {
        backplane: true,
        ..Default::default()
    };
    let mut n1 = T::with(cfg.clone());
    let mut n2 = T::with(cfg);
    let a = n1.connect(None);
    let b = n2.connect(None);
    n1.ask(a, json!({"type":"subscribe","channel":"c"}));
    n2.ask(b, json!({"type":"subscribe","channel":"c"}));
    n1.send(
        a,
        json!({"type":"publish","channel":"c","event":"e","data":[1]}),
    );
    assert_eq!(n1.forwards.len(), 1);
    let f = n1.forwards[0].clone();
    n2.hub.handle_remote(Timestamp(0), 1, &f);
    n2.drain();
    let got = n2.take(b);
    assert_eq!(got[0]["data"], json!([1]));
    assert_eq!(
        got[0]["from"]["conn"],
        n1.hub.connection(a).unwrap().wire_id
    );
    assert!(
        n2.forwards.is_empty(),
        "remote deliveries are not forwarded again"
    );
}

#[test]
fn events_carry_the_room_position() {
    let mut t = T::new();
    let a = t.connect(None);
    let b = t.connect(None);
    t.join(a, "r");
    t.ask(a, json!({"type":"publish","room":"r","event":"e"}));
    t.join(b, "r");
    let (epoch, seq) = t
        .hub
        .room_position("r")
        .map(|(e, s)| (e.to_owned(), s))
        .unwrap();
    assert_eq!(seq, 1);
    let joins: Vec<(Arc<str>, u64)> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Joined { epoch, seq, .. } => Some((epoch.clone(), *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(joins.len(), 2);
    assert!(joins.iter().all(|(e, _)| **e == *epoch));
    assert_eq!(joins[0].1, 0, "a joined before the first message");
    assert_eq!(joins[1].1, 1, "b joined after it");
    let published: Vec<&Published> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(p) => Some(&**p),
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].seq, Some(1));
    assert_eq!(published[0].epoch.as_deref(), Some(epoch.as_str()));
}

#[test]
fn one_input_vocabulary_drives_the_hub() {
    let mut hub = Hub::new(HubConfig::default(), [3; 32], Timestamp(0));
    let Handled::Connected(a) = hub
        .handle(Timestamp(1), Input::Connect(ConnectRequest::default()))
        .unwrap()
    else {
        panic!("a connect answers with the id");
    };
    hub.handle(
        Timestamp(2),
        Input::Join {
            conn: a,
            room: "r",
            presence: false,
        },
    )
    .unwrap();
    let text = r#"{"type":"publish","room":"r","event":"e","echo":true}"#;
    hub.handle(Timestamp(3), Input::Text { conn: a, text })
        .unwrap();
    let sent = hub
        .handle(
            Timestamp(4),
            Input::Send {
                to: Recipient::Room("r"),
                event: "s",
                data: None,
                exclude: &[],
            },
        )
        .unwrap();
    assert_eq!(
        sent,
        Handled::Delivered(Delivery {
            delivered: 1,
            seq: Some(2)
        })
    );
    // A server send is stamped with the time it was given: history ages from it.
    let mut got = Vec::new();
    while let Some(o) = hub.poll_output() {
        if let Output::Send { msg, .. } = o {
            got.push(msg.text().to_owned());
        }
    }
    assert!(got.iter().any(|m| m.contains(r#""seq":2"#)), "{got:?}");
    assert_eq!(
        hub.handle(
            Timestamp(5),
            Input::Leave {
                conn: a,
                room: "nope"
            }
        ),
        Err(HubError::UnknownRoom)
    );
    assert_eq!(
        hub.handle(
            Timestamp(5),
            Input::Connect(ConnectRequest {
                user: Some(String::new()),
                ..Default::default()
            })
        ),
        Err(HubError::Connect(ConnectError::BadUser))
    );
    hub.handle(
        Timestamp(6),
        Input::Closed {
            conn: a,
            reason: DisconnectReason::Closed { code: None },
        },
    )
    .unwrap();
    hub.handle(Timestamp(400_000), Input::Timeout).unwrap();
    while hub.poll_output().is_some() {}
    hub.check_invariants();
    assert!(hub.is_empty());
}

#[test]
fn connections_are_found_by_wire_id_and_never_by_a_stale_or_foreign_one() {
    let mut t = T::new();
    let wire = |t: &mut T, user: &str| {
        let (id, w) = t.connect_with(ConnectRequest {
            user: Some(user.to_owned()),
            ..Default::default()
        });
        (id, w[0]["conn"].as_str().unwrap().to_owned())
    };
    let (a, wa) = wire(&mut t, "a");
    let (b, wb) = wire(&mut t, "b");
    assert_eq!(t.hub.find_connection(&wa), Some(a));
    assert_eq!(t.hub.find_connection(&wb), Some(b));
    t.hub
        .handle_disconnect(Timestamp(t.now), a, DisconnectReason::Closed { code: None })
        .unwrap();
    t.drain();
    assert_eq!(t.hub.find_connection(&wa), None, "gone");
    // the next connection takes a's slot, never its wire id
    let (c, wc) = wire(&mut t, "c");
    assert_eq!(c.slot(), a.slot());
    assert_ne!(wc, wa);
    assert_eq!(t.hub.find_connection(&wa), None);
    assert_eq!(t.hub.find_connection(&wc), Some(c));
    // another node's connection with the same number is not this one
    let (_, gen) = wb.rsplit_once('-').unwrap();
    assert_eq!(t.hub.find_connection(&format!("0000beef-{gen}")), None);
    for junk in ["", "-", "x", "zz-zz", &format!("{wb}0")] {
        assert_eq!(t.hub.find_connection(junk), None, "{junk:?}");
    }
    t.hub.check_invariants();
}
