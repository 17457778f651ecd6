// roomcast chat demo: a small app on the `roomcast` package (./pkg, built by
// scripts/build-wasm.sh). Reconnecting, rejoining and replaying missed messages are the
// package's job; this file only renders what it reports.
import init, { RoomcastClient } from "./pkg/roomcast_browser.js";

const $ = (id) => document.getElementById(id);
const EVENT = "chat";

/**
 * The WebSocket endpoint: `?ws=URL` > `<meta name="roomcast-ws">` > `?hub=NAME` or a page
 * under /hub/NAME/ (Cloudflare worker: /hub/NAME/ws) > /ws (native server).
 */
function wsUrl() {
  const params = new URLSearchParams(location.search);
  if (params.get("ws")) return params.get("ws");
  const meta = document.querySelector('meta[name="roomcast-ws"]')?.content.trim();
  if (meta) return meta;
  if (params.get("hub")) return `/hub/${encodeURIComponent(params.get("hub"))}/ws`;
  const under = location.pathname.match(/^\/hub\/([^/]+)\//); // already URL-encoded
  return under ? `/hub/${under[1]}/ws` : "/ws";
}

/**
 * Other nodes of the same service (`?fallback=URL,URL`, e.g. what scripts/cluster.sh
 * prints): the package tries the next one when a connection fails.
 */
function fallbackUrls() {
  const list = new URLSearchParams(location.search).get("fallback");
  return list ? list.split(",").map((u) => u.trim()).filter(Boolean) : [];
}

/** The server's demo token endpoint, beside the WebSocket (`/ws` -> `/demo/token`). */
function tokenUrl(name) {
  const u = new URL(wsUrl(), location.href);
  if (u.protocol === "ws:") u.protocol = "http:";
  if (u.protocol === "wss:") u.protocol = "https:";
  const t = new URL("demo/token", u);
  t.search = new URLSearchParams({ user: name }).toString();
  return t;
}

let tokensFetched = 0;

/**
 * A demo token for `name` from a server started with `--demo-tokens`, or null when it
 * mints none (204, or 404 from an older server: the open `?user=` identity). A real app would ask its own backend,
 * which knows who is signed in; the flow after that is the same.
 */
async function demoToken(name) {
  const res = await fetch(tokenUrl(name), { cache: "no-store" });
  if (res.status === 204 || res.status === 404) return null; // 204: mints none
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error?.message ?? `token endpoint answered ${res.status}`);
  tokensFetched += 1;
  document.body.dataset.tokens = String(tokensFetched); // for tests: refreshes happened
  return body.token;
}

/**
 * The client's `token` option: called before every (re)connect and when the server says
 * the token is expiring. The first call uses the token fetched to find out whether the
 * server wants tokens at all; every later call fetches a fresh one.
 */
function tokenSource(name, first) {
  let pending = first;
  return async () => {
    if (pending) {
      const t = pending;
      pending = null;
      return t;
    }
    const t = await demoToken(name);
    if (!t) throw new Error("the server stopped minting demo tokens");
    return t;
  };
}

/** An id that makes a message idempotent: a resend after a lost ack is shown once. */
function messageId() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

let client = null;
let me = { name: "", conn: "" };
let room = "";
let welcomed = 0; // welcomes seen by this client: the second one means "reconnected"
let rosterStale = false;
let rejoining = false; // welcomed again: the next `recovered` is the rejoin's
let countdown = 0;
/** Rendered chat messages by id: what makes each one appear exactly once. */
let shown = new Map();
/** conn -> user, for the people list. */
let roster = new Map();

// --- connection state -------------------------------------------------------------------

function showState(s) {
  const el = $("conn");
  clearInterval(countdown);
  el.dataset.state = s.state;
  const text = $("conn-text");
  switch (s.state) {
    case "connecting":
      text.textContent = welcomed ? "reconnecting…" : "connecting…";
      break;
    case "open":
      text.textContent = "online";
      break;
    case "reconnecting": {
      const tick = () => {
        const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
        text.textContent = secs > 0 ? `offline, reconnecting in ${secs} s` : "reconnecting…";
      };
      tick();
      countdown = setInterval(tick, 250);
      rosterStale = true; // shown greyed: the last list we knew
      renderPeople();
      break;
    }
    case "closed":
      text.textContent = s.code === 1008 ? "disconnected by the server" : "not connected";
      break;
  }
}

// --- people -----------------------------------------------------------------------------

