//! The Redis backplane (`--redis URL`): several `roomcast` nodes sharing one Redis
//! behave as one server (PROTOCOL.md "Several native servers: one Redis"). The rules
//! (order, duplicates, gaps, recovery) are the core's (`roomcast_core::hub::backplane`);
//! this module only moves its requests to Redis and Redis's answers back.
//!
//! Per room, keys share the room's hash tag: `{P}:{ROOM}:m` (hash: epoch `e`, last seq
//! `s`), `{P}:{ROOM}:s` (stream, entry id `SEQ-0`, field `b`: the core's body), and the
//! pub/sub channel `{P}:{ROOM}:p`. An append is one Lua script: read or create the epoch,
//! `HINCRBY` the seq, `XADD` with that seq as the id, expire, `PUBLISH`. Redis runs
//! scripts one at a time, so a room's pub/sub order is its seq order and two nodes never
//! interleave. Channels, users and broadcasts go over `{P}:fwd`, best effort.
//!
//! Crate: `redis` 1.x (the project's usual choice: tokio support, `ConnectionManager`
//! reconnecting the command connection, a pub/sub connection that splits into a sink
//! for (un)subscribing and a stream of messages). The pub/sub connection is watched
//! here: when its stream ends the task reconnects with backoff, subscribes again to
//! every followed room, and tells the hub to resync, which repairs what was missed
//! from the streams, so no client is disconnected for a dropped link.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script, Value};
use roomcast_core::hub::{
    control_from_json, control_to_json, forward_from_json, forward_to_json, Append, AppendTicket,
    BackplaneError, Control, Forward, HubConfig, Load, Loaded,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::commands::Command;

/// How a node reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[:password@]host[:port][/db]`.
    pub url: String,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    /// How long any Redis call may take before the request waiting on it is refused
    /// `unavailable`.
    pub timeout: Duration,
    /// How often every followed room is checked against its log: the one way to notice
    /// that the last message of a quiet room was lost on the pub/sub link.
    pub check_interval: Duration,
}

impl RedisConfig {
    /// Redis at `url`, prefix `rc`, 2 s per call.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: "rc".into(),
            timeout: Duration::from_secs(2),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// What Redis said, for the hub task.
#[derive(Debug)]
pub(crate) enum BackplaneInput {
    Appended {
        ticket: AppendTicket,
        result: Result<(Arc<str>, u64), BackplaneError>,
    },
    Logged {
        room: String,
        epoch: String,
        seq: u64,
        body: String,
    },
    Loaded {
        room: String,
        loaded: Loaded,
    },
    LoadFailed {
        room: String,
    },
    Resync,
    Remote {
        node: u64,
        forward: Forward,
    },
    Control {
        control: Control,
    },
}

/// What the hub task asks of Redis.
enum Request {
    /// An append and when it was asked: one that waited past the timeout behind a slow
    /// Redis is refused without being sent, so a stall never builds a backlog.
    Append(Append, Instant),
    Forward(Forward),
    Control(Control),
}

/// What the pub/sub task is asked.
enum Follow {
    Load(Load),
    Unfollow(Arc<str>),
}

/// The hub task's handle on the backplane's tasks.
#[derive(Clone)]
pub(crate) struct Backplane {
    requests: mpsc::UnboundedSender<Request>,
    follows: mpsc::UnboundedSender<Follow>,
}

impl Backplane {
    /// Appends, in the order asked (one client's publishes keep their order).
    pub(crate) fn append(&self, a: Append) {
        let _ = self.requests.send(Request::Append(a, Instant::now()));
    }

    pub(crate) fn forward(&self, f: Forward) {
        let _ = self.requests.send(Request::Forward(f));
    }

    pub(crate) fn control(&self, c: Control) {
        let _ = self.requests.send(Request::Control(c));
    }

    pub(crate) fn load(&self, l: Load) {
        let _ = self.follows.send(Follow::Load(l));
    }

    pub(crate) fn unfollow(&self, room: Arc<str>) {
        let _ = self.follows.send(Follow::Unfollow(room));
    }
}

/// Key and channel names.
#[derive(Clone)]
struct Names {
    prefix: String,
}

impl Names {
    fn meta(&self, room: &str) -> String {
        format!("{}:{{{room}}}:m", self.prefix)
    }
    fn stream(&self, room: &str) -> String {
        format!("{}:{{{room}}}:s", self.prefix)
    }
    fn channel(&self, room: &str) -> String {
        format!("{}:{{{room}}}:p", self.prefix)
    }
    fn forwards(&self) -> String {
        format!("{}:fwd", self.prefix)
    }
    /// The room of a room channel.
    fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:p")
    }
}

