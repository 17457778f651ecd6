// Shared pieces of the end-to-end tests: the real `roomcast` server as a child process,
// and headless Chromium driven by playwright-core (which never downloads a browser: the
// Debian one at /usr/bin/chromium is used).
import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const ARTIFACTS = path.join(ROOT, "tests/artifacts/browser");
export const BIN = process.env.ROOMCAST_BIN ?? path.join(ROOT, "target/debug/roomcast");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const live = new Set();

/** Kills whatever server a test left behind (also if this process is killed or crashes). */
export function killAllServers() {
  for (const proc of live) proc.kill("SIGKILL");
}
process.on("exit", killAllServers);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.once(sig, () => {
    killAllServers();
    process.exit(128 + (sig === "SIGTERM" ? 15 : 2));
  });
}

/**
 * Starts `roomcast --bind BIND --www www --history 100 EXTRA...` and resolves once it prints
 * `listening on http://ADDR`. Its stderr goes to tests/artifacts/browser/NAME.log.
 */
export function startServer(bind, name, extraArgs = [], timeoutMs = 20_000) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const log = createWriteStream(path.join(ARTIFACTS, `${name}.log`));
  const args = ["--bind", bind, "--www", path.join(ROOT, "www"), "--history", "100", ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  live.add(proc);
  proc.stderr.pipe(log);
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => {
    live.delete(proc);
    resolve({ code, signal });
  }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`${BIN} ${args.join(" ")}: no "listening on" line in ${timeoutMs} ms`));
    }, timeoutMs);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`roomcast exited (${code ?? signal}) before it was ready; see ${name}.log`));
    });
    createInterface({ input: proc.stdout }).on("line", (line) => {
      log.write(`[stdout] ${line}\n`);
      const m = /^listening on http:\/\/(\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolve({ proc, addr: m[1], exited });
      }
    });
  });
}

/** SIGKILL (no goodbye to the clients, like a crash) and wait until it is gone. */
export async function killServer(server) {
  if (server.proc.exitCode === null && server.proc.signalCode === null) {
    server.proc.kill("SIGKILL");
  }
  await server.exited;
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/** A page in its own context (own localStorage) that records console errors. */
export async function openPage(browser, viewport = { width: 1000, height: 720 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    // refused connections while the server is down are expected; anything else is not
    if (m.type() === "error" && !/^WebSocket connection to .* failed/.test(m.text())) {
      page.problems.push(`console: ${m.text()}`);
    }
  });
  return page;
}

/** Screenshots for a failed test, named after it. */
export async function saveScreenshots(label, pages) {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    const file = path.join(ARTIFACTS, `${label}-${name}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5_000 });
      console.error(`screenshot: ${file}`);
    } catch (e) {
      console.error(`no screenshot of ${name}: ${e.message}`);
    }
    if (page.problems?.length) console.error(`${name} page problems:\n  ${page.problems.join("\n  ")}`);
  }
}
