//! The package in a real browser (headless Chromium) against a real roomcast server.
//!
//! wasm cannot start processes, so the harness (`scripts/browser-tests.sh`) starts
//! `roomcast --bind 127.0.0.1:0` first and passes its WebSocket URL in at compile time as
//! `ROOMCAST_TEST_WS_URL`. Without it the server tests say so and pass vacuously; the
//! tests that need no server still run.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Object, Promise, Reflect, JSON};
use roomcast_browser::RoomcastClient;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const SERVER: Option<&str> = option_env!("ROOMCAST_TEST_WS_URL");

#[wasm_bindgen]
extern "C" {
    // a signature of its own: an identical import in the library would clash at link time
    #[wasm_bindgen(js_name = setTimeout)]
    fn test_set_timeout(handler: &JsValue, ms: f64);
}

fn server(test: &str) -> Option<&'static str> {
    if SERVER.is_none() {
        console_log!(
            "SKIPPED {test}: ROOMCAST_TEST_WS_URL was not set at compile time \
             (run scripts/browser-tests.sh, which starts a server)"
        );
    }
    SERVER
}

/// A name no other test (or earlier run against the same server) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

fn obj(json: &str) -> JsValue {
    JSON::parse(json).expect("test JSON")
}

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn client(url: &str, options: &str) -> RoomcastClient {
    RoomcastClient::new(url, Some(obj(options).unchecked_into())).expect("client starts")
}

/// Settles like `p`, or rejects with "timed out" after `ms`: no test waits forever.
async fn within(ms: f64, p: Promise) -> Result<JsValue, JsValue> {
    let timeout = Promise::new(&mut |_, reject| {
        let f = Closure::once_into_js(move || {
            let _ = reject.call1(&JsValue::NULL, &"timed out".into());
        });
        test_set_timeout(&f, ms);
    });
    let both = js_sys::Array::of2(&p, &timeout);
    Promise::race(&both).await
}

/// A promise resolved with the first payload of `event` that `pick` accepts.
fn next_event(c: &RoomcastClient, event: &str, pick: fn(&JsValue) -> bool) -> Promise {
    let slot: Rc<RefCell<Option<Function>>> = Rc::new(RefCell::new(None));
    let p = Promise::new(&mut |resolve, _| *slot.borrow_mut() = Some(resolve));
    let handler = Closure::<dyn Fn(JsValue)>::new(move |payload: JsValue| {
        if pick(&payload) {
            if let Some(resolve) = slot.borrow_mut().take() {
                let _ = resolve.call1(&JsValue::NULL, &payload);
            }
        }
    });
    c.on(event, handler.as_ref().clone()).expect("known event");
    handler.forget(); // lives as long as the test page
    p
}

