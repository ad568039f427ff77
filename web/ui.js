// The screens: sign-in, the conversation list and the open conversation. Renders the state of
// a Lanes client (lanes.js) into the DOM and turns input into its calls. All text from the
// network goes through textContent, never innerHTML.

const $ = (id) => document.getElementById(id);
const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🎉"];
const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;

/** Creates an element: h("button", {class: "x", onclick}, "text", child…). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function clock(ts) {
  if (!ts) return "";
  const date = new Date(ts);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

export class Ui {
  constructor(lanes) {
    this.lanes = lanes;
    this.replyTo = null; // seq being answered
    this.editing = null; // seq being edited
    this.reacting = null; // seq whose reaction picker is open
    this.rendered = new Map(); // key -> {el, sig}
    this.frame = 0;
    this.dirty = new Set();
    this.typingSentAt = 0;
    this.bind();
    lanes.addEventListener("change", (e) => this.schedule(e.detail.id));
    lanes.addEventListener("status", () => this.renderStatus());
    lanes.addEventListener("retry", () => this.renderStatus());
    lanes.addEventListener("session", () => this.renderSession());
    lanes.addEventListener("problem", (e) => this.announce(e.detail.message, true));
    lanes.addEventListener("incoming", (e) => {
      const { conversation, message } = e.detail;
      if (conversation.id !== lanes.visible) this.announce(`New message from ${message.sender_id}`);
    });
    document.addEventListener("visibilitychange", () => lanes.markRead());
    window.addEventListener("popstate", () => this.route());
    setInterval(() => this.renderStatus(), 1000);
  }

  // ---- wiring ----------------------------------------------------------------------------

  bind() {
    const lanes = this.lanes;
    $("auth-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const action = event.submitter && event.submitter.value === "register" ? "register" : "login";
      $("auth-error").textContent = "";
      try {
        await lanes.authenticate(action, $("auth-username").value.trim(), $("auth-password").value);
        $("auth-password").value = "";
      } catch (error) {
        $("auth-error").textContent = error.code === "conflict" ? "That username is taken." : error.message;
      }
    });
    $("logout").addEventListener("click", () => lanes.logout());
    $("new-direct").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("list-error").textContent = "";
      try {
        const c = await lanes.direct($("direct-user").value.trim());
        $("direct-user").value = "";
        this.go(c.id);
      } catch (error) {
        $("list-error").textContent = error.code === "not_found" ? "No such user." : error.message;
      }
    });
    $("group-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("list-error").textContent = "";
      const members = $("group-members").value.split(/[\s,]+/).filter(Boolean);
      try {
        const c = await lanes.group($("group-name").value.trim(), members);
        $("group-name").value = $("group-members").value = "";
        $("new-group").open = false;
        this.go(c.id);
      } catch (error) {
        $("list-error").textContent = error.message;
      }
    });
    $("back").addEventListener("click", () => this.go(null));
    $("members-toggle").addEventListener("click", () => {
      const open = $("members").hidden;
      $("members").hidden = !open;
      $("members-toggle").setAttribute("aria-expanded", String(open));
    });
    $("add-member").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("members-error").textContent = "";
      try {
        await lanes.addMember(lanes.visible, $("add-member-user").value.trim());
        $("add-member-user").value = "";
      } catch (error) {
        $("members-error").textContent = error.message;
      }
    });
    $("leave").addEventListener("click", async () => {
      try {
        await lanes.leave(lanes.visible);
        this.go(null);
      } catch (error) {
        $("members-error").textContent = error.message;
      }
    });
    const input = $("composer-input");
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      } else if (event.key === "Escape") {
        this.cancelContext();
      } else if (event.key === "ArrowUp" && !input.value) {
        const c = lanes.conversations.get(lanes.visible);
        const own = c && [...c.msgs.values()].filter((m) => m.sender_id === lanes.me && !m.deleted && m.kind === "message").pop();
        if (own) { event.preventDefault(); this.startEdit(own); }
      }
    });
    input.addEventListener("input", () => {
      this.autosize();
      this.onTyping();
    });
    input.addEventListener("blur", () => this.stopTyping());
    $("composer-cancel").addEventListener("click", () => this.cancelContext());
    $("messages").addEventListener("scroll", () => {
      const box = $("messages");
      if (box.scrollTop < 200) this.older();
      this.stuck = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.reacting !== null) {
        this.reacting = null;
        this.schedule(lanes.visible);
      }
    });
  }

  start() {
    this.renderSession();
    this.route();
  }

  /** Opens a conversation (or the list) and records it in the history, so Back works. */
  go(id) {
    const hash = id ? `#c${id}` : "#";
    if (location.hash !== hash) history.pushState(null, "", hash || location.pathname);
    this.show(id);
  }
  route() {
    const match = /^#c(\d+)$/.exec(location.hash);
    this.show(match ? Number(match[1]) : null);
  }
  show(id) {
    const lanes = this.lanes;
    if (lanes.visible !== id) {
      this.cancelContext();
      this.stopTyping();
      this.reacting = null;
      this.stuck = true;
      $("members").hidden = true;
      $("members-toggle").setAttribute("aria-expanded", "false");
    }
    if (id && lanes.conversations.has(id)) {
      lanes.open(id);
      document.body.classList.add("in-conv");
      this.renderAll();
      $("composer-input").focus();
    } else {
      lanes.visible = null;
      document.body.classList.remove("in-conv");
      this.renderAll();
    }
  }

  announce(text, alert = false) {
    const el = $("announce");
    el.textContent = "";
    setTimeout(() => { el.textContent = text; }, 20);
    if (alert) $("list-error").textContent = text;
  }

  // ---- composer ------------------------------------------------------------------------------

  submit() {
    const lanes = this.lanes;
    const input = $("composer-input");
    const body = input.value.trim();
    const id = lanes.visible;
    if (!id) return;
    if (this.editing !== null) {
      const message = lanes.conversations.get(id).msgs.get(this.editing);
      if (body && message && body !== message.body) lanes.edit(id, this.editing, body);
      else if (!body && message) lanes.remove(id, this.editing);
    } else if (body) {
      lanes.send(id, body, this.replyTo);
    } else {
      return;
    }
    input.value = "";
    this.typingSentAt = 0;
    this.cancelContext();
    this.autosize();
    this.stuck = true;
  }

  cancelContext() {
    if (this.editing !== null) $("composer-input").value = "";
    this.replyTo = null;
    this.editing = null;
    $("composer-context").hidden = true;
    $("composer-send").textContent = "Send";
    this.autosize();
  }

  startReply(message) {
    this.editing = null;
    this.replyTo = message.seq;
    $("composer-context").hidden = false;
    $("composer-context-text").textContent = `Replying to ${message.sender_id}: ${snippet(message)}`;
    $("composer-send").textContent = "Send";
    $("composer-input").focus();
  }

  startEdit(message) {
    this.replyTo = null;
    this.editing = message.seq;
    $("composer-context").hidden = false;
    $("composer-context-text").textContent = "Editing your message (empty it to delete)";
    $("composer-send").textContent = "Save";
    const input = $("composer-input");
    input.value = message.body;
    input.focus();
    this.autosize();
  }

  autosize() {
    const input = $("composer-input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  onTyping() {
    const id = this.lanes.visible;
    if (!id) return;
    if (!$("composer-input").value) { this.stopTyping(); return; }
    const now = Date.now();
    if (now - this.typingSentAt > TYPING_REFRESH_MS) {
      this.typingSentAt = now;
      this.typingIn = id;
      this.lanes.typing(id, "start");
    }
    clearTimeout(this.typingIdle);
    this.typingIdle = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }
  stopTyping() {
    clearTimeout(this.typingIdle);
    if (this.typingSentAt && this.typingIn) this.lanes.typing(this.typingIn, "stop");
    this.typingSentAt = 0;
    this.typingIn = null;
  }

  async older() {
    const lanes = this.lanes;
    const c = lanes.conversations.get(lanes.visible);
    if (!c || !c.loaded || !c.hasMore || c.loading) return;
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    await lanes.loadHistory(c.id);
    this.renderConversation();
    box.scrollTop = box.scrollHeight - fromBottom; // keep what the reader was looking at in place
  }

  // ---- rendering ---------------------------------------------------------------------------

  schedule(id) {
    this.dirty.add(id === null || id === undefined ? "*" : id);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      const dirty = this.dirty;
      this.dirty = new Set();
      this.renderList();
      this.renderStatus();
      if (dirty.has("*") || dirty.has(this.lanes.visible)) this.renderConversation();
    });
  }

  renderAll() {
    this.renderStatus();
    this.renderList();
    this.renderConversation();
  }

  renderSession() {
    const me = this.lanes.me;
    $("auth").hidden = Boolean(me);
    $("main").hidden = !me;
    $("me").textContent = me ? `Signed in as ${me}` : "";
    if (!me) {
      this.rendered.clear();
      $("message-list").replaceChildren();
      $("conv-list").replaceChildren();
      this.listItems?.clear();
      this.membersSig = null;
      $("auth-username").focus();
    }
    this.renderStatus();
  }

  renderStatus() {
    const lanes = this.lanes;
    const el = $("conn");
    const queued = lanes.me ? lanes.outbox.length : 0;
    const texts = {
      online: lanes.transport === "poll" ? "Connected (long-polling)" : "Connected",
      syncing: "Syncing…",
      connecting: "Connecting…",
      offline: "Offline",
    };
    let text = texts[lanes.status] || lanes.status;
    if (queued && lanes.status !== "online") text += ` · ${queued} waiting to send`;
    if (el.textContent !== text) el.textContent = text;
    el.dataset.state = lanes.status;
    el.dataset.transport = lanes.transport;
  }

  title(c) {
    if (c.kind === "group") return c.name || "Group";
    const other = c.members.find((m) => m.user_id !== this.lanes.me);
    return other ? other.user_id : "Direct chat";
  }

  presenceOf(c) {
    if (c.kind !== "direct") return null;
    const other = c.members.find((m) => m.user_id !== this.lanes.me);
    return other ? this.lanes.presence.get(other.user_id) : null;
  }

  renderList() {
    const lanes = this.lanes;
    const list = $("conv-list");
    const conversations = [...lanes.conversations.values()].sort((a, b) => b.activity - a.activity || b.id - a.id);
    $("list-empty").hidden = conversations.length > 0;
    // Each conversation keeps its element: updated in place and moved, never replaced, so a
    // click that lands while a message arrives still reaches the conversation it was aimed at.
    this.listItems ??= new Map();
    const items = conversations.map((c) => {
      let item = this.listItems.get(c.id);
      if (!item) {
        item = h("li", {},
          h("button", { type: "button", class: "conv-item", "data-id": c.id, onclick: () => this.go(c.id) },
            h("span", { "aria-hidden": "true" }),
            h("span", { class: "conv-name" }),
            h("time", { class: "conv-time" }),
            h("span", { class: "conv-last" }),
            h("span", { class: "badge", "aria-hidden": "true" })));
        this.listItems.set(c.id, item);
      }
      const presence = this.presenceOf(c);
      const state = presence ? presence.state : c.kind === "direct" ? "offline" : "group";
      const last = c.last;
      const lastText = last ? `${last.sender_id === lanes.me ? "You" : last.sender_id}: ${last.deleted ? "message deleted" : last.body}` : "No messages yet";
      const button = item.firstChild;
      const [dot, name, time, lastLine, badge] = button.children;
      button.setAttribute("aria-label", `${this.title(c)}${presence ? `, ${state}` : ""}${c.unread ? `, ${c.unread} unread` : ""}, ${lastText}`);
      if (c.id === lanes.visible) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
      dot.className = `dot ${state}`;
      dot.title = state;
      name.textContent = this.title(c);
      time.textContent = last ? clock(last.server_ts) : "";
      lastLine.textContent = lastText;
      badge.hidden = !c.unread;
      badge.textContent = c.unread > 999 ? "999+" : String(c.unread || "");
      return item;
    });
    for (const id of [...this.listItems.keys()]) {
      if (!lanes.conversations.has(id)) this.listItems.delete(id);
    }
    const shown = list.children;
    if (shown.length === items.length && items.every((item, i) => shown[i] === item)) return;
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id : null;
    list.replaceChildren(...items);
    if (focused && list.contains(document.activeElement) === false) {
      const again = list.querySelector(`[data-id="${focused}"]`);
      if (again) again.focus();
    }
  }

  renderConversation() {
    const lanes = this.lanes;
    const c = lanes.conversations.get(lanes.visible);
    $("conv-none").hidden = Boolean(c);
    $("conv-open").hidden = !c;
    if (!c) return;
    $("conv-title").textContent = this.title(c);
    const presence = this.presenceOf(c);
    $("conv-sub").textContent = c.kind === "group" ? `${c.memberCount} members`
      : presence ? (presence.state === "offline" && presence.last_seen ? `last seen ${clock(presence.last_seen)}` : presence.state) : "";
    $("members-toggle").hidden = c.kind !== "group";
    this.renderMembers(c);
    const typers = [...c.typing.keys()];
    $("typing").textContent = typers.length === 0 ? "" : typers.length === 1 ? `${typers[0]} is typing…` : `${typers.join(", ")} are typing…`;
    $("history-state").textContent = c.loading ? "Loading…" : c.loaded && !c.hasMore ? "Beginning of the conversation" : "";

    const box = $("messages");
    const atBottom = this.stuck !== false || box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const list = $("message-list");
    const seqs = [...c.msgs.keys()].sort((a, b) => a - b);
    const wanted = [];
    for (const seq of seqs) wanted.push(this.messageItem(c, c.msgs.get(seq)));
    for (const entry of lanes.pending(c.id)) wanted.push(this.pendingItem(entry, "pending"));
    for (const failed of lanes.failed.filter((f) => f.entry.conversation_id === c.id && f.entry.op === "send")) {
      wanted.push(this.pendingItem(failed.entry, "failed", failed.message));
    }
    // Keep existing elements that did not change, so focus and screen-reader position survive.
    const keep = new Set(wanted);
    for (const child of [...list.children]) if (!keep.has(child)) child.remove();
    wanted.forEach((el, index) => {
      if (list.children[index] !== el) list.insertBefore(el, list.children[index] || null);
    });
    if (atBottom) box.scrollTop = box.scrollHeight;
    // A short first page may not fill the screen; then there is nothing to scroll: load more.
    if (c.loaded && c.hasMore && !c.loading && box.scrollHeight <= box.clientHeight + 10) this.older();
  }

  renderMembers(c) {
    if (c.kind !== "group") return;
    const lanes = this.lanes;
    const myRole = (c.members.find((m) => m.user_id === lanes.me) || {}).role;
    const manager = myRole === "owner" || myRole === "admin";
    $("add-member").hidden = !manager;
    const rows = c.members.map((m) => {
      const presence = m.user_id === lanes.me ? { state: lanes.status === "online" ? "online" : "offline" } : lanes.presence.get(m.user_id);
      const canRemove = manager && m.user_id !== lanes.me && m.role !== "owner" && (myRole === "owner" || m.role === "member");
      return { id: m.user_id, role: m.role, state: presence ? presence.state : "offline", canRemove };
    });
    // Rebuilt only when it shows something else: every message re-renders the conversation, and
    // a "Remove" click must not land on a discarded button.
    const hidden = c.memberCount - c.members.length;
    const sig = JSON.stringify([c.id, rows, hidden]);
    if (this.membersSig === sig) return;
    this.membersSig = sig;
    // A large group's members beyond those listed come a page at a time.
    const more = hidden > 0 ? h("li", {}, h("button", {
      type: "button", class: "link", id: "more-members",
      onclick: () => lanes.moreMembers(c.id).catch((e) => { $("members-error").textContent = e.message; }),
    }, `Show more (${hidden} not shown)`)) : null;
    $("member-list").replaceChildren(...rows.map((m) => h("li", {},
      h("span", { class: `dot ${m.state}`, "aria-hidden": "true" }),
      ` ${m.id} `, m.role !== "member" ? h("span", { class: "role" }, m.role) : null,
      m.canRemove ? h("button", {
        type: "button", class: "link", "aria-label": `Remove ${m.id}`,
        onclick: () => lanes.removeMember(c.id, m.id).catch((e) => { $("members-error").textContent = e.message; }),
      }, "Remove") : null)), ...(more ? [more] : []));
  }

  /** The element of one message, rebuilt only when what it shows changed. */
  cached(key, sig, build) {
    const hit = this.rendered.get(key);
    if (hit && hit.sig === sig) return hit.el;
    const el = build();
    if (hit && hit.el.contains(document.activeElement)) {
      // Move focus to the same control in the new element.
      const label = document.activeElement.getAttribute("aria-label");
      queueMicrotask(() => {
        const again = label && [...el.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === label);
        if (again) again.focus();
      });
    }
    this.rendered.set(key, { el, sig });
    return el;
  }

  tick(c, message) {
    if (message.sender_id !== this.lanes.me || message.kind !== "message") return null;
    const others = c.members.filter((m) => m.user_id !== this.lanes.me);
    let delivered = 0;
    let read = 0;
    for (const m of others) {
      const r = c.receipts.get(m.user_id);
      if (r && r.delivered_seq >= message.seq) delivered++;
      if (r && r.read_seq >= message.seq) read++;
    }
    if (c.kind === "direct" || others.length <= 1) {
      const state = read ? "read" : delivered ? "delivered" : "sent";
      const mark = state === "sent" ? "✓" : "✓✓";
      return { state, text: mark, label: { sent: "Sent", delivered: "Delivered", read: "Read" }[state] };
    }
    if (c.memberCount > (this.lanes.receiptsMembersMax || Infinity)) {
      const label = `Sent; receipts are not shared in groups of more than ${this.lanes.receiptsMembersMax}`;
      return { state: "sent", text: "✓", label };
    }
    const state = read === others.length ? "read" : delivered ? "delivered" : "sent";
    const label = `Sent; delivered to ${delivered} of ${others.length}; read by ${read}`;
    return { state, text: `✓${delivered ? "✓" : ""} ${read}/${others.length}`, label };
  }

  messageItem(c, m) {
    const lanes = this.lanes;
    const mine = m.sender_id === lanes.me;
    const tick = this.tick(c, m);
    const reactions = [...m.reactions.entries()].map(([emoji, users]) => [emoji, [...users].sort()]);
    const quoted = m.reply_to ? c.msgs.get(m.reply_to) : null;
    const sig = JSON.stringify([m.body, m.deleted, m.edited_at, reactions, tick, quoted && [quoted.body, quoted.deleted], this.reacting === m.seq]);
    return this.cached(`${c.id}:${m.seq}`, sig, () => {
      if (m.kind === "system") {
        return h("li", { class: "msg system", "data-seq": m.seq }, h("p", { class: "body" }, m.body));
      }
      const actions = [];
      if (!m.deleted) {
        actions.push(h("button", { type: "button", "aria-label": `Reply to ${m.sender_id}`, onclick: () => this.startReply(m) }, "Reply"));
        actions.push(h("button", {
          type: "button", "aria-label": "React", "aria-expanded": String(this.reacting === m.seq),
          onclick: () => { this.reacting = this.reacting === m.seq ? null : m.seq; this.schedule(c.id); },
        }, "React"));
        if (mine) {
          actions.push(h("button", { type: "button", "aria-label": "Edit", onclick: () => this.startEdit(m) }, "Edit"));
          actions.push(h("button", {
            type: "button", "aria-label": "Delete",
            onclick: () => { if (confirm("Delete this message for everyone?")) lanes.remove(c.id, m.seq); },
          }, "Delete"));
        }
      }
      return h("li", { class: `msg${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}`, "data-seq": m.seq, "data-cmid": m.client_msg_id },
        h("div", { class: "bubble" },
          !mine && c.kind === "group" ? h("span", { class: "sender" }, m.sender_id) : null,
          m.reply_to ? h("p", { class: "quote" }, quoted ? `${quoted.sender_id}: ${snippet(quoted)}` : "a message") : null,
          h("p", { class: "body" }, m.deleted ? "This message was deleted" : m.body),
          reactions.length ? h("ul", { class: "reactions", "aria-label": "Reactions" }, reactions.map(([emoji, users]) =>
            h("li", {}, h("button", {
              type: "button", "aria-pressed": String(users.includes(lanes.me)),
              "aria-label": `${emoji} by ${users.join(", ")}`, title: users.join(", "),
              onclick: () => lanes.react(c.id, m.seq, emoji),
            }, `${emoji} ${users.length}`)))) : null,
          h("p", { class: "meta" },
            !mine && c.kind !== "group" ? h("span", { class: "visually-hidden" }, `${m.sender_id} `) : null,
            mine ? h("span", { class: "visually-hidden" }, "You ") : null,
            h("time", { datetime: new Date(m.server_ts).toISOString() }, clock(m.server_ts)),
            m.edited_at && !m.deleted ? " · edited" : "",
            tick ? h("span", { class: `status ${tick.state}`, "data-status": tick.state, "aria-label": tick.label, title: tick.label }, ` ${tick.text}`) : null)),
        actions.length ? h("div", { class: "actions" }, actions) : null,
        this.reacting === m.seq ? h("div", { class: "picker", role: "group", "aria-label": "Pick a reaction" },
          REACTIONS.map((emoji) => h("button", {
            type: "button", "aria-label": `React ${emoji}`,
            onclick: () => { lanes.react(c.id, m.seq, emoji); this.reacting = null; this.schedule(c.id); },
          }, emoji))) : null);
    });
  }

  pendingItem(entry, state, reason) {
    const label = state === "pending" ? "Waiting to send" : `Not sent: ${reason}`;
    return this.cached(`out:${entry.client_msg_id}`, state, () =>
      h("li", { class: `msg mine ${state}`, "data-cmid": entry.client_msg_id },
        h("div", { class: "bubble" },
          h("p", { class: "body" }, entry.body),
          h("p", { class: "meta" },
            h("span", { class: `status ${state}`, "data-status": state, "aria-label": label, title: label },
              state === "pending" ? "🕓 waiting" : `⚠ ${reason}`)))));
  }
}

function snippet(message) {
  if (message.deleted) return "deleted message";
  return message.body.length > 80 ? `${message.body.slice(0, 80)}…` : message.body;
}
