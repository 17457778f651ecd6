// The chat demo (www/) end to end: two Chromium pages against the real `roomcast` server,
// which is killed and restarted on the same port in the middle of the conversation.
//
// What "exactly once" means across that restart. The server keeps history in memory, so
// the restarted one starts a new epoch with an empty history. The pages' clients rejoin
// with the old epoch's last seq; the new server replays its own epoch from seq 1 and says
// `recovered: false`. So:
// - messages both pages saw before the kill stay on screen, once (nothing replays them);
// - messages page A sends after the kill are queued in its client (or, if one was already
//   on the dead socket, its promise rejects `disconnected` and the page re-sends it with
//   the same id) and are published to the new server after A's rejoin; B gets them live or
//   in its rejoin's replay, whichever comes first, and the client drops replay overlap by seq;
// - a message is a `data.id` the page generated, and the page renders an id once.
// The test sends each post-kill message only after the old server is gone (so none can be
// half-delivered by it), hence the claim is unconditional: both pages end with exactly the
// sequence sent, in order, no id twice, and no message event for an id already shown
// (`data-repeats` stays unset: nothing needed de-duplicating by id).
import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  killAllServers, killServer, launchBrowser, openPage, saveScreenshots, startServer,
} from "./harness.mjs";
import { WAIT, expectPeople, expectState, expectTexts, joinAs, say, shown } from "./page.mjs";

let browser;

after(async () => {
  killAllServers();
  await browser?.close();
});

test("two pages chat, survive a server restart, and show every message exactly once",
  { timeout: 120_000 }, async () => {
    browser = await launchBrowser();
    const a = await openPage(browser);
    const b = await openPage(browser);
    const room = `e2e-${Date.now()}`;
    let server = await startServer("127.0.0.1:0", "e2e-server-1");
    const addr = server.addr;
    try {
      await joinAs(a, `http://${addr}/`, "ann", room);
      await joinAs(b, `http://${addr}/`, "bob", room);
      await expectState(a, "open");
      await expectState(b, "open");
      await expectPeople(a, ["ann", "bob"], "A before");
      await expectPeople(b, ["ann", "bob"], "B before");

      // a conversation, each line seen by both before the next (a fixed global order)
      const before = [["a", "hello from ann"], ["b", "hi ann, bob here"], ["a", "how is it going?"]];
      const all = [];
      for (const [who, text] of before) {
        await say(who === "a" ? a : b, text);
        all.push(text);
        await expectTexts(a, all, "A");
        await expectTexts(b, all, "B");
      }

      // crash the server; A keeps talking
      await killServer(server);
      await say(a, "anyone there?"); // the page may not have noticed yet
      all.push("anyone there?");
      await a.waitForFunction(() => document.querySelector("#conn").dataset.state !== "open",
        null, { timeout: WAIT });
      await a.waitForFunction(() => /reconnect/.test(document.querySelector("#conn-text").textContent),
        null, { timeout: WAIT });
      for (const text of ["still typing while offline", "third one offline"]) {
        await say(a, text);
        all.push(text);
      }
      // A shows its offline messages right away, marked as not sent yet
      await expectTexts(a, all, "A offline");
      const offline = (await shown(a)).slice(-2);
      assert.ok(offline.every((m) => m.status === "queued"), JSON.stringify(offline));
      await b.waitForFunction(() => document.querySelector("#conn").dataset.state !== "open",
        null, { timeout: WAIT });

      // same port, empty memory: a new epoch
      server = await startServer(addr, "e2e-server-2");
      await expectState(a, "open");
      await expectState(b, "open");
      await expectTexts(a, all, "A after restart");
      await expectTexts(b, all, "B after restart");
      await a.waitForSelector('#messages li.notice:has-text("server restarted")', { state: "attached" });
      await b.waitForSelector('#messages li.notice:has-text("server restarted")', { state: "attached" });
      await expectPeople(a, ["ann", "bob"], "A after restart");
      await expectPeople(b, ["ann", "bob"], "B after restart");

      // and the conversation goes on
      await say(a, "back online");
      all.push("back online");
      await expectTexts(b, all, "B live");
      await say(b, "welcome back");
      all.push("welcome back");
      await expectTexts(a, all, "A live");
      await expectTexts(b, all, "B live");

      for (const [label, page, self] of [["A", a, "ann"], ["B", b, "bob"]]) {
        const msgs = await shown(page);
        assert.deepEqual(msgs.map((m) => m.text), all, `${label}: order`);
        const ids = msgs.map((m) => m.id);
        assert.equal(new Set(ids).size, ids.length, `${label}: an id shown twice`);
        const repeats = await page.evaluate(() => document.body.dataset.repeats ?? "0");
        assert.equal(repeats, "0", `${label}: messages delivered again after being shown`);
        // own messages end up acknowledged (the queued and re-sent ones too)
        await page.waitForFunction(() => [...document.querySelectorAll("#messages li.msg.own")]
          .every((li) => li.dataset.status === "sent"), null, { timeout: WAIT });
        assert.ok(msgs.filter((m) => m.from === self).length > 0);
        assert.deepEqual(page.problems, [], `${label}: errors in the page`);
      }
      // the same ids on both pages: one message each, not re-created copies
      assert.deepEqual((await shown(a)).map((m) => m.id), (await shown(b)).map((m) => m.id));
      if (process.env.E2E_SCREENSHOTS) await saveScreenshots("restart-passed", { A: a, B: b });
    } catch (err) {
      await saveScreenshots("restart", { A: a, B: b });
      throw err;
    } finally {
      await killServer(server);
    }
  });

