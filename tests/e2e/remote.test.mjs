// The chat demo against a server someone else started (the Cloudflare worker under
// `wrangler dev`, from worker/worker_tests.bash): two Chromium pages join one room on the
// hub at ROOMCAST_E2E_BASE (e.g. http://127.0.0.1:PORT/hub/e2e/), see each other, and
// chat; every line shows exactly once, in order, on both pages. Skipped without the
// variable (the native server has its own, stronger test in chat.test.mjs).
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { launchBrowser, openPage, saveScreenshots } from "./harness.mjs";
import { expectPeople, expectState, expectTexts, joinAs, say, shown } from "./page.mjs";

const BASE = process.env.ROOMCAST_E2E_BASE;
let browser;

after(async () => {
  await browser?.close();
});

test("two pages chat through a running server", { skip: !BASE && "ROOMCAST_E2E_BASE not set", timeout: 90_000 }, async () => {
  browser = await launchBrowser();
  const a = await openPage(browser);
  const b = await openPage(browser);
  const room = `e2e-${Date.now()}`;
  try {
    await joinAs(a, BASE, "ann", room);
    await joinAs(b, BASE, "bob", room);
    await expectState(a, "open");
    await expectState(b, "open");
    await expectPeople(a, ["ann", "bob"], "A");
    await expectPeople(b, ["ann", "bob"], "B");
    const all = [];
    for (const [page, text] of [[a, "hello from the edge"], [b, "hi ann"], [a, "durable objects!"]]) {
      await say(page, text);
      all.push(text);
      await expectTexts(a, all, "A");
      await expectTexts(b, all, "B");
    }
    for (const [label, page] of [["A", a], ["B", b]]) {
      const ids = (await shown(page)).map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, `${label}: an id shown twice`);
      assert.deepEqual(page.problems, [], `${label}: errors in the page`);
    }
  } catch (err) {
    await saveScreenshots("remote", { A: a, B: b });
    throw err;
  }
});
