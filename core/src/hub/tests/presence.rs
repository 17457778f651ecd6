//! Hub tests: presence batched over a window (`presence_batch_ms`), on virtual time.

use serde_json::json;

use super::*;

const WINDOW: u64 = 50;

fn batched() -> T {
    T::with(HubConfig {
        presence_batch_ms: WINDOW,
        ..HubConfig::default()
    })
}

fn wire(t: &T, id: ConnId) -> String {
    t.hub.connection(id).unwrap().wire_id.to_string()
}

fn conns(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|e| e["conn"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn changes_within_the_window_go_out_as_one_message_when_it_ends() {
    let mut t = batched();
    let w = t.connect(None);
    t.ask(w, json!({"type":"join","room":"r","presence":true}));
    let (a, b, c) = (t.connect(None), t.connect(None), t.connect(None));
    for x in [a, b, c] {
        t.join(x, "r");
        t.advance(10);
    }
    t.ask(c, json!({"type":"leave","room":"r"}));
    assert!(t.take(w).is_empty(), "nothing before the window ends");
    t.advance(WINDOW);
    let got = t.take(w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(conns(&got[0]["joined"]), [wire(&t, a), wire(&t, b)]);
    assert!(
        got[0].get("left").is_none(),
        "c joined and left: neither is told"
    );
    // the window ends WINDOW after the first change, not after the last
    t.join(c, "r");
    t.advance(WINDOW - 1);
    assert!(t.take(w).is_empty());
    t.advance(1);
    assert_eq!(conns(&t.take(w)[0]["joined"]), [wire(&t, c)]);
    t.hub.check_invariants();
}

#[test]
fn a_room_message_takes_the_pending_changes_out_first() {
    let mut t = batched();
    let w = t.connect(None);
    t.ask(w, json!({"type":"join","room":"r","presence":true}));
    let a = t.connect(None);
    t.join(a, "r");
    t.send(a, json!({"type":"publish","room":"r","event":"hi"}));
    let got = t.take(w);
    assert_eq!(
        got[0]["type"], "presence",
        "who joined, before what they say"
    );
    assert_eq!(got[1]["type"], "message");
    t.advance(WINDOW);
    assert!(t.take(w).is_empty(), "told once");
}

#[test]
fn a_watcher_starting_mid_window_gets_only_what_follows_its_present_list() {
    let mut t = batched();
    let early = t.connect(None);
    t.ask(early, json!({"type":"join","room":"r","presence":true}));
    let x = t.connect(None);
    t.join(x, "r");
    let late = t.connect(None);
    let ack = t.ask(late, json!({"type":"join","room":"r","presence":true}));
    assert!(conns(&ack["present"]).contains(&wire(&t, x)));
    // x leaves in the same window: the late watcher saw it in its list, so it must hear
    // that it left; the early one hears both, never in one message
    t.ask(x, json!({"type":"leave","room":"r"}));
    t.advance(WINDOW);
    let to_late = t.take(late);
    assert_eq!(to_late.len(), 1, "{to_late:?}");
    assert_eq!(conns(&to_late[0]["left"]), [wire(&t, x)]);
    assert!(to_late[0].get("joined").is_none());
    let to_early = t.take(early);
    let joined: Vec<String> = to_early.iter().flat_map(|m| conns(&m["joined"])).collect();
    let left: Vec<String> = to_early.iter().flat_map(|m| conns(&m["left"])).collect();
    assert_eq!(joined, [wire(&t, x), wire(&t, late)]);
    assert_eq!(left, [wire(&t, x)]);
    for m in &to_early {
        let j = conns(&m["joined"]);
        assert!(
            conns(&m["left"]).iter().all(|l| !j.contains(l)),
            "joined and left in one message: {m}"
        );
    }
    t.hub.check_invariants();
}

#[test]
fn per_user_changes_batch_and_cancel_by_user() {
    let mut t = batched();
    let w = t.connect(None);
    t.ask(w, json!({"type":"join","room":"r","presence":"users"}));
    let tab1 = t.connect(Some("ann"));
    let tab2 = t.connect(Some("ann"));
    t.join(tab1, "r");
    t.join(tab2, "r");
    t.ask(tab1, json!({"type":"leave","room":"r"}));
    t.advance(WINDOW);
    let got = t.take(w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["joined"][0]["user"], "ann");
    assert_eq!(got[0]["joined"].as_array().unwrap().len(), 1);
    // ann comes and goes within one window: nothing
    t.ask(tab2, json!({"type":"leave","room":"r"}));
    t.join(tab1, "r");
    t.advance(WINDOW);
    assert!(t.take(w).is_empty(), "ann left and came back: no news");
    t.hub.check_invariants();
}
