// The application's seat in the chat demo, end to end: the real server started with
// `--proxy-url` (a small backend written here with node:http, not roomcast code) and
// `--api-key`. The page calls an rpc (`/add 2 3` in the composer) and shows the
// backend's answer; then the server's HTTP API puts the page's connection into another
// room, and the page shows the `joined` it was told; the API takes it out again (`left`).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, test } from "node:test";
import { killAllServers, killServer, launchBrowser, openPage, saveScreenshots, startServer } from "./harness.mjs";
import { expectState, joinAs, say } from "./page.mjs";

const KEY = "e2e-api-key-0123456789";
let browser;
let backend;

after(async () => {
  killAllServers();
  backend?.close();
  await browser?.close();
});

/** The application: answers rpc `add` with the sum of its args; refuses anything else. */
function startBackend() {
  const calls = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      const call = JSON.parse(body || "{}");
      calls.push({ path: req.url, call });
      const answer = req.url.endsWith("/rpc") && call.method === "add"
        ? { data: call.data.args.reduce((a, b) => a + b, 0) }
        : { error: { code: "no_such_method", message: String(call.method) } };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, calls })));
}

async function api(addr, method, path, body) {
  const res = await fetch(`http://${addr}/api${path}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function expectNotice(page, pattern, label) {
  try {
    await page.waitForFunction((src) => [...document.querySelectorAll("#messages li.notice")]
      .some((li) => new RegExp(src).test(li.textContent)), pattern.source, { timeout: 15_000 });
  } catch {
    const got = await page.$$eval("#messages li.notice", (els) => els.map((e) => e.textContent));
    assert.fail(`${label}: no notice matching ${pattern} in ${JSON.stringify(got)}`);
  }
}

test("the page calls an rpc and shows rooms the server joins it to", { timeout: 90_000 }, async () => {
  const b = await startBackend();
  backend = b.server;
  const hooks = `http://127.0.0.1:${b.server.address().port}/hooks`;
  browser = await launchBrowser();
  const server = await startServer("127.0.0.1:0", "e2e-server-app",
    ["--proxy-url", hooks, "--proxy-hooks", "rpc", "--api-key", KEY]);
  const page = await openPage(browser);
  try {
    await joinAs(page, `http://${server.addr}/`, "ann", "lobby");
    await expectState(page, "open");
    await say(page, "/add 2 3 4");
    await expectNotice(page, /^\/add → 9$/, "rpc answer");
    const rpc = b.calls.find((c) => c.path === "/hooks/rpc");
    assert.equal(rpc.call.user, "ann");
    assert.deepEqual(rpc.call.data, { args: [2, 3, 4] });
    await say(page, "/nope");
    await expectNotice(page, /^\/nope failed: no_such_method/, "rpc refusal");

    const conn = await page.evaluate(() => document.body.dataset.conn);
    const joined = await api(server.addr, "POST", "/rooms/side/members", { conn });
    assert.deepEqual(joined, { status: 200, body: { joined: 1 } });
    await expectNotice(page, /added you to #side/, "server join");
    const left = await api(server.addr, "DELETE", `/rooms/side/members/${encodeURIComponent(conn)}`);
    assert.equal(left.status, 200);
    await expectNotice(page, /took you out of #side \(server\)/, "server leave");
    assert.deepEqual(page.problems, [], "errors in the page");
    if (process.env.E2E_SCREENSHOTS) await saveScreenshots("app-passed", { page });
  } catch (err) {
    await saveScreenshots("app", { page });
    throw err;
  } finally {
    await killServer(server);
  }
});