/// KEYS: meta, stream. ARGV: body, epoch if new, max entries, ttl ms, channel.
const APPEND: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', e)
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], s .. '-0', 'b', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], e .. '\n' .. s .. '\n' .. ARGV[1])
return {e, s}
";

/// KEYS: meta, stream. ARGV: epoch if new, after ('' for the position only), ttl ms.
/// Returns {epoch, top, seq1, body1, seq2, body2, ...}.
const LOAD: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local out = {e, s}
if ARGV[2] ~= '' then
  local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')
  for _, entry in ipairs(entries) do
    local id = entry[1]
    out[#out + 1] = tonumber(string.match(id, '^(%d+)'))
    out[#out + 1] = entry[2][2]
  end
end
return out
";

/// What the scripts need besides the request.
#[derive(Clone)]
struct Shared {
    names: Names,
    node: u64,
    timeout: Duration,
    check_interval: Duration,
    max_entries: usize,
    ttl_ms: u64,
    back: mpsc::WeakSender<Command>,
}

impl Shared {
    async fn tell(&self, input: BackplaneInput) {
        if let Some(back) = self.back.upgrade() {
            let _ = back.send(Command::Backplane(input)).await;
        }
    }

    /// A fresh epoch for a room Redis does not know (random: two nodes racing to create
    /// it agree on whichever script runs first).
    fn new_epoch(&self) -> String {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS has randomness");
        format!("{:016x}", u64::from_le_bytes(b))
    }
}

/// Starts the backplane's tasks for a node with `hub` settings; its answers come back to
/// the hub task through `back`. Nothing here waits for Redis: while it is unreachable,
/// requests are refused `unavailable` and the tasks keep reconnecting.
pub(crate) fn start(
    config: &RedisConfig,
    hub: &HubConfig,
    back: mpsc::WeakSender<Command>,
) -> Result<Backplane, RedisError> {
    let client = Client::open(config.url.as_str())?;
    let node = {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS has randomness");
        u64::from_le_bytes(b)
    };
    let shared = Shared {
        names: Names {
            prefix: config.prefix.clone(),
        },
        node,
        timeout: config.timeout,
        check_interval: config.check_interval,
        // the log serves gap repair as well as recovery: never shorter than 1,000
        max_entries: hub.history.max_messages.max(1_000),
        ttl_ms: hub.history.max_age_ms.max(300_000),
        back,
    };
    let (requests, rx) = mpsc::unbounded_channel();
    let (follows, frx) = mpsc::unbounded_channel();
    tokio::spawn(command_task(client.clone(), shared.clone(), rx));
    tokio::spawn(pubsub_task(client, shared, frx));
    info!(
        node = format_args!("{node:016x}"),
        "joined the Redis backplane"
    );
    Ok(Backplane { requests, follows })
}

async fn manager(client: &Client, timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    client.get_connection_manager_with_config(config).await
}

/// Runs appends one at a time, in order, and forwards.
async fn command_task(client: Client, shared: Shared, mut rx: mpsc::UnboundedReceiver<Request>) {
    let script = Script::new(APPEND);
    let mut conn: Option<ConnectionManager> = None;
    // after a failed connect, requests fail fast for a while instead of each waiting
    let mut retry_at = Instant::now();
    while let Some(req) = rx.recv().await {
        if conn.is_none() && Instant::now() >= retry_at {
            match manager(&client, shared.timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    warn!("redis unreachable: {e}");
                    retry_at = Instant::now() + Duration::from_millis(500);
                }
            }
        }
        match req {
            Request::Append(a, asked) => {
                let stale = asked.elapsed() > shared.timeout;
                let result = match conn.as_mut() {
                    _ if stale => Err(BackplaneError::Unavailable),
                    None => Err(BackplaneError::Unavailable),
                    Some(c) => {
                        let mut inv = script.prepare_invoke();
                        inv.key(shared.names.meta(&a.room))
                            .key(shared.names.stream(&a.room))
                            .arg(&*a.body)
                            .arg(shared.new_epoch())
                            .arg(shared.max_entries)
                            .arg(shared.ttl_ms)
                            .arg(shared.names.channel(&a.room));
                        let call = inv.invoke_async::<(String, u64)>(c);
                        match tokio::time::timeout(shared.timeout, call).await {
                            Ok(Ok((epoch, seq))) => Ok((Arc::<str>::from(epoch), seq)),
                            Ok(Err(e)) => {
                                warn!(room = %a.room, "redis append failed: {e}");
                                Err(BackplaneError::Unavailable)
                            }
                            Err(_) => {
                                warn!(room = %a.room, "redis append timed out");
                                Err(BackplaneError::Unavailable)
                            }
                        }
                    }
                };
                shared
                    .tell(BackplaneInput::Appended {
                        ticket: a.ticket,
                        result,
                    })
                    .await;
            }
            Request::Forward(_) | Request::Control(_) => {
                let Some(c) = conn.as_mut() else {
                    continue; // best effort
                };
                let json = match &req {
                    Request::Forward(f) => forward_to_json(f),
                    Request::Control(k) => control_to_json(k),
                    Request::Append(..) => unreachable!("matched above"),
                };
                let payload = format!("{:016x}\n{json}", shared.node);
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(shared.names.forwards()).arg(payload);
                match tokio::time::timeout(shared.timeout, publish.exec_async(c)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!("redis forward failed: {e}"),
                    Err(_) => debug!("redis forward timed out"),
                }
            }
        }
    }
}

/// Follows rooms (subscribe, then load), and turns pub/sub messages into hub inputs;
/// reconnects when the link drops and asks the hub to resync.
async fn pubsub_task(client: Client, shared: Shared, mut rx: mpsc::UnboundedReceiver<Follow>) {
    let mut followed: BTreeSet<Arc<str>> = BTreeSet::new();
    // loads share one reconnecting command connection
    let mut loader: Option<ConnectionManager> = None;
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    'connect: loop {
        let link = async {
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(shared.names.forwards()).await?;
            for room in &followed {
                sink.subscribe(shared.names.channel(room)).await?;
            }
            Ok::<_, RedisError>((sink, stream))
        };
        let (mut sink, mut stream) = match tokio::time::timeout(shared.timeout, link).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                warn!("redis pub/sub unreachable: {e}");
                if !wait_or_fail_loads(&mut rx, &shared, &mut followed, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                warn!("redis pub/sub: no answer");
                if !wait_or_fail_loads(&mut rx, &shared, &mut followed, backoff).await {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if !first {
            info!("redis pub/sub reconnected: checking every followed room");
            shared.tell(BackplaneInput::Resync).await;
        }
        first = false;
        let mut check = tokio::time::interval(shared.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await; // the first tick is now
        loop {
            tokio::select! {
                _ = check.tick() => {
                    if !followed.is_empty() {
                        shared.tell(BackplaneInput::Resync).await;
                    }
                }
                follow = rx.recv() => match follow {
                    None => return,
                    Some(Follow::Load(l)) => {
                        if followed.insert(l.room.clone()) {
                            let sub = sink.subscribe(shared.names.channel(&l.room));
                            if !matches!(tokio::time::timeout(shared.timeout, sub).await, Ok(Ok(()))) {
                                warn!(room = %l.room, "redis subscribe failed");
                                shared.tell(BackplaneInput::LoadFailed { room: l.room.to_string() }).await;
                                continue 'connect;
                            }
                        }
                        if loader.is_none() {
                            loader = manager(&client, shared.timeout).await.ok();
                        }
                        match loader.clone() {
                            Some(c) => {
                                tokio::spawn(load(c, shared.clone(), l));
                            }
                            None => {
                                let room = l.room.to_string();
                                shared.tell(BackplaneInput::LoadFailed { room }).await;
                            }
                        }
                    }
                    Some(Follow::Unfollow(room)) => {
                        if followed.remove(&room) {
                            let _ = sink.unsubscribe(shared.names.channel(&room)).await;
                        }
                    }
                },
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        warn!("redis pub/sub link lost: reconnecting");
                        continue 'connect;
                    };
                    if let Some(input) = read_message(&shared, msg.get_channel_name(), msg.get_payload_bytes()) {
                        shared.tell(input).await;
                    }
                }
            }
        }
    }
}

/// While Redis is unreachable: loads fail at once (their joins are refused
/// `unavailable`), follows are remembered for the reconnect. False when the hub is gone.
async fn wait_or_fail_loads(
    rx: &mut mpsc::UnboundedReceiver<Follow>,
    shared: &Shared,
    followed: &mut BTreeSet<Arc<str>>,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            f = rx.recv() => match f {
                None => return false,
                Some(Follow::Load(l)) => {
                    followed.insert(l.room.clone());
                    shared.tell(BackplaneInput::LoadFailed { room: l.room.to_string() }).await;
                }
                Some(Follow::Unfollow(room)) => {
                    followed.remove(&room);
                }
            }
        }
    }
}

