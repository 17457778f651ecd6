//! Reconnecting clients against the real hub over fake links that delay, cut and go
//! silent (half-open), on a virtual clock. After the chaos settles, every client must be
//! back in its rooms and subscriptions, and must have received every room message
//! exactly once and in order (history is on and long enough to cover every outage).
//!
//! Every third seed runs with signed tokens: short-lived (45 s of virtual time, so each
//! is refreshed on `expiring` several times), fetched with a delay, sometimes not at all
//! (the server then closes 4001 and the client reconnects with a new one), and naming
//! one room in their `rooms` claim, so the server's join after each reconnect races the
//! client's own rejoin of that room.
//!
//! `ROOMCAST_CLIENT_SIM_SEEDS=N` runs N seeds (default 30); `ROOMCAST_CLIENT_SIM_SEED=S`
//! replays one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use jsonwebtoken::{encode, EncodingKey, Header};
use roomcast_core::auth::{AuthConfig, KeySet, Verifier};

use roomcast_core::client::{
    Client, ClientConfig, ClientEvent, ClientOutput, ClientState, PublishTarget, Via,
};
use roomcast_core::hub::{
    Answer, ConnectRequest, DisconnectReason, HeartbeatConfig, HistoryConfig, HookConfig,
    HubConfig, Output, Ticket,
};
use roomcast_core::rng::Rng;
use roomcast_core::{ConnId, Hub, Timestamp};
use serde_json::value::RawValue;

const ROOMS: [&str; 4] = ["r0", "r1", "r2", "r3"];
const SECRET: &[u8] = b"client-sim-secret-0123456789abcdef";
/// Unix ms at the hub's Timestamp(0).
const T0_MS: u64 = 1_900_000_000_000;
/// Token lifetime in virtual ms.
const TOKEN_LIFE_MS: u64 = 45_000;

fn mint(user: &str, now: u64, rooms: &[String]) -> String {
    let claims = serde_json::json!({
        "sub": user,
        "exp": (T0_MS + now + TOKEN_LIFE_MS) / 1000,
        "rooms": rooms,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET).expect("hs256 key"),
    )
    .expect("encodes")
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// The hub side accepts the socket.
    Accept {
        link: usize,
    },
    ToHub {
        link: usize,
        text: String,
    },
    ToClient {
        link: usize,
        text: String,
    },
    /// The server's protocol ping was answered.
    Pong {
        link: usize,
    },
    /// The client learns its socket closed.
    ClientClosed {
        link: usize,
        code: Option<u16>,
    },
    /// The hub learns the socket closed.
    HubClosed {
        link: usize,
    },
    /// The application answers a parked publish.
    Answer {
        ticket: u64,
        replace: bool,
    },
    /// The application answers a token request (or fails to).
    Token {
        client: usize,
        ticket: u64,
        ok: bool,
    },
}

#[derive(Debug)]
struct Link {
    client: usize,
    socket: u64,
    conn: Option<ConnId>,
    /// Delivers nothing any more in either direction (cut or half-open).
    dead: bool,
    /// Last scheduled delivery per direction, to keep each direction FIFO.
    last_up: u64,
    last_down: u64,
}

struct World {
    now: u64,
    rng: Rng,
    /// Room messages coalesced into bursts.
    coalesce: bool,
    hub: Hub,
    clients: Vec<Client>,
    links: Vec<Link>,
    by_conn: BTreeMap<ConnId, usize>,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    order: u64,
    /// client → room → seqs received
    got: Vec<BTreeMap<String, Vec<u64>>>,
    wanted_rooms: Vec<BTreeSet<String>>,
    chaos: bool,
    cuts: u64,
    silences: u64,
    /// Tokens on: the room each client's token names in its `rooms` claim.
    token_rooms: Option<Vec<String>>,
    /// Refreshes answered, token fetches that failed, 4001 closes seen by clients.
    refreshes: u64,
    token_failures: u64,
    unauthorized: u64,
    /// Publishes parked for the application (hooked seeds), answered eventually.
    decisions: u64,
}

