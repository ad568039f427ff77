// The protocol client: session, the WebSocket link (or long-polling when WebSockets are
// blocked), cursors, the outbox of unacked lane events, dedupe by (conversation, seq) and the
// state of each conversation. It speaks only docs/PROTOCOL.md and knows nothing of the DOM.

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
const PING_EVERY_MS = 15000;
const DEAD_AFTER_MS = 40000;
const POLL_TIMEOUT_MS = 25000;
const WELCOME_TIMEOUT_MS = 10000;
const TYPING_SHOWN_MS = 7000;
const HISTORY_PAGE = 50;
const INFLIGHT_MAX = 200;
const RECEIPTS_INTERVAL_MS = 1000; // `received` at most this often (see scheduleReceipts)
const RECEIPTS_INTERVAL_LARGE_MS = 30000; // the same in large conversations (see isLarge)
// An error naming one of these codes means nothing was stored and a retry fails the same way;
// anything else (storage_unavailable, internal, a lost connection) is retried with the same id.
const DEFINITE = new Set(["message_too_large", "invalid_field", "not_found", "bad_frame", "forbidden", "conflict", "payload_too_large"]);

export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

/** A client id: ≤ 64 visible ASCII characters, unique per sender. */
export function newClientMsgId() {
  const id = globalThis.crypto && crypto.randomUUID ? crypto.randomUUID()
    : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `w-${id}`;
}

function backoff(attempt) {
  // Full jitter: a random delay up to the exponential ceiling, so that clients cut off together
  // do not come back together.
  return Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
}

export class Lanes extends EventTarget {
  constructor(storage = localStorage, base = location.origin) {
    super();
    this.storage = storage;
    this.base = base;
    this.session = this.load("session", null);
    this.conversations = new Map();
    this.presence = new Map();
    this.status = "offline"; // offline | connecting | syncing | online
    this.transport = "ws"; // ws | poll
    this.visible = null; // the conversation on screen
    this.failed = []; // lane events refused for good: {entry, message}
    this.link = 0; // generation of the current link; older callbacks check it and stop
    this.attempt = 0;
    this.wsFailures = 0;
    this.ws = null;
    this.timers = {};
    this.epoch = null;
    this.receivedSent = new Map();
    this.readSent = new Map();
    this.onOnline = () => { this.attempt = 0; this.connect(); };
    this.onOffline = () => { this.drop(); this.setStatus("offline"); };
  }

  // ---- storage -------------------------------------------------------------------------

  key(name) {
    return name === "session" ? "lanes.session" : `lanes.${this.session ? this.session.user_id : "-"}.${name}`;
  }
  load(name, fallback) {
    try {
      const text = this.storage.getItem(this.key(name));
      return text == null ? fallback : JSON.parse(text);
    } catch {
      return fallback;
    }
  }
  save(name, value) {
    try {
      this.storage.setItem(this.key(name), JSON.stringify(value));
    } catch {
      // Storage full or disabled: the session still works, it just does not survive a reload.
    }
  }
  get me() {
    return this.session && this.session.user_id;
  }
  get outbox() {
    return this.load("outbox", []);
  }
  set outbox(entries) {
    this.save("outbox", entries);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
  changed(id) {
    this.emit("change", { id });
  }
  setStatus(status) {
    if (this.status !== status) {
      this.status = status;
      this.emit("status", { status, transport: this.transport });
    }
  }

  // ---- HTTP ------------------------------------------------------------------------------

  async http(method, path, body, signal) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.session) headers.authorization = `Bearer ${this.session.token}`;
    const response = await fetch(this.base + path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let value = null;
    try { value = text ? JSON.parse(text) : null; } catch { value = null; }
    if (!response.ok) {
      if (response.status === 401 && this.session) this.expire();
      throw new HttpError(response.status, value);
    }
    return value;
  }

