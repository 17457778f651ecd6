//! The Rust hooks trait in an embedded server: an application that refuses joins,
//! moderates publishes, answers rpc (after an await), and hears of disconnects; driven
//! by the reconnecting client, whose `rpc` resolves with the answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_tokio::core::client::{ClientConfig, ClientEvent, Via};
use roomcast_tokio::reconnecting::{ReconnectingClient, RequestError, Target};
use roomcast_tokio::{Answer, Caller, Config, HookFuture, Hooks, PublishRequest, Server};
use serde_json::value::RawValue;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct App {
    gone: Arc<Mutex<Vec<String>>>,
}

impl Hooks for App {
    fn join(&self, caller: Caller, room: String, _presence: bool) -> HookFuture<Answer> {
        Box::pin(async move {
            if room.starts_with("staff:") && caller.user.as_deref() != Some("boss") {
                Answer::refuse("staff_only", "ask the boss")
            } else {
                Answer::allow()
            }
        })
    }

    fn publish(&self, _caller: Caller, p: PublishRequest) -> HookFuture<Answer> {
        Box::pin(async move {
            let text = p.data.as_deref().map(RawValue::get).unwrap_or("null");
            if text.contains("spam") {
                Answer::with_data(RawValue::from_string("\"[removed]\"".into()).unwrap())
            } else {
                Answer::allow()
            }
        })
    }

    fn rpc(
        &self,
        caller: Caller,
        method: String,
        _data: Option<Box<RawValue>>,
    ) -> HookFuture<Answer> {
        Box::pin(async move {
            // an await, as a database call would be
            tokio::time::sleep(Duration::from_millis(20)).await;
            match method.as_str() {
                "hello" => {
                    let who = serde_json::to_string(&caller.user).unwrap();
                    Answer::with_data(RawValue::from_string(who).unwrap())
                }
                "never" => std::future::pending().await,
                _ => Answer::refuse("no_such_method", method),
            }
        })
    }

    fn disconnected(&self, caller: Caller, _reason: roomcast_tokio::DisconnectReason) {
        self.gone
            .lock()
            .unwrap()
            .push(caller.user.unwrap_or_default());
    }
}

fn refused(r: Result<String, RequestError>) -> String {
    match r {
        Err(RequestError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_embedded_application_decides_joins_publishes_and_rpc() {
    let gone = Arc::new(Mutex::new(Vec::new()));
    let mut config = Config::default().with_hooks(App { gone: gone.clone() });
    config.hub.hooks.timeout_ms = 300;
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let start = |user: &str| {
        ReconnectingClient::start(ClientConfig {
            url: format!("ws://{addr}/ws?user={user}"),
            ..Default::default()
        })
    };
    let ann = start("ann");
    let mut boss = start("boss");
    assert_eq!(refused(ann.join("staff:1", false).await), "staff_only");
    boss.join("staff:1", false).await.unwrap();
    ann.join("lobby", false).await.unwrap();
    boss.join("lobby", false).await.unwrap();
    ann.publish(
        Target::Room("lobby".into()),
        "say",
        Some(r#""buy spam""#),
        false,
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ClientEvent::Message(m)) = boss.next_event().await {
                if matches!(m.via, Via::Room { .. }) {
                    return m.data;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, r#""[removed]""#);
    assert_eq!(ann.rpc("hello", None).await.unwrap(), r#""ann""#);
    assert_eq!(refused(ann.rpc("nope", Some("1")).await), "no_such_method");
    assert_eq!(refused(ann.rpc("never", None).await), "unavailable");
    ann.close().await;
    tokio::time::timeout(WAIT, async {
        while !gone.lock().unwrap().contains(&"ann".to_owned()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the disconnect hook ran");
    boss.close().await;
    let _ = stop.send(());
    serving.await.unwrap();
}