impl World {
    fn new(seed: u64, n: usize) -> World {
        let mut rng = Rng::from_u64(seed);
        let mut hs = [0u8; 32];
        rng.fill(&mut hs);
        let tokens = seed % 3 == 0;
        let auth = tokens.then(|| {
            let mut keys = KeySet::new();
            keys.add_secret(SECRET).expect("long enough");
            Arc::new(Verifier::new(AuthConfig {
                keys,
                ..AuthConfig::default()
            }))
        });
        let hub = Hub::new(
            HubConfig {
                heartbeat: HeartbeatConfig {
                    interval_ms: 1_000,
                    timeout_ms: 700,
                    max_missed: 2,
                    server_pings: true,
                },
                history: HistoryConfig {
                    max_messages: 100_000,
                    max_age_ms: 600_000,
                    ..HistoryConfig::default()
                },
                coalesce_room_messages: seed % 2 == 1,
                auth,
                clock_unix_ms: T0_MS,
                // Seeds 1, 5, 9, ...: the application decides every publish, slowly.
                hooks: HookConfig {
                    publish: seed % 4 == 1,
                    timeout_ms: 400,
                    ..HookConfig::default()
                },
                ..HubConfig::default()
            },
            hs,
            Timestamp(0),
        );
        let mut clients = Vec::new();
        let mut wanted_rooms = Vec::new();
        let mut token_rooms = Vec::new();
        for _ in 0..n {
            let mut cs = [0u8; 32];
            rng.fill(&mut cs);
            let mut c = Client::new(
                ClientConfig {
                    url: "ws://sim/ws".into(),
                    backoff_initial_ms: 300,
                    backoff_max_ms: 5_000,
                    token: tokens,
                    ..Default::default()
                },
                cs,
                Timestamp(0),
            );
            let mut rooms = BTreeSet::new();
            for r in ROOMS {
                if rng.below_or_eq(1) == 0 {
                    rooms.insert(r.to_string());
                }
            }
            if rooms.is_empty() {
                rooms.insert("r0".into());
            }
            // with tokens, the first room comes from the token's `rooms` claim too
            token_rooms.push(rooms.iter().next().cloned().expect("one room"));
            for r in &rooms {
                c.join(r, rng.below_or_eq(3) == 0).expect("valid");
            }
            c.subscribe("news").expect("valid");
            clients.push(c);
            wanted_rooms.push(rooms);
        }
        World {
            now: 0,
            rng,
            coalesce: seed % 2 == 1,
            hub,
            got: vec![BTreeMap::new(); n],
            clients,
            links: Vec::new(),
            by_conn: BTreeMap::new(),
            queue: BinaryHeap::new(),
            order: 0,
            wanted_rooms,
            chaos: false,
            cuts: 0,
            silences: 0,
            token_rooms: tokens.then_some(token_rooms),
            refreshes: 0,
            token_failures: 0,
            unauthorized: 0,
            decisions: 0,
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.order += 1;
        self.queue.push(Reverse((at, self.order, ev)));
    }

    fn delay(&mut self) -> u64 {
        1 + self.rng.below_or_eq(40)
    }

    fn send_up(&mut self, link: usize, text: String) {
        if self.links[link].dead {
            return;
        }
        let at = (self.now + self.delay()).max(self.links[link].last_up);
        self.links[link].last_up = at;
        self.schedule(at, Ev::ToHub { link, text });
    }

    fn send_down(&mut self, link: usize, text: String) {
        if self.links[link].dead {
            return;
        }
        let at = (self.now + self.delay()).max(self.links[link].last_down);
        self.links[link].last_down = at;
        self.schedule(at, Ev::ToClient { link, text });
    }

    fn current_link(&self, client: usize, socket: u64) -> Option<usize> {
        self.links
            .iter()
            .rposition(|l| l.client == client && l.socket == socket)
    }

    fn pump_client(&mut self, i: usize) {
        while let Some(out) = self.clients[i].poll_output() {
            match out {
                ClientOutput::Connect { socket, .. } => {
                    let link = self.links.len();
                    self.links.push(Link {
                        client: i,
                        socket,
                        conn: None,
                        dead: false,
                        last_up: 0,
                        last_down: 0,
                    });
                    let d = self.delay();
                    if self.chaos && self.rng.below_or_eq(9) == 0 {
                        // the connection attempt fails
                        self.links[link].dead = true;
                        self.schedule(
                            self.now + d,
                            Ev::ClientClosed {
                                link,
                                code: Some(1006),
                            },
                        );
                    } else {
                        self.schedule(self.now + d, Ev::Accept { link });
                    }
                }
                ClientOutput::Send { socket, text } => {
                    if let Some(link) = self.current_link(i, socket) {
                        self.send_up(link, text);
                    }
                }
                ClientOutput::Close { socket, .. } => {
                    if let Some(link) = self.current_link(i, socket) {
                        if !self.links[link].dead {
                            self.links[link].dead = true;
                        }
                        let d = self.delay();
                        self.schedule(self.now + d, Ev::HubClosed { link });
                    }
                }
                ClientOutput::FetchToken { ticket } => {
                    let d = self.delay() * 3;
                    // fetches fail now and then until 20 s into the calm, so some
                    // refreshes fail and the server's 4001 comes (by ~100 s)
                    let ok = !(self.now < 60_000 && self.rng.below_or_eq(7) == 0);
                    self.schedule(
                        self.now + d,
                        Ev::Token {
                            client: i,
                            ticket,
                            ok,
                        },
                    );
                }
                ClientOutput::Event(ClientEvent::State(ClientState::Closed { code })) => {
                    panic!("client {i} closed for good ({code:?}): it must keep retrying");
                }
                ClientOutput::Event(ClientEvent::Message(m)) => {
                    if let Via::Room { room, seq } = m.via {
                        let list = self.got[i].entry(room.clone()).or_default();
                        if let Some(&last) = list.last() {
                            assert_eq!(
                                seq,
                                last + 1,
                                "client {i} room {room}: got {seq} after {last}"
                            );
                        } else {
                            assert_eq!(seq, 1, "client {i} room {room}: first message is {seq}");
                        }
                        list.push(seq);
                    }
                }
                ClientOutput::Event(ClientEvent::Recovered { room, recovered }) => {
                    assert!(
                        recovered,
                        "client {i} lost messages in {room} though history covers the outage"
                    );
                }
                ClientOutput::Event(_) => {}
            }
        }
    }

    fn pump_hub(&mut self) {
        // Odd seeds coalesce room messages; the hub hands them out on some pumps only, so
        // bursts meet acks, rejoins and replays.
        if self.coalesce && self.rng.below_or_eq(1) == 0 {
            self.hub.flush();
        }
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::SendFrames { conn, frames } => {
                    self.hub
                        .handle_flushed(conn, frames.wire_len())
                        .expect("known");
                    if let Some(&link) = self.by_conn.get(&conn) {
                        for text in frames.texts() {
                            self.send_down(link, text.to_owned());
                        }
                    }
                }
                Output::Send { conn, msg } => {
                    self.hub
                        .handle_flushed(conn, msg.wire_len())
                        .expect("known");
                    if let Some(&link) = self.by_conn.get(&conn) {
                        self.send_down(link, msg.text().to_owned());
                    }
                }
                Output::Ping { conn } => {
                    if let Some(&link) = self.by_conn.get(&conn) {
                        if !self.links[link].dead {
                            let d = self.delay() * 2;
                            self.schedule(self.now + d, Ev::Pong { link });
                        }
                    }
                }
                Output::Close { conn, code, .. } => {
                    if let Some(link) = self.by_conn.remove(&conn) {
                        let alive = !self.links[link].dead;
                        self.links[link].dead = true;
                        self.hub
                            .handle_disconnect(
                                Timestamp(self.now),
                                conn,
                                DisconnectReason::Closed { code: Some(code) },
                            )
                            .expect("closing conn known");
                        if alive {
                            let d = self.delay();
                            self.schedule(
                                self.now + d,
                                Ev::ClientClosed {
                                    link,
                                    code: Some(code),
                                },
                            );
                        }
                    }
                }
                Output::Append(_) | Output::Load(_) | Output::Control(_) => {
                    panic!("this simulation has no backplane")
                }
                Output::Decide(d) => {
                    // Late (some past the hub's 400 ms deadline), out of order, or never.
                    let roll = self.rng.below_or_eq(19);
                    if roll > 0 {
                        let d_ms = self.rng.below_or_eq(if roll < 3 { 900 } else { 200 });
                        self.decisions += 1;
                        self.schedule(
                            self.now + d_ms,
                            Ev::Answer {
                                ticket: d.ticket.0,
                                replace: roll % 2 == 0,
                            },
                        );
                    }
                }
                Output::Event(_) | Output::Forward(_) => {}
            }
        }
        self.hub.check_invariants();
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Accept { link } => {
                if self.links[link].dead {
                    return;
                }
                let id = self
                    .hub
                    .connect(Timestamp(self.now), ConnectRequest::default())
                    .expect("admitted");
                self.links[link].conn = Some(id);
                self.by_conn.insert(id, link);
                let (c, s) = (self.links[link].client, self.links[link].socket);
                self.clients[c].handle_open(Timestamp(self.now), s);
                self.pump_hub();
                self.pump_client(c);
            }
            Ev::ToHub { link, text } => {
                if let (false, Some(conn)) = (self.links[link].dead, self.links[link].conn) {
                    if self.by_conn.get(&conn) == Some(&link) {
                        self.hub
                            .handle_text(Timestamp(self.now), conn, &text)
                            .expect("open");
                        self.pump_hub();
                    }
                }
            }
            Ev::ToClient { link, text } => {
                if !self.links[link].dead {
                    let (c, s) = (self.links[link].client, self.links[link].socket);
                    self.clients[c].handle_message(Timestamp(self.now), s, &text);
                    self.pump_client(c);
                }
            }
            Ev::Pong { link } => {
                if let (false, Some(conn)) = (self.links[link].dead, self.links[link].conn) {
                    if self.by_conn.get(&conn) == Some(&link) {
                        self.hub
                            .handle_activity(Timestamp(self.now), conn)
                            .expect("open");
                    }
                }
            }
            Ev::Answer { ticket, replace } => {
                let answer = if replace {
                    Answer::with_data(RawValue::from_string("\"moderated\"".into()).unwrap())
                } else {
                    Answer::allow()
                };
                self.hub
                    .handle_decision(Timestamp(self.now), Ticket(ticket), answer)
                    .expect("answers never fail");
                self.pump_hub();
            }
            Ev::Token { client, ticket, ok } => {
                let answer = if ok {
                    let rooms = self.token_rooms.as_ref().expect("tokens on")[client].clone();
                    if self.clients[client].state() == &ClientState::Open {
                        self.refreshes += 1;
                    }
                    Ok(mint(&format!("u{client}"), self.now, &[rooms]))
                } else {
                    self.token_failures += 1;
                    Err("token service down".to_owned())
                };
                self.clients[client].handle_token(Timestamp(self.now), ticket, answer);
                self.pump_client(client);
            }
            Ev::ClientClosed { link, code } => {
                if code == Some(4001) {
                    self.unauthorized += 1;
                }
                let (c, s) = (self.links[link].client, self.links[link].socket);
                self.clients[c].handle_close(Timestamp(self.now), s, code);
                self.pump_client(c);
            }
            Ev::HubClosed { link } => {
                if let Some(conn) = self.links[link].conn {
                    if self.by_conn.get(&conn) == Some(&link) {
                        self.by_conn.remove(&conn);
                        self.hub
                            .handle_disconnect(
                                Timestamp(self.now),
                                conn,
                                DisconnectReason::Closed { code: None },
                            )
                            .expect("known");
                        self.pump_hub();
                    }
                }
            }
        }
    }

    fn chaos_step(&mut self) {
        let live: Vec<usize> = self.by_conn.values().copied().collect();
        if live.is_empty() {
            return;
        }
        let link = live[self.rng.below_or_eq(live.len() as u64 - 1) as usize];
        if self.rng.below_or_eq(1) == 0 {
            // clean cut: both ends learn it
            self.cuts += 1;
            self.links[link].dead = true;
            let d1 = self.delay();
            let d2 = self.delay();
            self.schedule(
                self.now + d1,
                Ev::ClientClosed {
                    link,
                    code: Some(1006),
                },
            );
            self.schedule(self.now + d2, Ev::HubClosed { link });
        } else {
            // half-open: nobody is told; heartbeats on both sides must notice
            self.silences += 1;
            self.links[link].dead = true;
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        let mut t = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let mut consider = |x: Option<Timestamp>| {
            if let Some(x) = x {
                t = Some(t.map_or(x.0, |t| t.min(x.0)));
            }
        };
        consider(self.hub.poll_timeout());
        for c in &self.clients {
            consider(c.poll_timeout());
        }
        t
    }

    /// Runs until `until`, doing `tick` every `every` ms of virtual time.
    fn run(&mut self, until: u64, every: u64, mut tick: impl FnMut(&mut World)) {
        let mut next_tick = self.now + every;
        loop {
            let next = self
                .next_deadline()
                .unwrap_or(u64::MAX)
                .min(next_tick)
                .min(until);
            self.now = self.now.max(next);
            if self.now >= until {
                break;
            }
            if self.now >= next_tick {
                tick(self);
                next_tick += every;
            }
            while let Some(Reverse((t, _, _))) = self.queue.peek() {
                if *t > self.now {
                    break;
                }
                let Reverse((_, _, ev)) = self.queue.pop().expect("peeked");
                self.handle(ev);
            }
            self.hub.handle_timeout(Timestamp(self.now));
            self.pump_hub();
            for i in 0..self.clients.len() {
                if self.clients[i]
                    .poll_timeout()
                    .is_some_and(|t| t.0 <= self.now)
                {
                    self.clients[i].handle_timeout(Timestamp(self.now));
                }
                self.pump_client(i);
            }
        }
    }

    fn all_settled(&self) -> bool {
        self.clients.iter().all(|c| c.state() == &ClientState::Open)
    }
}

