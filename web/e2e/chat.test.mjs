// End-to-end test of the web client in headless Chromium, against a running `lanes serve`:
// three users in three browser contexts sign up, chat live, go offline and back, and meet in a
// group (one of them with WebSockets blocked, so on long-polling). Asserts on what is on screen.
//
//   node web/e2e/chat.test.mjs http://127.0.0.1:8080
//
// Exits 0 on success, 1 with the failing step on failure. Every wait is bounded. Screenshots go
// to test-artifacts/web/ at the repository root.

import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const BASE = process.argv[2] || process.env.LANES_BASE_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = 10000;
const TOTAL_TIMEOUT_MS = 150000;
const ARTIFACTS = fileURLToPath(new URL("../../test-artifacts/web/", import.meta.url));
const PASSWORD = "correct horse battery";

if (!BASE) {
  console.error("usage: node chat.test.mjs <base url of a running lanes serve>");
  process.exit(2);
}
mkdirSync(ARTIFACTS, { recursive: true });
const started = Date.now();
let step = "start";
const log = (text) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`);
const watchdog = setTimeout(() => {
  console.error(`FAIL: the whole test took longer than ${TOTAL_TIMEOUT_MS} ms (at step: ${step})`);
  process.exit(1);
}, TOTAL_TIMEOUT_MS);

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits until `fn(arg)` is truthy in the page, failing with `what` after STEP_TIMEOUT_MS. */
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: STEP_TIMEOUT_MS, polling: 50 });
  } catch (error) {
    throw new Error(`${page.user}: timed out waiting for ${what}`);
  }
}

/** How many message bodies on screen read exactly `text`. */
function countBodies(page, text) {
  return page.evaluate((text) => [...document.querySelectorAll("#message-list .body")].filter((el) => el.textContent === text).length, text);
}

async function seeMessage(page, text) {
  await until(page, `message "${text}"`, (text) => [...document.querySelectorAll("#message-list .body")].some((el) => el.textContent === text), text);
}

async function statusOf(page, text) {
  return page.evaluate((text) => {
    const body = [...document.querySelectorAll("#message-list .body")].find((el) => el.textContent === text);
    const status = body && body.closest("li").querySelector("[data-status]");
    return status ? status.dataset.status : null;
  }, text);
}

async function waitStatus(page, text, wanted) {
  await until(page, `"${text}" to be ${wanted}`, ([text, wanted]) => {
    const body = [...document.querySelectorAll("#message-list .body")].find((el) => el.textContent === text);
    const status = body && body.closest("li").querySelector("[data-status]");
    return status && status.dataset.status === wanted;
  }, [text, wanted]);
}

async function signUp(page, name) {
  await page.goto(BASE);
  await page.getByLabel("Username").fill(name);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign up" }).click();
  await until(page, "the connection to be up", () => document.getElementById("conn").dataset.state === "online");
}

async function send(page, text) {
  const input = page.getByLabel("Message", { exact: true });
  await input.fill(text);
  await input.press("Enter");
}

async function openConversation(page, title) {
  // The list shows one pane at a time on a phone; the button's accessible name starts with the title.
  await page.locator(".conv-item", { has: page.locator(".conv-name", { hasText: title }) }).first().click();
  await until(page, `conversation "${title}" to open`, (title) => document.getElementById("conv-title").textContent === title, title);
}

async function shot(page, name) {
  await page.screenshot({ path: `${ARTIFACTS}${name}.png` });
}

/** The server's stored history of the visible conversation, read over HTTP with the page's token. */
async function storedBodies(page) {
  return page.evaluate(async () => {
    const { token } = JSON.parse(localStorage.getItem("lanes.session"));
    const id = window.lanes.visible;
    const page = await fetch(`/v1/conversations/${id}/messages?limit=500`, { headers: { authorization: `Bearer ${token}` } });
    return (await page.json()).messages.filter((m) => m.kind === "message").map((m) => m.body);
  });
}

async function main() {
  step = "launch chromium";
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: 30000,
  });
  try {
    await scenario(browser);
  } finally {
    await browser.close();
  }
}

async function scenario(browser) {
  const wide = { viewport: { width: 1100, height: 720 } };
  const phone = { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };
  const pages = {};
  const problems = [];
  for (const [user, options] of [["alice", wide], ["bob", phone], ["carol", wide]]) {
    const context = await browser.newContext(options);
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    if (user === "carol") {
      // A network that refuses WebSockets: carol's client must fall back to long-polling.
      await context.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
    }
    const page = await context.newPage();
    page.user = user;
    page.on("pageerror", (error) => problems.push(`${user}: uncaught ${error.message}`));
    page.on("console", (message) => {
      // Failed connections while offline are expected; a policy violation or a script error is not.
      if (message.type() === "error" && /Content Security Policy|TypeError|ReferenceError|SyntaxError/.test(message.text())) {
        problems.push(`${user}: console: ${message.text()}`);
      }
    });
    page.on("dialog", (dialog) => dialog.accept());
    pages[user] = page;
  }
  const { alice, bob, carol } = pages;

  step = "sign up";
  await alice.goto(BASE);
  await until(alice, "the sign-in form", () => !document.getElementById("auth").hidden);
  await shot(alice, "01-sign-in");
  await signUp(alice, "alice");
  await signUp(bob, "bob");
  await signUp(carol, "carol");
  log("three users signed up");
  const carolTransport = await carol.evaluate(() => document.getElementById("conn").textContent);
  assert(carolTransport === "Connected (long-polling)", `carol should be long-polling, shows "${carolTransport}"`);
  log("carol fell back to long-polling");

  step = "start a direct chat";
  await alice.getByLabel("Chat with").fill("bob");
  await alice.getByRole("button", { name: "Start" }).click();
  await until(alice, "the chat with bob", () => document.getElementById("conv-title").textContent === "bob");
  await send(alice, "Hi Bob! 👋");
  await seeMessage(alice, "Hi Bob! 👋");
  await until(bob, "the new chat in bob's list with an unread badge",
    () => [...document.querySelectorAll(".conv-item")].some((el) => el.textContent.includes("Hi Bob!") && el.querySelector(".badge")?.textContent === "1"));
  await shot(bob, "02-phone-list");
  await until(alice, "bob's presence dot to turn online", () => document.querySelector(".conv-item .dot.online") !== null);

  step = "live messages, typing, read ticks";
  await openConversation(bob, "alice");
  await seeMessage(bob, "Hi Bob! 👋");
  await waitStatus(alice, "Hi Bob! 👋", "read");
  await bob.getByLabel("Message", { exact: true }).pressSequentially("Hey", { delay: 20 });
  await until(alice, "bob is typing", () => document.getElementById("typing").textContent === "bob is typing…");
  await bob.getByLabel("Message", { exact: true }).press("Enter");
  await seeMessage(alice, "Hey");
  await until(alice, "the typing line to clear", () => document.getElementById("typing").textContent === "");
  await waitStatus(bob, "Hey", "read");
  log("live delivery, typing and read ticks");

  step = "reply, react, edit, delete";
  await send(alice, "Lunch at noon?");
  await seeMessage(bob, "Lunch at noon?");
  const lunch = bob.locator("#message-list li", { has: bob.locator(".body", { hasText: /^Lunch at noon\?$/ }) });
  await lunch.getByRole("button", { name: "Reply to alice" }).click();
  await send(bob, "Yes, see you there");
  await until(alice, "the reply with its quote", () => [...document.querySelectorAll("#message-list li")]
    .some((li) => li.querySelector(".body")?.textContent === "Yes, see you there" && li.querySelector(".quote")?.textContent === "alice: Lunch at noon?"));
  const yes = alice.locator("#message-list li", { has: alice.locator(".body", { hasText: /^Yes, see you there$/ }) });
  await yes.getByRole("button", { name: "React", exact: true }).click();
  await yes.getByRole("button", { name: "React 👍" }).click();
  await until(bob, "alice's 👍", () => [...document.querySelectorAll(".reactions button")].some((b) => b.textContent === "👍 1"));
  const noon = alice.locator("#message-list li", { has: alice.locator(".body", { hasText: /^Lunch at noon\?$/ }) });
  await noon.getByRole("button", { name: "Edit" }).click();
  const aliceInput = alice.getByLabel("Message", { exact: true });
  await aliceInput.fill("Lunch at one?");
  await aliceInput.press("Enter");
  await seeMessage(bob, "Lunch at one?");
  await until(bob, "the edited mark", () => [...document.querySelectorAll("#message-list li")]
    .some((li) => li.querySelector(".body")?.textContent === "Lunch at one?" && li.querySelector(".meta").textContent.includes("edited")));
  await send(alice, "oops, wrong chat");
  await seeMessage(bob, "oops, wrong chat");
  await alice.locator("#message-list li", { has: alice.locator(".body", { hasText: /^oops, wrong chat$/ }) }).getByRole("button", { name: "Delete" }).click();
  await until(bob, "the deleted message's tombstone", () => [...document.querySelectorAll("#message-list .body")].some((el) => el.textContent === "This message was deleted"));
  assert((await countBodies(bob, "oops, wrong chat")) === 0, "bob still shows the deleted text");
  await shot(alice, "03-chat");
  await shot(bob, "04-phone-chat");
  log("reply, reaction, edit and delete reached the other side");

  step = "offline and back";
  await bob.context().setOffline(true);
  await until(bob, "the offline state", () => document.getElementById("conn").dataset.state === "offline");
  await send(alice, "Are you there?");
  await seeMessage(alice, "Are you there?");
  await waitStatus(alice, "Are you there?", "sent");
  await send(bob, "Written in a tunnel");
  await seeMessage(bob, "Written in a tunnel");
  assert((await statusOf(bob, "Written in a tunnel")) === "pending", "bob's offline message should be pending");
  await until(bob, "the waiting-to-send count", () => document.getElementById("conn").textContent.includes("1 waiting to send"));
  await shot(bob, "05-phone-offline");
  // Reload while offline is not possible; instead prove the outbox is stored: it survives in localStorage.
  const stored = await bob.evaluate(() => window.lanes.outbox.map((entry) => entry.body));
  assert(stored.length === 1 && stored[0] === "Written in a tunnel", `bob's outbox: ${JSON.stringify(stored)}`);
  assert((await countBodies(alice, "Written in a tunnel")) === 0, "alice saw bob's message while bob was offline");
  await bob.context().setOffline(false);
  await seeMessage(bob, "Are you there?");
  await seeMessage(alice, "Written in a tunnel");
  await waitStatus(bob, "Written in a tunnel", "read");
  await waitStatus(alice, "Are you there?", "read");
  await until(bob, "the connection to be up", () => document.getElementById("conn").dataset.state === "online");
  for (const page of [alice, bob]) {
    for (const text of ["Are you there?", "Written in a tunnel", "Hey", "Hi Bob! 👋"]) {
      const count = await countBodies(page, text);
      assert(count === 1, `${page.user} shows "${text}" ${count} times`);
    }
  }
  const bodies = await storedBodies(alice);
  assert(JSON.stringify(bodies) === JSON.stringify(["Hi Bob! 👋", "Hey", "Lunch at one?", "Yes, see you there", "", "Are you there?", "Written in a tunnel"]),
    `stored history: ${JSON.stringify(bodies)}`);
  log("offline and back: both sides converged, nothing lost or doubled");

  step = "a group with a long-polling member";
  await alice.getByText("New group").click();
  await alice.getByLabel("Group name").fill("Team");
  await alice.getByLabel("Members (comma separated)").fill("bob");
  await alice.getByRole("button", { name: "Create group" }).click();
  await until(alice, "the group to open", () => document.getElementById("conv-title").textContent === "Team");
  await alice.getByRole("button", { name: "Members" }).click();
  await alice.getByLabel("Add member").fill("carol");
  await alice.getByRole("button", { name: "Add", exact: true }).click();
  await until(alice, "carol in the member list", () => document.getElementById("member-list").textContent.includes("carol"));
  await until(alice, "the member count", () => document.getElementById("conv-sub").textContent === "3 members");
  await until(carol, "the group in carol's list", () => [...document.querySelectorAll(".conv-name")].some((el) => el.textContent === "Team"));
  // A list entry is updated in place when a message arrives, not replaced: a click aimed at it
  // while the list re-renders must not land on a discarded element.
  const teamItem = await carol.evaluateHandle(() => [...document.querySelectorAll(".conv-item")]
    .find((el) => el.querySelector(".conv-name").textContent === "Team"));
  await send(alice, "Welcome to the team");
  await until(carol, "the group's last message in carol's list", () => [...document.querySelectorAll(".conv-item")]
    .some((el) => el.querySelector(".conv-name").textContent === "Team" && el.querySelector(".conv-last").textContent.includes("Welcome to the team")));
  assert(await teamItem.evaluate((el) => el.isConnected && el.querySelector(".conv-last").textContent.includes("Welcome to the team")),
    "carol's list replaced the group's entry instead of updating it");
  await openConversation(carol, "Team");
  await seeMessage(carol, "Welcome to the team");
  // Likewise the member list is not rebuilt when a message arrives.
  const removeCarol = await alice.evaluateHandle(() => document.querySelector('#member-list button[aria-label="Remove carol"]'));
  await send(carol, "Thanks! (from a network without WebSockets)");
  await seeMessage(alice, "Thanks! (from a network without WebSockets)");
  assert(await removeCarol.evaluate((el) => el !== null && el.isConnected), "alice's member list was rebuilt by a message");
  await bob.getByRole("button", { name: "Back to conversations" }).click();
  await openConversation(bob, "Team");
  await seeMessage(bob, "Thanks! (from a network without WebSockets)");
  await seeMessage(bob, "Welcome to the team");
  await until(alice, "group read counts", () => [...document.querySelectorAll("#message-list li")]
    .some((li) => li.querySelector(".body")?.textContent === "Welcome to the team" && li.querySelector("[data-status]")?.textContent.trim() === "✓✓ 2/2"));
  // Both transports learn where groups stop sharing everyone's receipts (the server's default);
  // past it, alice's own messages show a plain "sent" tick, not counts the server never sends.
  for (const [page, who] of [[alice, "alice (WebSocket)"], [carol, "carol (long-polling)"]]) {
    const max = await page.evaluate(() => window.lanes.receiptsMembersMax);
    assert(max === 100, `${who} was told receipts_members_max ${max}`);
  }
  await alice.evaluate(() => { window.lanes.receiptsMembersMax = 2; });
  await carol.getByLabel("Message", { exact: true }).pressSequentially("typing over HTTP", { delay: 10 });
  await until(alice, "carol is typing", () => document.getElementById("typing").textContent === "carol is typing…");
  await carol.getByLabel("Message", { exact: true }).press("Enter");
  await seeMessage(bob, "typing over HTTP");
  await seeMessage(alice, "typing over HTTP");
  await until(alice, "a plain sent tick past receipts_members_max", () => [...document.querySelectorAll("#message-list li")]
    .some((li) => li.querySelector(".body")?.textContent === "Welcome to the team"
      && li.querySelector("[data-status]")?.textContent.trim() === "✓"
      && li.querySelector("[data-status]")?.getAttribute("aria-label") === "Sent; receipts are not shared in groups of more than 2"));
  await alice.evaluate(() => { window.lanes.receiptsMembersMax = 100; });
  await shot(alice, "06-group");
  log("group of three, one on long-polling");

  step = "rare delivery receipts in a large group";
  // With receipts_members_max at 2, a new group of three is large: alice's client confirms
  // delivery there at most every 30 s (1 s elsewhere), although the messages come 1.6 s apart
  // and she is not looking at the group. (Large groups share one wait: if the group above was
  // confirmed while it counted as large, even the first waits.)
  await alice.evaluate(() => {
    window.lanes.receiptsMembersMax = 2;
    window.receivedCalls = [];
    const marker = window.lanes.marker.bind(window.lanes);
    window.lanes.marker = (kind, id, seq) => {
      if (kind === "received") window.receivedCalls.push({ id, seq });
      marker(kind, id, seq);
    };
  });
  const crowd = await carol.evaluate(async () => {
    const { token } = JSON.parse(localStorage.getItem("lanes.session"));
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const group = await (await fetch("/v1/conversations/group", { method: "POST", headers, body: JSON.stringify({ name: "Crowd", members: ["alice", "bob"] }) })).json();
    for (let i = 1; i <= 3; i++) {
      if (i > 1) await new Promise((resolve) => setTimeout(resolve, 1600));
      const body = JSON.stringify({ client_msg_id: `crowd-${i}`, body: `crowd ${i}` });
      const answer = await fetch(`/v1/conversations/${group.conversation_id}/messages`, { method: "POST", headers, body });
      if (!answer.ok) throw new Error(`post ${i}: ${answer.status}`);
    }
    return group.conversation_id;
  });
  await until(alice, "the large group's third message", (id) => window.lanes.conversations.get(id)?.cursor === 3, crowd);
  await alice.waitForTimeout(300);
  const crowdCalls = await alice.evaluate((id) => window.receivedCalls.filter((call) => call.id === id), crowd);
  assert(crowdCalls.length <= 1,
    `alice confirmed ${JSON.stringify(crowdCalls)} in a large group`);
  await alice.evaluate(() => { window.lanes.receiptsMembersMax = 100; });
  log(`large group confirmed ${crowdCalls.length} time(s) for 3 messages`);

  step = "members joining and leaving a group, live";
  // Alice adds dave to the team and removes him again; bob's client hears both (`member_added`,
  // `member_removed`) and shows the group's new member count without a reload.
  const teamCount = (page, count) => until(page, `the team counted at ${count}`,
    (count) => [...window.lanes.conversations.values()].some((c) => c.name === "Team" && c.memberCount === count), count);
  await teamCount(bob, 3);
  await alice.evaluate(async (key) => {
    const admin = { authorization: `Bearer ${key}`, "content-type": "application/json" };
    const created = await fetch("/v1/admin/users", { method: "POST", headers: admin, body: JSON.stringify({ user_id: "dave" }) });
    if (created.status !== 201) throw new Error(`user dave: ${created.status}`);
    const team = [...window.lanes.conversations.values()].find((c) => c.name === "Team");
    const { token } = JSON.parse(localStorage.getItem("lanes.session"));
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const added = await fetch(`/v1/conversations/${team.id}/members`, { method: "POST", headers, body: JSON.stringify({ user_id: "dave" }) });
    if (added.status !== 204) throw new Error(`add dave: ${added.status}`);
  }, process.env.LANES_ADMIN_KEY);
  await teamCount(bob, 4);
  await alice.evaluate(async () => {
    const team = [...window.lanes.conversations.values()].find((c) => c.name === "Team");
    const { token } = JSON.parse(localStorage.getItem("lanes.session"));
    const removed = await fetch(`/v1/conversations/${team.id}/members/dave`, { method: "DELETE", headers: { authorization: `Bearer ${token}` } });
    if (removed.status !== 204) throw new Error(`remove dave: ${removed.status}`);
  });
  await teamCount(bob, 3);
  log("bob saw dave join the team and leave it");

  step = "members of a large group, a page at a time";
  // A conversation names at most 100 members; the rest come from the members endpoint on request.
  const adminKey = process.env.LANES_ADMIN_KEY;
  assert(adminKey, "LANES_ADMIN_KEY is not set");
  // Made with 100 members (not large: the server's receipts_members_max is 100), then grown
  // to 101: the add that crosses the bound tells alice's client that the group is large now.
  const hundred = await alice.evaluate(async (key) => {
    const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
    const users = [];
    for (let i = 0; i < 100; i++) {
      const user_id = `crowd${String(i).padStart(3, "0")}`;
      const answer = await fetch("/v1/admin/users", { method: "POST", headers, body: JSON.stringify({ user_id }) });
      if (answer.status !== 201) throw new Error(`user ${user_id}: ${answer.status}`);
      users.push(user_id);
    }
    const body = JSON.stringify({ kind: "group", name: "Hundred", owner: "alice", members: users.slice(0, 99) });
    const group = await fetch("/v1/admin/conversations", { method: "POST", headers, body });
    if (group.status !== 201) throw new Error(`group: ${group.status}`);
    return (await group.json()).conversation_id;
  }, adminKey);
  await until(alice, "the group of 100 joined", (id) => window.lanes.conversations.has(id), hundred);
  assert(!(await alice.evaluate((id) => window.lanes.large.has(id), hundred)), "a group of 100 is not large");
  await alice.evaluate(async ([key, id]) => {
    const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
    const answer = await fetch(`/v1/admin/conversations/${id}/members`, { method: "POST", headers, body: JSON.stringify({ user_id: "crowd099" }) });
    if (answer.status !== 204) throw new Error(`add: ${answer.status}`);
  }, [adminKey, hundred]);
  await until(alice, "the server naming the grown group large", (id) => window.lanes.large.has(id), hundred);
  await until(alice, "the large group in alice's list", () => [...document.querySelectorAll(".conv-name")].some((el) => el.textContent === "Hundred"));
  await openConversation(alice, "Hundred");
  await until(alice, "the member count", () => document.getElementById("conv-sub").textContent === "101 members");
  await alice.getByRole("button", { name: "Members" }).click();
  await until(alice, "100 members listed and a button for the rest", () => document.querySelectorAll("#member-list li").length === 101
    && document.getElementById("more-members")?.textContent === "Show more (1 not shown)");
  await alice.locator("#more-members").click();
  await until(alice, "all 101 members listed", () => document.querySelectorAll("#member-list li").length === 101 && !document.getElementById("more-members"));
  const listed = await alice.evaluate(() => [...document.querySelectorAll("#member-list li")].map((li) => li.textContent.trim().split(" ")[0]));
  assert(new Set(listed).size === 101 && listed.includes("crowd099") && listed.includes("alice"), `listed: ${listed.join(", ")}`);
  // Alice removes one: the group is within the bound again, which `member_removed` (sent only
  // in such groups) tells her client.
  await alice.evaluate(async (id) => {
    const { token } = JSON.parse(localStorage.getItem("lanes.session"));
    const removed = await fetch(`/v1/conversations/${id}/members/crowd099`, { method: "DELETE", headers: { authorization: `Bearer ${token}` } });
    if (removed.status !== 204) throw new Error(`remove crowd099: ${removed.status}`);
  }, hundred);
  await until(alice, "the group of 100 again, not large", (id) => !window.lanes.large.has(id)
    && window.lanes.conversations.get(id)?.memberCount === 100, hundred);
  log("a group grown to 101: named large, 100 members listed, the rest on request; back to 100: not large");

  step = "history with infinite scroll";
  // 120 messages from carol to alice, posted over HTTP before alice opens the chat. Alice's
  // client confirms their delivery as they arrive, but at most once a second.
  await alice.evaluate(() => { window.receivedCalls = []; });
  const { conversationId, postingMs } = await carol.evaluate(async () => {
    const { token } = JSON.parse(localStorage.getItem("lanes.session"));
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const direct = await (await fetch("/v1/conversations/direct", { method: "POST", headers, body: JSON.stringify({ user_id: "alice" }) })).json();
    const start = Date.now();
    for (let i = 1; i <= 120; i++) {
      const body = JSON.stringify({ client_msg_id: `scroll-${i}`, body: `history ${String(i).padStart(3, "0")}` });
      const answer = await fetch(`/v1/conversations/${direct.conversation_id}/messages`, { method: "POST", headers, body });
      if (!answer.ok) throw new Error(`post ${i}: ${answer.status}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    return { conversationId: direct.conversation_id, postingMs: Date.now() - start };
  });
  await until(alice, "delivery of all 120 confirmed", (id) => window.receivedCalls.some((call) => call.id === id && call.seq === 120), conversationId);
  const confirmations = await alice.evaluate((id) => window.receivedCalls.filter((call) => call.id === id).length, conversationId);
  assert(confirmations <= 2 + Math.floor(postingMs / 1000),
    `alice confirmed delivery ${confirmations} times for 120 messages that arrived over ${postingMs} ms`);
  try {
    await until(alice, "the unread count from carol", () => [...document.querySelectorAll(".conv-item")]
      .some((el) => el.querySelector(".conv-name").textContent === "carol" && el.querySelector(".badge")?.textContent === "120"));
  } catch (error) {
    const list = await alice.evaluate(() => [...document.querySelectorAll(".conv-item")].map((el) => el.textContent).join(" | "));
    throw new Error(`${error.message}; the list shows: ${list}`);
  }
  // A reload resumes the session from localStorage and starts from the list's heads, so the
  // history comes page by page from the server rather than from what arrived live.
  await alice.reload();
  await until(alice, "the connection to be up after a reload", () => document.getElementById("conn").dataset.state === "online");
  await until(alice, "the unread count after the reload", () => [...document.querySelectorAll(".conv-item")]
    .some((el) => el.querySelector(".conv-name").textContent === "carol" && el.querySelector(".badge")?.textContent === "120"));
  await openConversation(alice, "carol");
  await seeMessage(alice, "history 120");
  const shown = await alice.evaluate(() => document.querySelectorAll("#message-list .body").length);
  assert(shown < 120, `the first page should not hold all 120 messages (shows ${shown})`);
  for (let i = 0; i < 20; i++) {
    if ((await countBodies(alice, "history 001")) === 1) break;
    await alice.evaluate(() => { document.getElementById("messages").scrollTop = 0; });
    await alice.waitForTimeout(150);
  }
  await seeMessage(alice, "history 001");
  await until(alice, "the start of the conversation", () => document.getElementById("history-state").textContent === "Beginning of the conversation");
  const all = await alice.evaluate(() => [...document.querySelectorAll("#message-list .body")].map((el) => el.textContent));
  const expected = Array.from({ length: 120 }, (_, i) => `history ${String(i + 1).padStart(3, "0")}`);
  assert(JSON.stringify(all) === JSON.stringify(expected), `history on screen is not 001..120 in order: ${all.length} items`);
  log("scrolled back through 120 messages, in order, none twice");

  step = "keyboard";
  await alice.getByRole("button", { name: /^bob/ }).focus();
  await alice.keyboard.press("Enter");
  await until(alice, "the chat with bob by keyboard", () => document.getElementById("conv-title").textContent === "bob");
  await until(alice, "the composer focused", () => document.activeElement === document.getElementById("composer-input"));
  await alice.keyboard.type("draft");
  await alice.keyboard.press("Escape");
  log("keyboard navigation");
  assert(problems.length === 0, `errors in the pages:\n${problems.join("\n")}`);
}

main().then(() => {
  clearTimeout(watchdog);
  log("PASS");
  process.exit(0);
}, (error) => {
  clearTimeout(watchdog);
  console.error(`FAIL at step "${step}": ${error.stack || error.message}`);
  process.exit(1);
});
