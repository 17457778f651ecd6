// Node + `ws` peer of the roomcast benchmark suite.
//
// Tiny benchmark protocol (docs/benchmarks.md): `/echo` sends every message back as it
// came; on `/room` the text `sub` subscribes to the one room and any other text is
// published to the room, the sender included when it is subscribed (the ws README's
// broadcast loop). Prints `listening on http://ADDR` when ready; exits on
// SIGTERM/SIGINT.
import http from "node:http";
import { WebSocketServer, WebSocket } from "ws";

const room = new Set();
const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end("not found");
});
const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: 64 * 1024 * 1024,
  clientTracking: false,
});

function publish(data) {
  // The idiomatic broadcast of the ws README: one send per subscriber.
  for (const ws of room) {
    if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: false });
  }
}

server.on("upgrade", (req, socket, head) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path !== "/echo" && path !== "/room") {
    socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  socket.setNoDelay(true);
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (path === "/echo") {
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
      return;
    }
    ws.on("message", (data, isBinary) => {
      if (!isBinary && data.length === 3 && data.toString() === "sub") {
        room.add(ws);
      } else {
        publish(data);
      }
    });
    ws.on("close", () => room.delete(ws));
    ws.on("error", () => room.delete(ws));
  });
});

server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => process.exit(0));
}