/// A room message or a forward off the pub/sub link.
fn read_message(shared: &Shared, channel: &str, payload: &[u8]) -> Option<BackplaneInput> {
    let text = std::str::from_utf8(payload).ok()?;
    if channel == shared.names.forwards() {
        let (node, json) = text.split_once('\n')?;
        let node = u64::from_str_radix(node, 16).ok()?;
        if node == shared.node {
            return None; // our own
        }
        if let Some(control) = control_from_json(json) {
            return Some(BackplaneInput::Control { control });
        }
        return Some(BackplaneInput::Remote {
            node,
            forward: forward_from_json(json)?,
        });
    }
    let room = shared.names.room_of(channel)?;
    let mut parts = text.splitn(3, '\n');
    let epoch = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let body = parts.next()?;
    Some(BackplaneInput::Logged {
        room: room.to_owned(),
        epoch: epoch.to_owned(),
        seq,
        body: body.to_owned(),
    })
}

/// Reads a followed room's position and entries.
async fn load(mut c: ConnectionManager, shared: Shared, l: Load) {
    let room = l.room.to_string();
    let call = async {
        let script = Script::new(LOAD);
        let mut inv = script.prepare_invoke();
        inv.key(shared.names.meta(&room))
            .key(shared.names.stream(&room))
            .arg(shared.new_epoch())
            .arg(l.after.map_or(String::new(), |a| a.to_string()))
            .arg(shared.ttl_ms);
        // A read (and an idempotent create): after Redis came back, the connection's
        // first command fails while it reconnects, so one retry.
        match inv.invoke_async::<Vec<Value>>(&mut c).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                inv.invoke_async::<Vec<Value>>(&mut c).await
            }
            other => other,
        }
    };
    let answer = match tokio::time::timeout(shared.timeout, call).await {
        Ok(Ok(values)) => read_loaded(values, l.after),
        Ok(Err(e)) => {
            warn!(%room, "redis load failed: {e}");
            None
        }
        Err(_) => {
            warn!(%room, "redis load timed out");
            None
        }
    };
    let input = match answer {
        Some(loaded) => BackplaneInput::Loaded { room, loaded },
        None => BackplaneInput::LoadFailed { room },
    };
    shared.tell(input).await;
}