function renderPeople() {
  const byUser = new Map();
  for (const user of roster.values()) {
    const name = user ?? "anonymous";
    byUser.set(name, (byUser.get(name) ?? 0) + 1);
  }
  const names = [...byUser.keys()].sort((a, b) =>
    a === me.name ? -1 : b === me.name ? 1 : a.localeCompare(b));
  const list = $("people");
  list.replaceChildren(...names.map((name) => {
    const li = document.createElement("li");
    li.dataset.user = name;
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = name.slice(0, 1).toUpperCase();
    avatar.style.background = colorFor(name);
    const label = document.createElement("span");
    label.textContent = name + (name === me.name ? " (you)" : "");
    li.append(avatar, label);
    const tabs = byUser.get(name);
    if (tabs > 1) {
      const n = document.createElement("small");
      n.textContent = `×${tabs}`;
      li.append(n);
    }
    return li;
  }));
  $("people-count").textContent = String(names.length);
  document.querySelector(".people").classList.toggle("stale", rosterStale);
}

// The room is watched per user (`presence: "users"`): someone with two tabs open is one
// person here, and closing one of them is not leaving. Anonymous visitors count one per
// connection.
const personOf = (p) => (p.user == null ? `conn:${p.conn}` : `user:${p.user}`);

function setRoster(present) {
  roster = new Map((present ?? []).map((p) => [personOf(p), p.user]));
  rosterStale = false;
  renderPeople();
}

function colorFor(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  return `hsl(${h} 55% 45%)`;
}

// --- messages ---------------------------------------------------------------------------

/**
 * `/method arg ...`: an rpc to the server's application (numbers are sent as numbers),
 * its answer shown as a notice. A server without an rpc hook answers `unsupported`.
 */
function call(command) {
  const [method, ...words] = command.split(/\s+/);
  const args = words.map((w) => (w !== "" && !Number.isNaN(Number(w)) ? Number(w) : w));
  client.rpc(method, { args }).then(
    (answer) => addNotice(`/${method} → ${JSON.stringify(answer)}`),
    (err) => addNotice(err.code === "unsupported"
      ? `/${method}: this server answers no rpc (give it an application: --proxy-url)`
      : `/${method} failed: ${err.code} (${err.message})`));
}

function addNotice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  append(li);
}

function append(li) {
  const list = $("messages");
  const timeline = list.parentElement;
  const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
  list.append(li);
  $("empty").hidden = true;
  if (atBottom || li.classList.contains("own")) timeline.scrollTop = timeline.scrollHeight;
}

function renderMessage({ id, text, ts }, from, own) {
  const li = document.createElement("li");
  li.className = own ? "msg own" : "msg";
  li.dataset.id = id;
  li.dataset.from = from;
  const head = document.createElement("div");
  head.className = "meta";
  const who = document.createElement("strong");
  who.textContent = own ? "you" : from;
  who.style.color = own ? "" : colorFor(from);
  const when = document.createElement("time");
  const date = new Date(Number.isFinite(ts) ? ts : Date.now());
  when.dateTime = date.toISOString();
  when.textContent = timeFormat.format(date);
  when.title = date.toLocaleString();
  const status = document.createElement("span");
  status.className = "status";
  head.append(who, when, status);
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  li.append(head, body);
  shown.set(id, li);
  append(li);
  return li;
}

function setStatus(li, status, detail = "") {
  li.dataset.status = status;
  const el = li.querySelector(".status");
  el.textContent = { queued: "queued", sending: "sending…", sent: "✓", failed: "not sent" }[status];
  el.title = detail;
}

function onMessage(m) {
  if (m.room !== room || m.event !== EVENT) return;
  const data = m.data ?? {};
  if (typeof data.id !== "string" || typeof data.text !== "string") return;
  const seen = shown.get(data.id);
  if (seen) {
    // our own message replayed after a reconnect, or a resend whose first copy arrived
    if (seen.dataset.status !== "failed") setStatus(seen, "sent");
    document.body.dataset.repeats = String(Number(document.body.dataset.repeats ?? 0) + 1);
    return;
  }
  const from = m.from?.user ?? "anonymous";
  renderMessage(data, from, from === me.name);
}

