// Two nodes on one real Redis, the chat demo in Chromium: page A on node 1 (with node 2
// as its fallback), page B on node 2. Node 1 is killed mid-chat (SIGKILL, like a crash);
// page A's package reconnects to node 2, rejoins with its position and recovers what B
// said meanwhile: both pages end with every message once, in order.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { killAllServers, killServer, launchBrowser, openPage, saveScreenshots, startServer } from "./harness.mjs";
import { expectState, expectTexts, joinAs, say, shown } from "./page.mjs";

let browser;
let redis;
let redisDir;

after(async () => {
  killAllServers();
  redis?.kill("SIGKILL");
  if (redisDir) rmSync(redisDir, { recursive: true, force: true });
  await browser?.close();
});

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function ping(port) {
  return new Promise((resolve) => {
    const c = createConnection({ port, host: "127.0.0.1" }, () => c.write("PING\r\n"));
    c.once("data", (d) => {
      c.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    c.once("error", () => resolve(false));
  });
}

async function startRedis() {
  const port = await freePort();
  redisDir = mkdtempSync(path.join(tmpdir(), "roomcast-e2e-redis-"));
  redis = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "",
    "--appendonly", "no", "--dir", redisDir], { stdio: "ignore" });
  const deadline = Date.now() + 10_000;
  while (!(await ping(port))) {
    assert.ok(Date.now() < deadline, "redis-server did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  return `redis://127.0.0.1:${port}`;
}

test("a page whose node dies moves to the other node and loses nothing",
  { timeout: 90_000 }, async () => {
    browser = await launchBrowser();
    const url = await startRedis();
    const n1 = await startServer("127.0.0.1:0", "e2e-cluster-node1", ["--redis", url]);
    const n2 = await startServer("127.0.0.1:0", "e2e-cluster-node2", ["--redis", url]);
    const a = await openPage(browser);
    const b = await openPage(browser);
    const room = `cluster-${Date.now()}`;
    try {
      // page A is served by node 1 and knows node 2; page B lives on node 2
      const fallback = encodeURIComponent(`ws://${n2.addr}/ws`);
      await a.goto(`http://${n1.addr}/?name=ann&room=${room}&fallback=${fallback}`);
      await a.waitForSelector('body[data-ready="1"]', { state: "attached" });
      await a.click('#join button[type="submit"]');
      await a.waitForSelector("#chat", { state: "visible" });
      await joinAs(b, `http://${n2.addr}/`, "bob", room);
      await expectState(a, "open");
      await expectState(b, "open");
      const all = [];
      for (let i = 0; i < 3; i++) {
        const [page, who] = i % 2 === 0 ? [a, "ann"] : [b, "bob"];
        all.push(`${who} ${i}`);
        await say(page, `${who} ${i}`);
        await expectTexts(a, all, "A");
        await expectTexts(b, all, "B");
      }
      await killServer(n1); // A's node crashes
      // B talks on while A is away
      for (let i = 3; i < 7; i++) {
        all.push(`bob ${i}`);
        await say(b, `bob ${i}`);
      }
      await expectTexts(b, all, "B");
      // A reconnects to node 2 by itself and recovers B's lines
      await expectTexts(a, all, "A");
      await expectState(a, "open");
      assert.ok(Number(await a.evaluate(() => document.body.dataset.welcomes)) >= 2, "A reconnected");
      all.push("ann after");
      await say(a, "ann after");
      await expectTexts(a, all, "A");
      await expectTexts(b, all, "B");
      for (const [label, page] of [["A", a], ["B", b]]) {
        const msgs = await shown(page);
        assert.deepEqual(msgs.map((m) => m.text), all, `${label}: every message once, in order`);
      }
      if (process.env.E2E_SCREENSHOTS) await saveScreenshots("cluster-passed", { A: a, B: b });
    } catch (err) {
      await saveScreenshots("cluster", { A: a, B: b });
      throw err;
    } finally {
      await killServer(n1);
      await killServer(n2);
    }
  });
