// Bun peer of the roomcast benchmark suite: Bun.serve's WebSocket (uWebSockets inside).
//
// Tiny benchmark protocol (docs/benchmarks.md): `/echo` sends every message back as it
// came; on `/room` the text `sub` subscribes to the one room and any other text is
// published to the room, the sender included when it is subscribed (server.publish, as
// Bun's own chat benchmark does). Prints `listening on http://ADDR` when ready; exits on
// SIGTERM/SIGINT. Defaults everywhere else (backpressure limit, idle timeout off).
const ROOM = "room";

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT || 0),
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path !== "/echo" && path !== "/room") {
      return new Response("not found", { status: 404 });
    }
    if (server.upgrade(req, { data: { room: path === "/room" } })) {
      return undefined;
    }
    return new Response("upgrade failed", { status: 400 });
  },
  websocket: {
    idleTimeout: 0,
    maxPayloadLength: 64 * 1024 * 1024,
    message(ws, msg) {
      if (!ws.data.room) {
        ws.send(msg);
      } else if (msg === "sub") {
        ws.subscribe(ROOM);
      } else {
        server.publish(ROOM, msg);
      }
    },
  },
});

console.log(`listening on http://127.0.0.1:${server.port}`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.stop(true);
    process.exit(0);
  });
}
