// The chat page and the operator's dashboard in a real headless Chromium, against the real
// server on a loopback port. Screenshots go to target/e2e-screenshots/.
//
//   bash tests/e2e/run.sh

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const root = resolve(import.meta.dirname, "../..");
const bin = process.env.E2E_ROOMLOG_BIN ?? join(root, "target/debug/roomlog");
const shots = join(root, "target/e2e-screenshots");
const dir = mkdtempSync(join(tmpdir(), "roomlog-e2e-"));
const data = join(dir, "data");
const timeout = 15_000;
let server, addr, browser;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts the server on `listen` and waits (bounded) for the address it writes. */
async function start(listen) {
  const addrFile = join(data, "roomlog.addr");
  rmSync(addrFile, { force: true });
  server = spawn(bin, ["serve", "--config", join(dir, "roomlog.toml"), "--listen", listen, "--data", data], {
    stdio: ["ignore", "ignore", "inherit"],
    // Thresholds no disk reaches: how full the machine's disk is must not decide this test.
    env: {
      ...process.env,
      ROOMLOG_LOG: "warn",
      ROOMLOG_DISK__WARNING: "1.0",
      ROOMLOG_DISK__CRITICAL: "1.0",
      ROOMLOG_DISK__DANGER: "1.0",
    },
  });
  for (let i = 0; i < 600; i++) {
    if (existsSync(addrFile)) {
      const text = readFileSync(addrFile, "utf8").trim();
      if (text) return text;
    }
    await sleep(50);
  }
  throw new Error("the server did not write its address within 30 s");
}

async function stop(signal = "SIGKILL") {
  const exited = new Promise((r) => server.once("exit", r));
  server.kill(signal);
  await exited;
}