fn run_seed(seed: u64) -> (u64, u64, u64, [u64; 4]) {
    let mut w = World::new(seed, 16);
    for i in 0..w.clients.len() {
        w.pump_client(i);
    }
    // warm up: everyone connects and joins
    w.run(2_000, 1_000, |_| {});
    assert!(w.all_settled(), "seed {seed}: warm-up did not settle");
    // chaos with traffic
    w.chaos = true;
    let mut published = 0u64;
    w.run(40_000, 50, |w| {
        let room = ROOMS[w.rng.below_or_eq(3) as usize];
        if w.hub.room_position(room).is_some() {
            w.hub
                .send_to_room(Timestamp(w.now), room, "tick", None, &[])
                .expect("room exists");
            w.pump_hub();
        }
        // clients publish too (echo, so every member sees every seq)
        let i = w.rng.below_or_eq(w.clients.len() as u64 - 1) as usize;
        if let Some(room) = w.wanted_rooms[i].iter().next().cloned() {
            let _ = w.clients[i].publish(PublishTarget::Room(room), "say", Some("1"), true);
            w.pump_client(i);
        }
        if w.rng.below_or_eq(7) == 0 {
            w.chaos_step();
        }
        published += 1;
    });
    // calm: no chaos, no traffic; every half-open link is found by heartbeats
    w.chaos = false;
    w.run(120_000, 1_000, |_| {});
    assert!(
        w.all_settled(),
        "seed {seed}: clients not all open: {:?}",
        w.clients
            .iter()
            .map(|c| c.state().clone())
            .collect::<Vec<_>>()
    );
    // everyone is back in their rooms and subscriptions, on their current connection
    for (i, c) in w.clients.iter().enumerate() {
        let link = w
            .links
            .iter()
            .rposition(|l| l.client == i && l.conn.is_some() && !l.dead)
            .expect("a live link");
        let conn = w.links[link].conn.expect("connected");
        for room in &w.wanted_rooms[i] {
            assert!(
                w.hub.is_member(conn, room),
                "seed {seed}: client {i} not back in {room}"
            );
            let seq = w.hub.room_position(room).expect("room").1;
            let got = w.got[i].get(room).map_or(0, |v| v.len() as u64);
            assert_eq!(
                got, seq,
                "seed {seed}: client {i} room {room} got {got} of {seq}"
            );
        }
        assert!(
            w.hub.channel_subscribers("news").contains(&conn),
            "seed {seed}: client {i} not resubscribed"
        );
        assert_eq!(c.rooms().count(), w.wanted_rooms[i].len());
    }
    assert_eq!(
        w.hub.stats().connections,
        w.clients.len(),
        "stale connections were reaped"
    );
    (
        published,
        w.cuts,
        w.silences,
        [w.refreshes, w.token_failures, w.unauthorized, w.decisions],
    )
}