  async authenticate(action, username, password) {
    const session = await this.http("POST", `/v1/${action}`, { username, password });
    this.session = { user_id: session.user_id, token: session.token };
    this.save("session", this.session);
    await this.start();
  }
  async logout() {
    const session = this.session;
    this.stop();
    if (session) {
      fetch(`${this.base}/v1/logout`, { method: "POST", headers: { authorization: `Bearer ${session.token}` } }).catch(() => {});
    }
    this.storage.removeItem("lanes.session");
    this.session = null;
    this.emit("session", { user_id: null });
  }
  expire() {
    this.stop();
    this.storage.removeItem("lanes.session");
    this.session = null;
    this.emit("session", { user_id: null, expired: true });
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async start() {
    this.emit("session", { user_id: this.me });
    this.conversations.clear();
    const [list, health] = await Promise.all([
      this.http("GET", "/v1/conversations"),
      this.http("GET", "/healthz"),
    ]);
    const stored = this.load("epoch", null) === health.epoch ? this.load("cursors", {}) : {};
    this.epoch = health.epoch;
    for (const summary of list.conversations) {
      const c = this.upsert(summary);
      // A page load starts from the list's heads: the list carries what it shows, and a
      // conversation's history is fetched when it is opened.
      c.cursor = Math.max(stored[c.id] || 0, c.head);
    }
    this.saveCursors();
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    this.changed(null);
    this.connect();
  }

  stop() {
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    this.drop();
    clearTimeout(this.timers.reconnect);
    this.link++;
    this.setStatus("offline");
  }

  /** Ends the current link (socket or poll) without scheduling anything. */
  drop() {
    this.link++;
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.reconnect);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
    if (this.pollAbort) this.pollAbort.abort();
  }