test("the page fits a phone-width window", { timeout: 60_000 }, async () => {
  browser ??= await launchBrowser();
  const server = await startServer("127.0.0.1:0", "e2e-server-phone");
  const page = await openPage(browser, { width: 360, height: 640 });
  try {
    await joinAs(page, `http://${server.addr}/`, "a-rather-long-name-for-a-phone", "phone");
    await expectState(page, "open");
    await say(page, "a long line without spaces: " + "x".repeat(300));
    await expectTexts(page, ["a long line without spaces: " + "x".repeat(300)], "phone");
    const overflow = await page.evaluate(() =>
      document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.equal(overflow, 0, "no horizontal scrolling");
    const composer = await page.locator("#composer").boundingBox();
    assert.ok(composer && composer.y + composer.height <= 640, "composer on screen");
    if (process.env.E2E_SCREENSHOTS) await saveScreenshots("phone-passed", { page });
  } catch (err) {
    await saveScreenshots("phone", { page });
    throw err;
  } finally {
    await killServer(server);
  }
});

/** Polls the server's `/metrics` until `name` reads `want`. */
async function metricReaches(addr, name, want) {
  const deadline = Date.now() + WAIT;
  let last;
  while (Date.now() < deadline) {
    const text = await (await fetch(`http://${addr}/metrics`)).text();
    last = new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1];
    if (Number(last) === want) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`${name} stayed ${last}, want ${want}`);
}

test("two tabs of one person are one person, and closing one of them is not leaving",
  { timeout: 60_000 }, async () => {
    browser ??= await launchBrowser();
    const server = await startServer("127.0.0.1:0", "e2e-server-tabs");
    const base = `http://${server.addr}/`;
    const [wes, tab1, tab2] = [await openPage(browser), await openPage(browser), await openPage(browser)];
    const room = `tabs-${Date.now()}`;
    try {
      await joinAs(wes, base, "wes", room);
      await joinAs(tab1, base, "ann", room);
      await joinAs(tab2, base, "ann", room);
      await expectPeople(wes, ["ann", "wes"], "ann's two tabs, one ann");
      await expectPeople(tab2, ["ann", "wes"], "tab 2's own list");

      await tab1.close();
      // the server has handled the close once it counts two connections; a message sent
      // after that carries any presence change before it (the page would show a false
      // departure by the time the message is on screen)
      await metricReaches(server.addr, "roomcast_connections", 2);
      await say(tab2, "still here");
      await expectTexts(wes, ["still here"], "wes");
      await expectPeople(wes, ["ann", "wes"], "ann stays while a tab of hers is open");

      await tab2.close();
      await expectPeople(wes, ["wes"], "ann leaves with her last tab");
    } catch (err) {
      await saveScreenshots("tabs", { wes });
      throw err;
    } finally {
      await killServer(server);
    }
  });