#[test]
fn reconnecting_clients_lose_nothing() {
    if let Ok(seed) = std::env::var("ROOMCAST_CLIENT_SIM_SEED") {
        let r = run_seed(seed.parse().expect("u64"));
        eprintln!("seed {seed}: {r:?}");
        return;
    }
    let seeds: u64 = std::env::var("ROOMCAST_CLIENT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let (mut cuts, mut silences, mut tok) = (0, 0, [0u64; 4]);
    for seed in 0..seeds {
        let r = std::panic::catch_unwind(|| run_seed(seed));
        match r {
            Ok((_, c, s, t)) => {
                cuts += c;
                silences += s;
                for k in 0..4 {
                    tok[k] += t[k];
                }
            }
            Err(e) => {
                eprintln!("client simulation failed for seed {seed}; replay with:\n  ROOMCAST_CLIENT_SIM_SEED={seed} cargo test -p roomcast-core --test client_sim");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!(
        "{seeds} seeds: {cuts} cuts, {silences} half-open links; tokens: {} refreshes, {} failed fetches, {} closes 4001; {} publishes decided by the application",
        tok[0], tok[1], tok[2], tok[3]
    );
    if seeds >= 10 {
        assert!(cuts > seeds && silences > seeds, "chaos actually happened");
        let token_seeds = seeds.div_ceil(3);
        assert!(
            tok[0] > token_seeds && tok[1] > 0 && tok[2] > 0,
            "token refreshes, failed fetches and 4001 closes all happened"
        );
        assert!(tok[3] > seeds, "hooked seeds parked publishes");
    }
}
