// Signed tokens in the chat demo, end to end: the real server started with
// `--demo-tokens --demo-token-ttl 6s` mints short-lived tokens, and the page hands the
// browser package a token *function* (www/app.js `tokenSource`). The server sends
// `expiring` at half a token's life, the package calls the function, and the new token
// goes over the open socket as `auth`. The pages talk for longer than the first token's
// life plus the server's 10 s grace, so a refresh that did not work would have closed
// them (4001): the test checks that each page kept its one connection, fetched several
// tokens, and shows every message exactly once, in order.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { killAllServers, killServer, launchBrowser, openPage, saveScreenshots, startServer } from "./harness.mjs";
import { expectState, expectTexts, joinAs, say, shown } from "./page.mjs";

let browser;

after(async () => {
  killAllServers();
  await browser?.close();
});

const TTL_S = 6;
const GRACE_S = 10;

test("demo tokens are refreshed through the token function without a reconnect or a lost message",
  { timeout: 90_000 }, async () => {
    browser = await launchBrowser();
    const server = await startServer("127.0.0.1:0", "e2e-server-tokens",
      ["--demo-tokens", "--demo-token-ttl", `${TTL_S}s`]);
    const a = await openPage(browser);
    const b = await openPage(browser);
    const room = `tokens-${Date.now()}`;
    try {
      const started = Date.now();
      await joinAs(a, `http://${server.addr}/`, "ann", room);
      await joinAs(b, `http://${server.addr}/`, "bob", room);
      await expectState(a, "open");
      await expectState(b, "open");
      for (const p of [a, b]) {
        assert.match(await p.textContent("#identity"), /demo token/);
      }
      const tokens = (p) => p.evaluate(() => Number(document.body.dataset.tokens ?? 0));
      // talk past the first tokens' exp + grace, one line at a time
      const all = [];
      let n = 0;
      while (Date.now() - started < (TTL_S + GRACE_S + 2) * 1000 || (await tokens(a)) < 4) {
        const [page, who] = n % 2 === 0 ? [a, "ann"] : [b, "bob"];
        const text = `${who} says ${n}`;
        await say(page, text);
        all.push(text);
        await expectTexts(a, all, "A");
        await expectTexts(b, all, "B");
        n += 1;
        await a.waitForTimeout(500); // pacing only: every check above waits for its condition
      }
      for (const [label, page] of [["A", a], ["B", b]]) {
        assert.ok((await tokens(page)) >= 4, `${label}: tokens were refreshed (${await tokens(page)})`);
        const welcomes = await page.evaluate(() => document.body.dataset.welcomes);
        assert.equal(welcomes, "1", `${label}: one connection the whole time`);
        const msgs = await shown(page);
        assert.deepEqual(msgs.map((m) => m.text), all, `${label}: every message once, in order`);
        assert.deepEqual(page.problems, [], `${label}: errors in the page`);
      }
      if (process.env.E2E_SCREENSHOTS) await saveScreenshots("tokens-passed", { A: a, B: b });
    } catch (err) {
      await saveScreenshots("tokens", { A: a, B: b });
      throw err;
    } finally {
      await killServer(server);
    }
  });

test("a server that wants tokens the page cannot get never lets it in",
  { timeout: 60_000 }, async () => {
    browser ??= await launchBrowser();
    // the server checks tokens but mints none: the page falls back to `?user=`, which a
    // server with keys ignores; the connection waits for `auth` and is closed 4001
    const server = await startServer("127.0.0.1:0", "e2e-server-no-token",
      ["--auth-secret", "a-secret-the-page-does-not-know-0123456789"]);
    const page = await openPage(browser);
    try {
      await joinAs(page, `http://${server.addr}/`, "mallory", "vault");
      assert.match(await page.textContent("#identity"), /open identity/);
      // no `auth` within the server's 10 s: closed 4001, and the client retries
      await page.waitForFunction(() => document.querySelector("#conn").dataset.state === "reconnecting",
        null, { timeout: 25_000 });
      assert.equal(await page.evaluate(() => document.body.dataset.welcomes), undefined, "never welcomed");
      assert.deepEqual(page.problems, [], "errors in the page");
    } catch (err) {
      await saveScreenshots("no-token", { page });
      throw err;
    } finally {
      await killServer(server);
    }
  });