#[wasm_bindgen_test]
async fn connects_joins_and_publishes_with_ack_promises() {
    let Some(url) = server("connects_joins_and_publishes_with_ack_promises") else {
        return;
    };
    let room = unique("wbt-room");
    let a = client(url, r#"{"user":"ann"}"#);
    let welcomed = next_event(&a, "welcome", |_| true);
    // joined before the socket is open: the machine sends it once welcomed
    let ack = within(5_000.0, a.join(room.clone().into(), None))
        .await
        .expect("join acked");
    assert_eq!(get(&ack, "room"), JsValue::from_str(&room));
    assert_eq!(get(&ack, "members").as_f64(), Some(1.0));
    assert!(get(&ack, "epoch").is_string());
    let welcome = within(5_000.0, welcomed).await.expect("welcome event");
    assert_eq!(get(&welcome, "user"), JsValue::from_str("ann"));
    assert!(get(&welcome, "conn").is_string());
    assert_eq!(get(&a.state(), "state"), JsValue::from_str("open"));

    let args = obj(&format!(
        r#"{{"room":{room:?},"event":"say","data":{{"text":"hi"}}}}"#
    ));
    let ack = within(5_000.0, a.publish(args))
        .await
        .expect("publish acked");
    assert_eq!(get(&ack, "type"), JsValue::from_str("ack"));
    assert_eq!(get(&ack, "seq").as_f64(), Some(1.0));
    assert_eq!(get(&ack, "delivered").as_f64(), Some(0.0));

    let ack = within(5_000.0, a.leave(room.clone().into()))
        .await
        .expect("leave acked");
    assert_eq!(get(&ack, "room"), JsValue::from_str(&room));
    a.close();
}

#[wasm_bindgen_test]
async fn a_second_client_receives_messages_and_presence() {
    let Some(url) = server("a_second_client_receives_messages_and_presence") else {
        return;
    };
    let room = unique("wbt-chat");
    let a = client(url, r#"{"user":"ann"}"#);
    let b = client(url, r#"{"user":"bob"}"#);
    let ack = within(
        5_000.0,
        a.join(
            room.clone().into(),
            Some(obj(r#"{"presence":true}"#).unchecked_into()),
        ),
    )
    .await
    .expect("a joined");
    assert_eq!(js_sys::Array::from(&get(&ack, "present")).length(), 1);

    let bob_arrives = next_event(&a, "presence", |p| {
        js_sys::Array::from(&get(p, "joined"))
            .iter()
            .any(|peer| get(&peer, "user") == JsValue::from_str("bob"))
    });
    within(5_000.0, b.join(room.clone().into(), None))
        .await
        .expect("b joined");
    within(5_000.0, bob_arrives)
        .await
        .expect("presence: bob joined");

    let got = next_event(&b, "message", |_| true);
    let args = obj(&format!(
        r#"{{"room":{room:?},"event":"say","data":{{"text":"hello bob","n":[1,2]}}}}"#
    ));
    let ack = within(5_000.0, a.publish(args)).await.expect("published");
    assert_eq!(get(&ack, "delivered").as_f64(), Some(1.0));
    let m = within(5_000.0, got).await.expect("b got the message");
    assert_eq!(get(&m, "room"), JsValue::from_str(&room));
    assert_eq!(get(&m, "seq"), get(&ack, "seq"));
    assert_eq!(get(&m, "event"), JsValue::from_str("say"));
    assert_eq!(
        JSON::stringify(&get(&m, "data")).unwrap(),
        r#"{"text":"hello bob","n":[1,2]}"#
    );
    assert_eq!(get(&get(&m, "from"), "user"), JsValue::from_str("ann"));
    assert!(get(&m, "channel").is_undefined());

    // direct to a user: arrives with `user` as its target
    let got = next_event(&b, "message", |m| get(m, "user").is_string());
    within(
        5_000.0,
        a.publish(obj(r#"{"user":"bob","event":"dm","data":"psst"}"#)),
    )
    .await
    .expect("dm published");
    let m = within(5_000.0, got).await.expect("b got the dm");
    assert_eq!(get(&m, "data"), JsValue::from_str("psst"));
    a.close();
    b.close();
}

#[wasm_bindgen_test]
async fn errors_reject_promises_with_a_code() {
    let Some(url) = server("errors_reject_promises_with_a_code") else {
        return;
    };
    let a = client(url, r#"{"user":"ann"}"#);
    // from the server: publishing to a room we are not in
    let args = obj(&format!(r#"{{"room":"{}","event":"say"}}"#, unique("nope")));
    let err = within(5_000.0, a.publish(args))
        .await
        .expect_err("not a member");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(get(&err, "code"), JsValue::from_str("not_member"));
    assert!(get(&err, "id").as_f64().is_some());

    // caught before the server: bad name, two targets, not JSON-able
    let err = within(5_000.0, a.join("".into(), None))
        .await
        .expect_err("empty");
    assert_eq!(get(&err, "code"), JsValue::from_str("bad_name"));
    let err = within(
        5_000.0,
        a.publish(obj(r#"{"room":"r","channel":"c","event":"e"}"#)),
    )
    .await
    .expect_err("two targets");
    assert_eq!(get(&err, "code"), JsValue::from_str("bad_request"));
    let err = within(5_000.0, a.join(JsValue::from_f64(3.0), None))
        .await
        .expect_err("not a string");
    assert_eq!(get(&err, "code"), JsValue::from_str("bad_request"));

    // after close: no reconnect, requests reject with `closed`
    a.close();
    assert_eq!(get(&a.state(), "state"), JsValue::from_str("closed"));
    let err = within(5_000.0, a.subscribe("news".into()))
        .await
        .expect_err("closed");
    assert_eq!(get(&err, "code"), JsValue::from_str("closed"));
}

#[wasm_bindgen_test]
async fn subscriptions_deliver_channel_messages() {
    let Some(url) = server("subscriptions_deliver_channel_messages") else {
        return;
    };
    let channel = unique("wbt-news");
    let a = client(url, r#"{"user":"ann"}"#);
    within(5_000.0, a.subscribe(channel.clone().into()))
        .await
        .expect("subscribed");
    let got = next_event(&a, "message", |m| get(m, "channel").is_string());
    let args = obj(&format!(
        r#"{{"channel":{channel:?},"event":"tick","data":1,"echo":true}}"#
    ));
    within(5_000.0, a.publish(args)).await.expect("published");
    let m = within(5_000.0, got).await.expect("echoed to ourselves");
    assert_eq!(get(&m, "channel"), JsValue::from_str(&channel));
    assert_eq!(get(&m, "data").as_f64(), Some(1.0));
    within(5_000.0, a.unsubscribe(channel.into()))
        .await
        .expect("unsubscribed");
    a.close();
}

#[wasm_bindgen_test]
async fn an_unreachable_server_means_reconnecting_with_a_countdown() {
    // port 9 (discard) on loopback: refused at once, no server needed
    let c = client(
        "ws://127.0.0.1:9/ws",
        r#"{"backoffInitialMs":200,"backoffMaxMs":400}"#,
    );
    let retry = next_event(&c, "state", |s| {
        get(s, "state") == JsValue::from_str("reconnecting")
    });
    let s = within(10_000.0, retry).await.expect("reconnecting");
    assert_eq!(get(&s, "attempt").as_f64(), Some(1.0));
    let delay = get(&s, "delayMs").as_f64().expect("delay");
    assert!((0.0..=200.0).contains(&delay), "{delay}");
    let at = get(&s, "retryAt").as_f64().expect("retryAt");
    assert!((at - js_sys::Date::now()).abs() < 5_000.0);
    // offline requests: a subscribe is acked locally, a publish waits in the queue
    let ack = within(5_000.0, c.subscribe("later".into()))
        .await
        .expect("local ack");
    assert_eq!(get(&ack, "channel"), JsValue::from_str("later"));
    let queued = c.publish(obj(r#"{"channel":"later","event":"e"}"#));
    let joining = c.join("later".into(), None);
    c.close();
    let err = within(5_000.0, queued)
        .await
        .expect_err("closed while queued");
    assert_eq!(get(&err, "code"), JsValue::from_str("closed"));
    // a join never sent gets no answer from the machine: the binding rejects it on close
    let err = within(5_000.0, joining)
        .await
        .expect_err("closed before joining");
    assert_eq!(get(&err, "code"), JsValue::from_str("closed"));
    assert_eq!(get(&c.state(), "state"), JsValue::from_str("closed"));
}

#[wasm_bindgen_test]
async fn freeing_the_client_closes_it() {
    // `free()`, `[Symbol.dispose]()` and garbage collection all drop the Rust object
    let c = client("ws://127.0.0.1:9/ws", "{}");
    let joining = c.join("anywhere".into(), None);
    drop(c);
    let err = within(5_000.0, joining).await.expect_err("closed");
    assert_eq!(get(&err, "code"), JsValue::from_str("closed"));
}

#[wasm_bindgen_test]
fn mistakes_throw_type_errors() {
    let bad = [
        ("ftp://example.com/ws", "{}"),
        ("ws://127.0.0.1:9/ws", r#"{"usr":"typo"}"#),
        ("ws://127.0.0.1:9/ws", r#"{"ackTimeoutMs":"soon"}"#),
        ("ws://127.0.0.1:9/ws", r#"{"user":""}"#),
        ("ws://127.0.0.1:9/ws", r#"{"token":42}"#),
    ];
    for (url, opts) in bad {
        let r = RoomcastClient::new(url, Some(obj(opts).unchecked_into()));
        let err = r.err().unwrap_or_else(|| panic!("{url} {opts} accepted"));
        assert!(err.is_instance_of::<js_sys::TypeError>(), "{url} {opts}");
    }
    let c = client("ws://127.0.0.1:9/ws", "{}");
    let noop: JsValue = Function::new_no_args("").into();
    assert!(c.on("mesage", noop.clone()).is_err());
    assert!(c.on("message", Object::new().into()).is_err());
    assert!(c.on("message", noop.clone()).is_ok());
    assert!(c.off("message", noop).is_ok());
    c.close();
}