async function shot(page, name) {
  mkdirSync(shots, { recursive: true });
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** A chat page signed in as `name`, in `room`. */
async function chatPage(name, room) {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  await page.goto(`http://${addr}/`);
  await page.getByLabel("Name").fill(name);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#status.online").waitFor();
  if (room) await joinRoom(page, room);
  return page;
}

async function joinRoom(page, room) {
  await page.getByLabel("Room to join").fill(room);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await page.locator(`#rooms button[aria-current="true"]`, { hasText: room }).waitFor();
}

async function say(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByRole("button", { name: "Send" }).click();
}

/** Bodies of the messages the page shows, in order. */
const bodies = (page) => page.locator("#list .msg:not(.pending) .body").allTextContents();

async function waitForBody(page, text) {
  await page.locator("#list .msg:not(.pending) .body", { hasText: text }).first().waitFor();
}

before(async () => {
  mkdirSync(data, { recursive: true });
  // Retention gives the dashboard's dry run something to list; names without tokens may chat.
  writeFileSync(join(dir, "roomlog.toml"), '[auth]\nanonymous = "write"\nadmin_from_host = true\n[limits]\nframes_per_second = 0\n[retention.rooms.archive]\nmax_messages = 50\n');
  addr = await start("127.0.0.1:0");
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--autoplay-policy=no-user-gesture-required"],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) await stop();
  rmSync(dir, { recursive: true, force: true });
});

test("two pages chat with each other", async () => {
  const ann = await chatPage("ann", "lobby");
  const bob = await chatPage("bob", "lobby");
  await say(ann, "hello from ann");
  await waitForBody(bob, "hello from ann");
  await say(bob, "hi ann, bob here");
  await waitForBody(ann, "hi ann, bob here");
  assert.deepEqual(await bodies(ann), ["hello from ann", "hi ann, bob here"]);
  assert.deepEqual(await bodies(bob), ["hello from ann", "hi ann, bob here"]);
  await shot(bob, "chat");
  await ann.close();
  await bob.close();
});

/** A token for `user`, signed with the running server's secret by `roomlog token issue`. */
const issueToken = (user) =>
  execFileSync(bin, ["token", "issue", "--config", join(dir, "roomlog.toml"), "--data", data, "--user", user, "--rooms", "*"], {
    encoding: "utf8",
  }).trim();

test("a token alone connects, and its user is the author even when a name is typed too", async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  await page.goto(`http://${addr}/`);
  await page.getByLabel("Name").fill("");
  await page.getByLabel("Token").fill(issueToken("carol"));
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#status.online").waitFor();
  assert.equal(await page.locator("#status").textContent(), "online as carol");
  await joinRoom(page, "tokens");
  await say(page, "from carol's token");
  await waitForBody(page, "from carol's token");
  assert.deepEqual(await page.locator("#list .msg:not(.pending) .who").allTextContents(), ["carol"]);

  // A name and a token: the token's user is used, and the page says so rather than silently.
  await page.getByLabel("Name").fill("mallory");
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#status.online", { hasText: "the token's user" }).waitFor();
  assert.match(await page.locator("#status").textContent(), /^online as carol \(the token's user/);
  await say(page, "still carol");
  await waitForBody(page, "still carol");
  assert.deepEqual(await page.locator("#list .msg:not(.pending) .who").allTextContents(), ["carol", "carol"]);
  await page.close();
});

test("with neither a name nor a token the page asks for one", async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  await page.goto(`http://${addr}/`);
  await page.getByLabel("Name").fill("");
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#status", { hasText: "enter a name, or paste a token" }).waitFor();
  await page.close();
});

/** The members list of a page as "user ×count" strings, once it has `n` entries. */
async function members(page, n) {
  await page.locator("#members li").nth(n - 1).waitFor();
  return page.locator("#members li").evaluateAll((lis) => lis.map((li) => li.textContent));
}

test("the page lists who is in the room, with their connections", async () => {
  const ann = await chatPage("ann", "team");
  const bob = await chatPage("bob", "team");
  assert.deepEqual(await members(bob, 2), ["ann×1", "bob×1"]);
  const annAgain = await chatPage("ann", "team"); // a second tab of ann's
  await annAgain.locator("#members li", { hasText: "ann×2" }).waitFor();
  assert.deepEqual(await members(annAgain, 2), ["ann×2", "bob×1"]);
  await shot(annAgain, "members");
  await annAgain.close();
  await ann.close();
  await bob.close();
});

test("after a server restart the page reconnects and shows every message once", async () => {
  const ann = await chatPage("ann", "restart");
  const bob = await chatPage("bob", "restart");
  await say(ann, "before the restart");
  await waitForBody(bob, "before the restart");

  await stop("SIGKILL");
  await ann.locator("#status.offline").waitFor();
  await say(ann, "sent while offline");
  await ann.locator("#list .msg.pending .body", { hasText: "sent while offline" }).waitFor();
  await shot(ann, "chat-offline");

  await start(addr); // the same address: the pages reconnect to it by themselves
  await ann.locator("#status.online").waitFor({ timeout: 30_000 });
  await bob.locator("#status.online").waitFor({ timeout: 30_000 });
  await waitForBody(bob, "sent while offline");
  await say(bob, "after the restart");
  await waitForBody(ann, "after the restart");
  const expected = ["before the restart", "sent while offline", "after the restart"];
  assert.deepEqual(await bodies(ann), expected, "ann sees each message once, in order");
  assert.deepEqual(await bodies(bob), expected, "bob too");
  assert.equal(await ann.locator("#list .msg.pending").count(), 0, "nothing left unacknowledged");
  await ann.close();
  await bob.close();
});

test("a search hit opens its message in context", async () => {
  const ann = await chatPage("ann", "archive");
  // 60 messages: the one searched for is older than what a join replays (the newest 50).
  await ann.evaluate(() => {
    for (let i = 0; i < 60; i++) window.send({ type: "send", room: "archive", body: `archived note ${i} ${i === 3 ? "needle" : "hay"}`, client_id: `a${i}` });
  });
  await waitForBody(ann, "archived note 59");
  const bob = await chatPage("bob", "lobby");
  await bob.getByLabel("Search", { exact: true }).fill("needle");
  let hit;
  for (let i = 0; i < 50; i++) { // the index trails the log by up to half a second
    await bob.getByRole("button", { name: "Search", exact: true }).click();
    hit = bob.locator("#results .hit-link").first();
    if (await hit.count()) break;
    await sleep(200);
  }
  assert.match(await hit.innerHTML(), /<b>needle<\/b>/);
  await hit.click();
  const opened = bob.locator("#list .msg.hit .body");
  await opened.waitFor();
  assert.equal(await opened.textContent(), "archived note 3 needle");
  await waitForBody(bob, "archived note 59");
  const shown = await bodies(bob);
  const from = shown.indexOf("archived note 3 needle");
  assert.deepEqual(
    shown.slice(from),
    Array.from({ length: 57 }, (_, i) => `archived note ${i + 3} ${i === 0 ? "needle" : "hay"}`),
    "the hit in its context: everything after it, without a gap",
  );
  assert.equal(await bob.locator(`#rooms button[aria-current="true"]`).textContent(), "archive");
  await shot(bob, "search-hit");
  await ann.close();
  await bob.close();
});

/** A 0.25 s 440 Hz tone as a 16-bit mono WAV. */
function wav() {
  const rate = 8000, n = 2000, bytes = Buffer.alloc(44 + n * 2);
  bytes.write("RIFF", 0); bytes.writeUInt32LE(36 + n * 2, 4); bytes.write("WAVEfmt ", 8);
  bytes.writeUInt32LE(16, 16); bytes.writeUInt16LE(1, 20); bytes.writeUInt16LE(1, 22);
  bytes.writeUInt32LE(rate, 24); bytes.writeUInt32LE(rate * 2, 28); bytes.writeUInt16LE(2, 32); bytes.writeUInt16LE(16, 34);
  bytes.write("data", 36); bytes.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) bytes.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)), 44 + i * 2);
  return bytes;
}