fn read_loaded(values: Vec<Value>, after: Option<u64>) -> Option<Loaded> {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn int(v: &Value) -> Option<u64> {
        match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            other => text(other)?.parse().ok(),
        }
    }
    let mut it = values.iter();
    let epoch = text(it.next()?)?;
    let top = int(it.next()?)?;
    let mut entries = Vec::new();
    while let (Some(seq), Some(body)) = (it.next(), it.next()) {
        entries.push((int(seq)?, text(body)?.into_boxed_str()));
    }
    Some(Loaded {
        epoch: epoch.into(),
        top,
        after,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keep_the_hash_tag() {
        let n = Names {
            prefix: "rc".into(),
        };
        assert_eq!(n.meta("a:b"), "rc:{a:b}:m");
        assert_eq!(n.room_of(&n.channel("a:b}:p")), Some("a:b}:p"));
        assert_eq!(n.room_of("rc:fwd"), None);
        assert_eq!(n.room_of("other:{x}:p"), None);
    }

    #[test]
    fn a_load_answer_reads_back() {
        let v = vec![
            Value::BulkString(b"e1".to_vec()),
            Value::Int(3),
            Value::Int(2),
            Value::BulkString(b"{}".to_vec()),
            Value::Int(3),
            Value::BulkString(b"{\"e\":1}".to_vec()),
        ];
        let l = read_loaded(v, Some(1)).unwrap();
        assert_eq!((&*l.epoch, l.top, l.entries.len()), ("e1", 3, 2));
        assert_eq!(l.entries[1].0, 3);
        assert!(read_loaded(vec![Value::Int(1)], None).is_none());
    }
}
