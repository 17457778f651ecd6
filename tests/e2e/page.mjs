// What the end-to-end tests do with a page of the chat demo: join, say, and wait for
// what the page shows (messages, connection state, people).
import assert from "node:assert/strict";

export const WAIT = 15_000;

/** Opens the demo at `base` (e.g. `http://HOST/` or `http://HOST/hub/NAME/`) and joins. */
export async function joinAs(page, base, name, room) {
  const q = new URLSearchParams({ name, room });
  await page.goto(`${base}?${q}`, { timeout: WAIT });
  await page.waitForSelector('body[data-ready="1"]', { state: "attached" });
  await page.click('#join button[type="submit"]');
  await page.waitForSelector("#chat", { state: "visible" });
}

export async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The messages on screen, in order. */
export function shown(page) {
  return page.$$eval("#messages li.msg", (els) => els.map((e) => ({
    id: e.dataset.id,
    from: e.dataset.from,
    text: e.querySelector(".text").textContent,
    status: e.dataset.status ?? null,
  })));
}

/** Waits until the page shows exactly `texts` (in order); fails with what it shows. */
export async function expectTexts(page, texts, label) {
  try {
    await page.waitForFunction((want) => {
      const got = [...document.querySelectorAll("#messages li.msg .text")].map((e) => e.textContent);
      return JSON.stringify(got) === JSON.stringify(want);
    }, texts, { timeout: WAIT });
  } catch {
    const got = (await shown(page)).map((m) => m.text);
    assert.deepEqual(got, texts, `${label}: messages on screen`);
  }
}

export async function expectState(page, state) {
  await page.waitForSelector(`#conn[data-state="${state}"]`, { state: "attached" });
}

/** Waits until the people list is exactly `names` (fresh, not the pre-restart one). */
export async function expectPeople(page, names, label) {
  try {
    await page.waitForFunction((want) => {
      const list = document.querySelector(".people");
      const got = [...list.querySelectorAll("li")].map((li) => li.dataset.user).sort();
      return !list.classList.contains("stale") && JSON.stringify(got) === JSON.stringify(want);
    }, [...names].sort(), { timeout: WAIT });
  } catch {
    const got = await page.$$eval("#people li", (els) => els.map((e) => e.textContent));
    assert.fail(`${label}: people list is ${JSON.stringify(got)}, want ${names}`);
  }
}