/** Publishes until acked; a publish lost with its connection is sent again (same id). */
function send(data, li) {
  setStatus(li, client.state.state === "open" ? "sending" : "queued");
  client.publish({ room, event: EVENT, data }).then(
    () => setStatus(li, "sent"),
    (err) => {
      if ((err.code === "disconnected" || err.code === "timeout") && client) {
        send(data, li); // queued until the rejoin, then sent
      } else {
        setStatus(li, "failed", `${err.code}: ${err.message}`);
      }
    });
}

// --- wiring -----------------------------------------------------------------------------

async function start(name, roomName) {
  // A token endpoint that cannot be reached (another origin, no CORS) means open mode.
  const first = await demoToken(name).catch(() => null);
  const identity = first ? { token: tokenSource(name, first) } : { user: name };
  $("identity").textContent = first
    ? `Signed in as ${name} with a demo token (refreshed before it expires).`
    : `Joined as ${name} (open identity: the server checks no tokens).`;
  me = { name, conn: "" };
  room = roomName;
  welcomed = 0;
  rejoining = false;
  rosterStale = false;
  shown = new Map();
  roster = new Map();
  $("messages").replaceChildren();
  $("empty").hidden = false;
  $("room-title").textContent = `# ${room}`;
  document.title = `${room} · roomcast chat`;

  client = new RoomcastClient(wsUrl(), { ...identity, fallbackUrls: fallbackUrls() });
  client.on("state", showState);
  client.on("welcome", (w) => {
    me.conn = w.conn;
    document.body.dataset.conn = w.conn; // for tests: this connection's id
    welcomed += 1;
    document.body.dataset.welcomes = String(welcomed); // for tests: reconnects
    if (welcomed > 1) rejoining = true;
  });
  client.on("message", onMessage);
  // Membership the server decided (its API, the application, a token's rooms claim):
  // the client rejoins such rooms after a reconnect like its own; the page says so.
  client.on("joined", (j) => addNotice(`The server added you to #${j.room}.`));
  client.on("left", (l) => addNotice(`The server took you out of #${l.room} (${l.reason}).`));
  client.on("presence", (p) => {
    if (p.room !== room) return;
    for (const x of p.left) roster.delete(personOf(x));
    for (const x of p.joined) roster.set(personOf(x), x.user);
    renderPeople();
  });
  client.on("recovered", (r) => {
    if (r.room !== room || !rejoining) return;
    rejoining = false;
    addNotice(r.recovered
      ? "Reconnected: nothing was missed."
      : "Reconnected: the server restarted; showing the messages it kept.");
  });
  // The automatic rejoin's ack carries who is here now.
  client.on("rejoined", (r) => {
    if (r.room === room) setRoster(r.ack.present);
  });
  client.on("error", (e) => console.warn("roomcast:", e.code, e.message));
  showState(client.state);

  $("join").hidden = true;
  $("chat").hidden = false;
  $("text").focus();
  return client.join(room, { presence: "users" }).then(
    (ack) => setRoster(ack.present),
    (err) => fail(`Could not join: ${err.message} (${err.code})`));
}

function stop() {
  client?.close();
  client = null;
  clearInterval(countdown);
  $("conn").dataset.state = "idle";
  $("conn-text").textContent = "not connected";
  $("chat").hidden = true;
  $("join").hidden = false;
}

function fail(message) {
  stop();
  const e = $("join-error");
  e.textContent = message;
  e.hidden = false;
}

async function main() {
  await init();
  const params = new URLSearchParams(location.search);
  $("name").value = params.get("name") ?? localStorage.getItem("roomcast.name") ?? "";
  $("room").value = params.get("room") ?? localStorage.getItem("roomcast.room") ?? "lobby";

  $("join").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    const roomName = $("room").value.trim();
    if (!name || !roomName) return;
    $("join-error").hidden = true;
    localStorage.setItem("roomcast.name", name);
    localStorage.setItem("roomcast.room", roomName);
    start(name, roomName).catch((err) => fail(err.message)); // e.g. a bad name
  });
  $("leave").addEventListener("click", stop);
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    if (!text || !client) return;
    $("text").value = "";
    if (text.startsWith("/")) {
      call(text.slice(1));
      return;
    }
    const data = { id: messageId(), text, ts: Date.now() };
    send(data, renderMessage(data, me.name, true));
  });
  document.body.dataset.ready = "1"; // for tests: the module and the wasm are loaded
}

main().catch((err) => {
  document.body.dataset.ready = "error";
  const e = $("join-error");
  e.textContent = `Could not load the client: ${err.message}`;
  e.hidden = false;
});