  scheduleReconnect() {
    clearTimeout(this.timers.reconnect);
    if (!this.session) return;
    if (!navigator.onLine) {
      this.setStatus("offline");
      return;
    }
    const delay = backoff(this.attempt++);
    this.setStatus("connecting");
    this.emit("retry", { at: Date.now() + delay });
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  connect() {
    this.drop();
    if (!this.session) return;
    if (!navigator.onLine) {
      this.setStatus("offline");
      return;
    }
    this.setStatus("connecting");
    if (this.transport === "poll") this.pollLoop(this.link);
    else this.openSocket(this.link);
  }

  openSocket(link) {
    const url = this.base.replace(/^http/, "ws") + "/v1/ws";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.socketFailed(link, false);
      return;
    }
    this.ws = ws;
    let welcomed = false;
    let lastFrame = Date.now();
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "hello", token: this.session.token, cursors: this.cursorList(), epoch: this.epoch }));
    };
    // A proxy may accept the upgrade and then pass nothing: no welcome in time counts as refused.
    const welcomeDeadline = setTimeout(() => {
      if (!welcomed && link === this.link) { try { ws.close(); } catch { /* ignore */ } }
    }, WELCOME_TIMEOUT_MS);
    ws.onmessage = (event) => {
      if (link !== this.link) return;
      lastFrame = Date.now();
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.type === "welcome") {
        welcomed = true;
        clearTimeout(welcomeDeadline);
        this.wsFailures = 0;
      }
      if (!welcomed && frame.type === "error" && frame.code === "unauthorized") {
        this.expire();
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = () => {
      if (link !== this.link) return;
      this.ws = null;
      this.socketFailed(link, welcomed);
    };
    this.timers.ping = setInterval(() => {
      if (Date.now() - lastFrame > DEAD_AFTER_MS) {
        // Nothing heard for too long: the connection is dead even if the socket has not noticed.
        ws.onclose = null;
        try { ws.close(); } catch { /* ignore */ }
        if (link === this.link) { this.ws = null; this.socketFailed(link, true); }
        return;
      }
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping", request_id: "hb" }));
    }, PING_EVERY_MS);
  }

  async socketFailed(link, welcomed) {
    clearInterval(this.timers.ping);
    if (!welcomed && navigator.onLine) {
      this.wsFailures++;
      // Twice refused before a welcome while plain HTTP works: a proxy or firewall is blocking
      // WebSockets, so long-polling takes over (same cursors, nothing lost or repeated).
      if (this.wsFailures >= 2) {
        try {
          await this.http("GET", "/healthz");
          if (link !== this.link) return;
          this.transport = "poll";
          this.connect();
          return;
        } catch {
          // The server itself is unreachable: keep trying the WebSocket.
        }
      }
    }
    if (link === this.link) this.scheduleReconnect();
  }

  async pollLoop(link) {
    let first = true;
    while (link === this.link && this.session) {
      const abort = new AbortController();
      this.pollAbort = abort;
      let page;
      try {
        page = await this.http("POST", "/v1/events", {
          cursors: this.cursorList(), epoch: this.epoch, timeout_ms: first ? 0 : POLL_TIMEOUT_MS, sync: first,
        }, abort.signal);
      } catch (error) {
        if (link !== this.link) return;
        this.scheduleReconnect();
        return;
      }
      if (link !== this.link) return;
      if (first) this.onFrame({ type: "welcome", user_id: page.user_id, epoch: page.epoch, receipts_members_max: page.receipts_members_max });
      for (const event of page.events) this.onFrame(event);
      for (const cursor of page.cursors) {
        const c = this.conversations.get(cursor.conversation_id);
        if (c && cursor.seq > c.cursor) c.cursor = cursor.seq;
      }
      this.saveCursors();
      if (first) {
        this.onFrame({ type: "synced", large: page.large });
        first = false;
      }
      this.scheduleReceipts();
    }
  }

  cursorList() {
    return [...this.conversations.values()]
      .filter((c) => c.cursor > 0)
      .sort((a, b) => b.activity - a.activity)
      .slice(0, 5000)
      .map((c) => ({ conversation_id: c.id, seq: c.cursor }));
  }
  saveCursors() {
    const cursors = {};
    for (const c of this.conversations.values()) if (c.cursor) cursors[c.id] = c.cursor;
    this.save("cursors", cursors);
    this.save("epoch", this.epoch);
  }

  // ---- frames --------------------------------------------------------------------------

  onFrame(frame) {
    switch (frame.type) {
      case "welcome":
        if (this.epoch && frame.epoch !== this.epoch) this.newEpoch();
        this.epoch = frame.epoch;
        // Past this many members the server shares only our own receipt positions.
        if (frame.receipts_members_max) this.receiptsMembersMax = frame.receipts_members_max;
        this.setStatus("syncing");
        break;
      case "synced":
        this.attempt = 0;
        this.setStatus("online");
        this.receivedSent.clear();
        this.readSent.clear();
        this.large = new Set(frame.large || []);
        // A new connection confirms at once (large conversations after a drawn wait).
        this.receiptsNotBefore = { ordinary: 0, large: 0 };
        this.largeWaited = false;
        this.flushOutbox();
        this.watchPresence();
        this.markRead();
        this.scheduleReceipts();
        this.flushReceipts();
        break;
      case "message":
        this.ingest(frame, true);
        this.scheduleReceipts(this.conversations.get(frame.conversation_id));
        break;
      case "ack":
        this.onAck(frame, this.transport === "ws");
        break;
      case "receipts": {
        const c = this.conversations.get(frame.conversation_id);
        if (!c) break;
        for (const r of frame.receipts) {
          const old = c.receipts.get(r.user_id) || { delivered_seq: 0, read_seq: 0 };
          c.receipts.set(r.user_id, {
            delivered_seq: Math.max(old.delivered_seq, r.delivered_seq || 0),
            read_seq: Math.max(old.read_seq, r.read_seq || 0),
          });
          if (r.user_id === this.me && (r.read_seq || 0) > c.readSeq) {
            // Read on another device.
            c.readSeq = r.read_seq;
            if (c.readSeq >= c.lastSeq) c.unread = 0;
          }
        }
        this.changed(c.id);
        break;
      }
      case "typing": {
        const c = this.conversations.get(frame.conversation_id);
        if (!c || frame.user_id === this.me) break;
        if (frame.state === "start") c.typing.set(frame.user_id, Date.now() + TYPING_SHOWN_MS);
        else c.typing.delete(frame.user_id);
        this.changed(c.id);
        clearTimeout(this.timers.typing);
        this.timers.typing = setTimeout(() => this.expireTyping(), TYPING_SHOWN_MS + 100);
        break;
      }
      case "presence":
        for (const user of frame.users) this.presence.set(user.user_id, user);
        this.changed(null);
        break;
      case "joined":
        if (frame.large && this.large) this.large.add(frame.conversation_id);
        this.refreshConversation(frame.conversation_id);
        break;
      case "large": // a group grew past receipts_members_max: its count and members changed
        if (this.large) this.large.add(frame.conversation_id);
        this.refreshConversation(frame.conversation_id);
        break;
      case "member_added": // someone else joined or left a group (groups up to the bound)
      case "member_removed": {
        // Sent only in groups within receipts_members_max: one that was large is not any more.
        if (this.large) this.large.delete(frame.conversation_id);
        // Applied here rather than refetched: every member online would ask at once.
        const c = this.conversations.get(frame.conversation_id);
        const owner = c?.members.find((m) => m.role === "owner");
        if (!c || (frame.type === "member_removed" && owner?.user_id === frame.user_id)) {
          // Unknown here, or the owner left and handed the group on: the view has the roles.
          this.refreshConversation(frame.conversation_id);
          break;
        }
        c.members = c.members.filter((m) => m.user_id !== frame.user_id);
        if (frame.type === "member_added") c.members.push({ user_id: frame.user_id, role: frame.role });
        c.memberCount = Math.max(frame.member_count, c.members.length);
        if (c.id === this.visible) this.watchPresence();
        this.changed(c.id);
        break;
      }
      case "left":
        this.conversations.delete(frame.conversation_id);
        if (this.visible === frame.conversation_id) this.visible = null;
        this.saveCursors();
        this.changed(null);
        break;
      case "error":
        this.onError(frame);
        break;
      default:
        break; // pong, and frames a newer server may add
    }
  }

  expireTyping() {
    const now = Date.now();
    for (const c of this.conversations.values()) {
      for (const [user, until] of c.typing) if (until <= now) { c.typing.delete(user); this.changed(c.id); }
    }
  }

  newEpoch() {
    // The server's store changed: cursors and seqs from before mean nothing now.
    for (const c of this.conversations.values()) {
      Object.assign(c, emptyLane(), { cursor: 0 });
      c.receipts.clear();
    }
  }

  upsert(summary) {
    let c = this.conversations.get(summary.conversation_id);
    if (!c) {
      c = { id: summary.conversation_id, cursor: 0, receipts: new Map(), typing: new Map(), kind: "group", name: "", members: [], ...emptyLane() };
      this.conversations.set(c.id, c);
    }
    c.kind = summary.kind;
    c.name = summary.name;
    c.members = summary.members || [];
    // A conversation names at most 100 members of a group (moreMembers pages the rest).
    c.memberCount = Math.max(summary.member_count || 0, c.members.length);
    c.head = Math.max(c.head, summary.head_seq || 0);
    // The count covers everything up to the summary's head; messages at or below it (still in
    // flight when the summary was read) are not counted again, and a summary older than what
    // was already counted (two refreshes answered out of order) changes nothing.
    if (c.id !== this.visible && (summary.head_seq || 0) >= (c.unreadThrough || 0)) {
      c.unread = summary.unread_count || 0;
      c.unreadThrough = summary.head_seq || 0;
    }
    c.readSeq = Math.max(c.readSeq, summary.read_seq || 0);
    c.activity = Math.max(c.activity, summary.last_message ? summary.last_message.server_ts : summary.created_at || 0);
    if (summary.last_message && (!c.last || summary.last_message.seq >= c.last.seq)) c.last = { ...summary.last_message };
    return c;
  }

  async refreshConversation(id) {
    try {
      const summary = await this.http("GET", `/v1/conversations/${id}`);
      this.upsert(summary);
      this.watchPresence();
      this.changed(null);
      return this.conversations.get(id);
    } catch {
      return null;
    }
  }

  /** Applies one lane event. Returns false for a seq already held. */
  ingest(event, live, stateSeq = 0) {
    let c = this.conversations.get(event.conversation_id);
    if (!c) {
      // A conversation the list does not know yet (joined on another path): learn it.
      this.upsert({ conversation_id: event.conversation_id, kind: "group", members: [] });
      c = this.conversations.get(event.conversation_id);
      this.refreshConversation(c.id);
    }
    if (live && event.seq > c.cursor) {
      c.cursor = event.seq;
      this.saveCursorsSoon();
    }
    if (c.seen.has(event.seq)) return false;
    c.seen.add(event.seq);
    const mine = event.sender_id === this.me;
    if (mine) this.settle(event.client_msg_id);
    const fresh = event.seq > c.head;
    c.head = Math.max(c.head, event.seq);
    if (event.kind === "message" || event.kind === "system") {
      c.msgs.set(event.seq, {
        ...event,
        reactions: new Map((event.reactions || []).map((r) => [r.emoji, new Set(r.user_ids)])),
        stateSeq: Math.max(stateSeq, event.seq),
      });
      c.lastSeq = Math.max(c.lastSeq, event.seq);
      if (event.kind === "message") {
        if (!c.last || event.seq >= c.last.seq) c.last = { ...event };
        c.activity = Math.max(c.activity, event.server_ts);
        c.typing.delete(event.sender_id);
        const unreadNow = fresh && !mine && event.seq > c.readSeq;
        const visible = this.visible === c.id && document.visibilityState === "visible";
        // Counted once, whichever way it came (live, or caught up after a join or reconnect),
        // unless the last conversation summary already counted it.
        if (unreadNow && !visible && event.seq > (c.unreadThrough || 0)) {
          c.unread++;
          c.unreadThrough = event.seq;
        }
        if (live && unreadNow) {
          if (visible) this.markReadSoon();
          this.emit("incoming", { conversation: c, message: event });
        }
      }
    } else {
      const target = c.msgs.get(event.target_seq);
      // Events older than the state a message was read with are already part of it.
      if (target && event.seq > target.stateSeq) {
        target.stateSeq = event.seq;
        if (event.kind === "edit") {
          target.body = event.body;
          target.edited_at = event.server_ts;
        } else if (event.kind === "delete") {
          target.deleted = true;
          target.body = "";
          target.reactions.clear();
        } else if (event.kind === "reaction_add") {
          if (!target.reactions.has(event.emoji)) target.reactions.set(event.emoji, new Set());
          target.reactions.get(event.emoji).add(event.sender_id);
        } else if (event.kind === "reaction_remove") {
          const users = target.reactions.get(event.emoji);
          if (users) { users.delete(event.sender_id); if (!users.size) target.reactions.delete(event.emoji); }
        }
        target.version = (target.version || 0) + 1;
      }
      if (c.last && c.last.seq === event.target_seq && (event.kind === "edit" || event.kind === "delete")) {
        c.last = { ...c.last, body: event.kind === "edit" ? event.body : "", deleted: event.kind === "delete" };
      }
    }
    this.changed(c.id);
    return true;
  }

  saveCursorsSoon() {
    if (this.timers.cursors) return;
    this.timers.cursors = setTimeout(() => { this.timers.cursors = null; this.saveCursors(); }, 300);
  }

  // ---- history ---------------------------------------------------------------------------

  /** Loads the newest page (first call) or the page before the oldest loaded message. */
  async loadHistory(id) {
    const c = this.conversations.get(id);
    if (!c || c.loading || (c.loaded && !c.hasMore)) return;
    c.loading = true;
    this.changed(id);
    try {
      const before = c.loaded ? `before=${c.oldest}&` : "";
      const page = await this.http("GET", `/v1/conversations/${id}/messages?${before}limit=${HISTORY_PAGE}`);
      const stateSeq = Math.max(c.head, ...page.messages.map((m) => m.seq));
      for (const event of page.messages) {
        this.ingest(event, false, stateSeq);
        c.oldest = Math.min(c.oldest || Infinity, event.seq);
      }
      c.hasMore = page.has_more;
      if (!page.messages.length) c.oldest = c.oldest || 1;
      c.loaded = true;
    } catch (error) {
      this.emit("problem", { message: `Could not load history: ${error.message}` });
    } finally {
      c.loading = false;
      this.changed(id);
    }
  }

  // ---- receipts ----------------------------------------------------------------------------

  /** Confirms delivery soon (a burst is confirmed once), then at most once per
   *  RECEIPTS_INTERVAL_MS (RECEIPTS_INTERVAL_LARGE_MS in large conversations: isLarge): one
   *  confirmation per message would have a busy group's members send the server a frame for
   *  nearly every message they receive. Each wait is lengthened by up to half of it at random,
   *  so that a group's members do not confirm in step; in large ones a
   *  position that finds the wait over (after a quiet time, or a reconnect) waits a random part
   *  of an interval first, so that their members do not all confirm the same message at once
   *  (the SDK's ReceiptPacer::spreading). */
  scheduleReceipts(only) {
    if (!this.receiptsNotBefore) return;
    const now = Date.now();
    let due = Infinity;
    // One conversation's arrival looks at that conversation only.
    for (const c of only ? [only] : this.conversations.values()) {
      if (!this.unconfirmed(c)) continue;
      const kind = this.receiptsClass(c);
      if (kind === "large" && !this.largeWaited) {
        if (this.receiptsNotBefore.large <= now) this.receiptsNotBefore.large = now + RECEIPTS_INTERVAL_LARGE_MS * Math.random();
        this.largeWaited = true;
      }
      due = Math.min(due, this.receiptsNotBefore[kind]);
    }
    const at = Math.max(now + 100, due);
    // A timer set for a large conversation's turn must not hold back an ordinary one's.
    if (due === Infinity || (this.timers.receipts && this.receiptsTimerAt <= at)) return;
    clearTimeout(this.timers.receipts);
    this.receiptsTimerAt = at;
    this.timers.receipts = setTimeout(() => { this.timers.receipts = null; this.flushReceipts(); }, at - Date.now());
  }

  /** Large conversations (the server's `synced`, `joined` or `large` said so, or more members than
   *  `receipts_members_max`): a delivered position there is shown to no one live, so it is
   *  confirmed at most every RECEIPTS_INTERVAL_LARGE_MS (as the Rust SDK does). */
  isLarge(c) {
    return (this.large && this.large.has(c.id)) || c.memberCount > (this.receiptsMembersMax || Infinity);
  }

  receiptsClass(c) { return this.isLarge(c) ? "large" : "ordinary"; }

  /** Whether the link holds more of `c` than was confirmed or read. */
  unconfirmed(c) {
    return c.cursor > (this.receivedSent.get(c.id) || 0) && c.cursor > (this.readSent.get(c.id) || 0);
  }

  /** Confirms delivery of what the link holds, in each class whose wait is over (only seqs the
   *  link has are named); what must still wait gets a timer. */
  flushReceipts() {
    if (this.status !== "online" || !this.receiptsNotBefore) return;
    const now = Date.now();
    const sent = new Set();
    for (const c of this.conversations.values()) {
      const kind = this.receiptsClass(c);
      if (this.unconfirmed(c) && this.receiptsNotBefore[kind] <= now) {
        this.receivedSent.set(c.id, c.cursor);
        this.marker("received", c.id, c.cursor);
        sent.add(kind);
      }
    }
    for (const kind of sent) {
      const interval = kind === "large" ? RECEIPTS_INTERVAL_LARGE_MS : RECEIPTS_INTERVAL_MS;
      this.receiptsNotBefore[kind] = now + interval * (1 + Math.random() / 2);
    }
    if (sent.has("large")) this.largeWaited = false;
    this.scheduleReceipts();
  }

  markReadSoon() {
    if (this.timers.read) return;
    this.timers.read = setTimeout(() => { this.timers.read = null; this.markRead(); }, 50);
  }

  /** Marks the visible conversation read up to what this link holds. */
  markRead() {
    const c = this.conversations.get(this.visible);
    if (!c || document.visibilityState !== "visible") return;
    if (c.unread) { c.unread = 0; this.changed(c.id); }
    c.readSeq = Math.max(c.readSeq, c.cursor);
    if (this.status !== "online" || !c.cursor || c.cursor <= (this.readSent.get(c.id) || 0)) return;
    this.readSent.set(c.id, c.cursor);
    this.marker("read", c.id, c.cursor);
  }

  marker(kind, id, seq) {
    if (this.transport === "ws") this.frame({ type: kind, conversation_id: id, seq });
    else this.http("POST", `/v1/conversations/${id}/${kind}`, { seq }).catch(() => {});
  }

  frame(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // ---- typing and presence ---------------------------------------------------------------

  typing(id, state) {
    if (this.status !== "online") return;
    if (this.transport === "ws") this.frame({ type: "typing", conversation_id: id, state });
    else this.http("POST", `/v1/conversations/${id}/typing`, { state }).catch(() => {});
  }

  watchPresence() {
    if (this.status !== "online" && this.status !== "syncing") return;
    const users = new Set();
    for (const c of this.conversations.values()) {
      if (c.kind === "direct" || c.id === this.visible) {
        for (const m of c.members) if (m.user_id !== this.me) users.add(m.user_id);
      }
    }
    const user_ids = [...users].slice(0, 256);
    if (this.transport === "ws") {
      this.frame({ type: "watch_presence", user_ids });
    } else if (user_ids.length) {
      // Polls carry no presence: ask now and then.
      this.http("GET", `/v1/presence?user_ids=${user_ids.map(encodeURIComponent).join(",")}`)
        .then((answer) => this.onFrame({ type: "presence", users: answer.users }))
        .catch(() => {});
      clearTimeout(this.timers.presence);
      this.timers.presence = setTimeout(() => this.watchPresence(), 30000);
    }
  }

  // ---- lane events out: the outbox ----------------------------------------------------------

  send(id, body, replyTo) {
    const entry = { op: "send", client_msg_id: newClientMsgId(), conversation_id: id, body, created_at: Date.now() };
    if (replyTo) entry.reply_to = replyTo;
    this.enqueue(entry);
    this.typing(id, "stop");
  }
  edit(id, seq, body) {
    this.enqueue({ op: "edit", client_msg_id: newClientMsgId(), conversation_id: id, target_seq: seq, body });
  }
  remove(id, seq) {
    this.enqueue({ op: "delete", client_msg_id: newClientMsgId(), conversation_id: id, target_seq: seq });
  }
  react(id, seq, emoji) {
    const c = this.conversations.get(id);
    const users = c && c.msgs.get(seq) && c.msgs.get(seq).reactions.get(emoji);
    const remove = Boolean(users && users.has(this.me));
    this.enqueue({ op: "react", client_msg_id: newClientMsgId(), conversation_id: id, target_seq: seq, emoji, remove });
  }

  /** Stored before it is sent, so that a reload or a lost connection retries it with its id. */
  enqueue(entry) {
    this.outbox = [...this.outbox, entry];
    this.changed(entry.conversation_id);
    this.flushOutbox();
  }

  pending(id) {
    return this.outbox.filter((entry) => entry.conversation_id === id && entry.op === "send");
  }

  /** Removes an outbox entry once its event is known to be stored. */
  settle(clientMsgId) {
    const entries = this.outbox;
    const rest = entries.filter((entry) => entry.client_msg_id !== clientMsgId);
    if (rest.length !== entries.length) this.outbox = rest;
    return entries.find((entry) => entry.client_msg_id === clientMsgId);
  }

  flushOutbox() {
    if (this.status !== "online") return;
    if (this.transport === "poll") {
      this.flushOverHttp();
      return;
    }
    this.sentOnLink = this.sentOnLink && this.sentOnLink.link === this.link ? this.sentOnLink : { link: this.link, ids: new Set() };
    for (const entry of this.outbox) {
      if (this.sentOnLink.ids.has(entry.client_msg_id)) continue;
      if (this.sentOnLink.ids.size >= INFLIGHT_MAX) break;
      const frame = { type: entry.op === "delete" ? "delete" : entry.op, client_msg_id: entry.client_msg_id, conversation_id: entry.conversation_id };
      if (entry.body !== undefined) frame.body = entry.body;
      if (entry.reply_to) frame.reply_to = entry.reply_to;
      if (entry.target_seq) frame.target_seq = entry.target_seq;
      if (entry.emoji) { frame.emoji = entry.emoji; if (entry.remove) frame.remove = true; }
      if (!this.frame(frame)) break;
      this.sentOnLink.ids.add(entry.client_msg_id);
    }
  }

  async flushOverHttp() {
    if (this.flushing) return;
    this.flushing = true;
    const link = this.link;
    try {
      for (;;) {
        const entry = this.outbox[0];
        if (!entry || link !== this.link) return;
        const base = `/v1/conversations/${entry.conversation_id}/messages`;
        let ack;
        try {
          if (entry.op === "send") ack = await this.http("POST", base, { client_msg_id: entry.client_msg_id, body: entry.body, reply_to: entry.reply_to });
          else if (entry.op === "edit") ack = await this.http("POST", `${base}/${entry.target_seq}/edit`, { client_msg_id: entry.client_msg_id, body: entry.body });
          else if (entry.op === "delete") ack = await this.http("POST", `${base}/${entry.target_seq}/delete`, { client_msg_id: entry.client_msg_id });
          else ack = await this.http("POST", `${base}/${entry.target_seq}/reactions`, { client_msg_id: entry.client_msg_id, emoji: entry.emoji, remove: entry.remove });
        } catch (error) {
          if (error instanceof HttpError && DEFINITE.has(error.code)) {
            this.onError({ type: "error", code: error.code, message: error.message, request_id: entry.client_msg_id });
            continue;
          }
          return; // unknown outcome: the entry stays and is retried with its id after reconnecting
        }
        this.onAck({ type: "ack", ...ack }, false);
      }
    } finally {
      this.flushing = false;
    }
  }

  onAck(ack, onLink) {
    const entry = this.settle(ack.client_msg_id);
    const c = this.conversations.get(ack.conversation_id);
    if (!c) return;
    // The ack takes its event's place in the conversation's order on this connection.
    if (onLink && ack.seq > c.cursor) { c.cursor = ack.seq; this.saveCursorsSoon(); }
    if (!entry) { this.changed(c.id); return; }
    const kind = { send: "message", edit: "edit", delete: "delete", react: entry.remove ? "reaction_remove" : "reaction_add" }[entry.op];
    const event = {
      conversation_id: ack.conversation_id, seq: ack.seq, message_id: ack.message_id, sender_id: this.me,
      client_msg_id: ack.client_msg_id, kind, body: entry.op === "send" || entry.op === "edit" ? entry.body : "",
      server_ts: ack.server_ts,
    };
    if (entry.reply_to) event.reply_to = entry.reply_to;
    if (entry.target_seq) event.target_seq = entry.target_seq;
    if (entry.emoji) event.emoji = entry.emoji;
    if (!this.ingest(event, false)) this.changed(c.id);
  }

  onError(frame) {
    if (frame.code === "unauthorized" && !frame.request_id) {
      this.expire();
      return;
    }
    if (!frame.request_id) return; // rate_limited typing, refused receipts: nothing to undo
    if (!DEFINITE.has(frame.code)) {
      // The outcome is unknown: send it again, with the same id, a little later.
      if (this.sentOnLink) this.sentOnLink.ids.delete(frame.request_id);
      clearTimeout(this.timers.retry);
      this.timers.retry = setTimeout(() => this.flushOutbox(), 1000 + Math.random() * 1000);
      return;
    }
    const entry = this.settle(frame.request_id);
    if (!entry) return;
    this.failed.push({ entry, message: frame.message || frame.code });
    this.emit("problem", { message: `Not sent: ${frame.message || frame.code}` });
    this.changed(entry.conversation_id);
  }

  // ---- conversations and members -----------------------------------------------------------

  async open(id) {
    this.visible = id;
    this.changed(null);
    const c = this.conversations.get(id);
    if (!c) return;
    if (!c.loaded) await this.loadHistory(id);
    this.watchPresence();
    this.markRead();
  }

  async direct(userId) {
    const summary = await this.http("POST", "/v1/conversations/direct", { user_id: userId });
    const c = this.upsert(summary);
    this.watchPresence();
    this.changed(null);
    return c;
  }
  async group(name, members) {
    const summary = await this.http("POST", "/v1/conversations/group", { name, members });
    const c = this.upsert(summary);
    this.changed(null);
    return c;
  }
  /** The next page of a group's members beyond those it holds: the listing names the caller,
   *  then the others by user id, and so do the pages, so the next one starts after the last
   *  other member held. */
  async moreMembers(id) {
    const c = this.conversations.get(id);
    if (!c) return;
    const others = c.members.map((m) => m.user_id).filter((user) => user !== this.me).sort();
    const after = others.length ? `&after=${encodeURIComponent(others[others.length - 1])}` : "";
    const page = await this.http("GET", `/v1/conversations/${id}/members?limit=100${after}`);
    const held = new Set(c.members.map((m) => m.user_id));
    for (const m of page.members) if (!held.has(m.user_id)) c.members.push(m);
    this.changed(id);
  }

  async addMember(id, userId) {
    await this.http("POST", `/v1/conversations/${id}/members`, { user_id: userId });
    await this.refreshConversation(id);
  }
  async removeMember(id, userId) {
    await this.http("DELETE", `/v1/conversations/${id}/members/${encodeURIComponent(userId)}`);
    await this.refreshConversation(id);
  }
  async leave(id) {
    await this.http("POST", `/v1/conversations/${id}/leave`);
    this.conversations.delete(id);
    if (this.visible === id) this.visible = null;
    this.changed(null);
  }
}

function emptyLane() {
  return {
    msgs: new Map(), seen: new Set(), head: 0, lastSeq: 0, oldest: 0, loaded: false, hasMore: true,
    loading: false, unread: 0, readSeq: 0, activity: 0, last: null,
  };
}