test("an uploaded audio clip plays back on the other page", async () => {
  const ann = await chatPage("ann", "media");
  const bob = await chatPage("bob", "media");
  const clip = wav();
  await ann.getByLabel("Attach a file").setInputFiles({ name: "tone.wav", mimeType: "audio/wav", buffer: clip });
  await say(ann, "listen to this");
  await waitForBody(bob, "listen to this");
  const audio = bob.locator("#list .msg audio").first();
  await audio.waitFor();
  const src = await audio.getAttribute("src");
  const served = await bob.evaluate(async (src) => [...new Uint8Array(await (await fetch(src)).arrayBuffer())], src);
  assert.deepEqual(Buffer.from(served), clip, "the same bytes come back");
  const played = await audio.evaluate(async (el) => {
    await el.play();
    await new Promise((r) => setTimeout(r, 400));
    return { duration: el.duration, time: el.currentTime, error: el.error?.code ?? null };
  });
  assert.equal(played.error, null);
  assert.ok(Math.abs(played.duration - 0.25) < 0.05, `duration ${played.duration}`);
  assert.ok(played.time > 0, `playback advanced to ${played.time}`);
  await shot(bob, "audio");
  await ann.close();
  await bob.close();
});

test("the dashboard shows the disk gauge and a dry-run plan", async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  await page.goto(`http://${addr}/admin`);
  await page.locator("#gauge path").first().waitFor();
  const state = await page.locator("#disk-state").textContent();
  assert.ok(["healthy", "warning", "critical", "danger"].includes(state), state);
  assert.match(await page.locator("#gauge").getAttribute("aria-label"), /^disk \d+ percent used/);
  await page.locator("#sessions tr").nth(1).waitFor();
  await page.getByRole("button", { name: "Dry run (what would go)" }).click();
  const planned = page.locator("#plan-table tr", { hasText: "retention.rooms.archive.max_messages" });
  await planned.waitFor();
  assert.equal(await planned.locator("td").nth(1).textContent(), "10", "60 archive messages, 50 kept");
  await shot(page, "dashboard");
  await page.close();
});
