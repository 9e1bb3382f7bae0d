// confab.js: a small client for Confab's WebSocket protocol (docs/protocol.md).
//
//   import { Confab } from '/confab.js';
//   const chat = new Confab({ userId: 'alice' });      // open mode
//   const chat = new Confab({ token: () => getJwt() }); // token mode
//   chat.on('event', (ev) => render(ev));
//   chat.on('state', ({ state }) => show(state));
//   chat.connect();
//   await chat.join('general');
//   await chat.message('general', 'Hello!');
//
// It owns one connection and keeps it: reconnection with exponential backoff
// and full jitter, re-joins with `since` after every `hello`, drops its state
// when the store's `epoch` changes, queues durable sends (message, edit,
// delete, react, unreact) with a `client_msg_id` while disconnected so that a
// retry can never post twice, and matches replies to requests by `ref`.
// Nothing here throws on a closed socket: every request returns a Promise.
// Documented in docs/client.md. No dependencies, no build step.

/** Kinds of durable room events (they have a `seq`). */
export const EVENT_KINDS = new Set([
  'create', 'join', 'leave', 'message', 'invite', 'uninvite', 'role', 'kick',
  'ban', 'unban', 'edit', 'delete', 'react', 'unreact',
]);

/** Commands that append an event and take a `client_msg_id`. */
const DURABLE = new Set(['message', 'edit', 'delete', 'react', 'unreact']);

/** Commands kept while disconnected and sent after the next `hello`. */
const QUEUED = new Set([...DURABLE, 'read', 'leave']);

/** Reply frame types that answer a request (matched by `ref`). */
const REPLIES = new Set(['ack', 'error', 'history', 'rooms', 'members', 'bans', 'pong']);

/** Join errors after which a room is given up (not retried). */
const FATAL_JOIN = new Set([
  'no_such_room', 'not_a_member', 'banned', 'forbidden', 'too_many_rooms',
  'invalid_room', 'invalid_field', 'user_mismatch',
]);

/** Errors after which a durable send is retried with the same client_msg_id. */
const RETRYABLE = new Set(['unavailable', 'rate_limited', 'internal']);

export const STATES = ['idle', 'connecting', 'open', 'reconnecting', 'closed'];

/** A failed request: `code` is the protocol's error code, or one of the
 * client's own: `disconnected`, `closed`, `timeout`, `epoch_changed`,
 * `frame_too_large`, `queue_full`. */
export class ConfabError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = 'ConfabError';
    this.code = code;
    this.frame = frame || null;
    this.room = frame && frame.room !== undefined ? frame.room : undefined;
  }
}

function randomId(prefix) {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return prefix + c.randomUUID().replace(/-/g, '').slice(0, 24);
  let s = prefix;
  for (let i = 0; i < 24; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) return 'ws://127.0.0.1:8080/ws';
  return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
}

/** http(s) URL of `path` on the server a ws(s) URL points at. */
function httpUrl(wsUrl, path) {
  const u = new URL(wsUrl, globalThis.location ? globalThis.location.href : undefined);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  u.pathname = u.pathname.replace(/\/ws\/?$/, '') + path;
  u.search = '';
  u.hash = '';
  return u.toString();
}

const encoder = typeof TextEncoder !== 'undefined' ? new TextEncoder() : null;
const byteLength = (s) => (encoder ? encoder.encode(s).length : s.length * 3);

export class Confab {
  /**
   * @param {object} [opts]
   * @param {string} [opts.url] WebSocket URL (default: ws(s)://<this page's host>/ws)
   * @param {string} [opts.userId] open mode: the identity, sent as ?user_id=
   * @param {string|function} [opts.token] token mode: a JWT, or a function
   *   (sync or async) returning one; called before every connection, with
   *   `{ expired: true }` after the server said the last one expired
   * @param {string|false} [opts.whoamiUrl] default: /whoami next to the socket; false: never asked
   * @param {number} [opts.backoffInitial] ms, default 500
   * @param {number} [opts.backoffMax] ms, default 30000
   * @param {number} [opts.requestTimeout] ms for a reply to a request, default 30000
   * @param {number} [opts.pingInterval] ms of silence before a ping, default 25000
   * @param {number} [opts.pongTimeout] ms to wait for any frame after that ping, default 10000
   * @param {number} [opts.maxQueue] most requests waiting to be sent, default 1000
   * @param {function} [opts.WebSocket] WebSocket constructor (default: globalThis.WebSocket)
   * @param {function} [opts.fetch] fetch function for /whoami (default: globalThis.fetch)
   */
  constructor(opts = {}) {
    this.opts = {
      backoffInitial: 500, backoffMax: 30000, requestTimeout: 30000,
      pingInterval: 25000, pongTimeout: 10000, maxQueue: 1000, helloTimeout: 10000,
      ...opts,
    };
    this.url = opts.url || defaultUrl();
    this.whoamiUrl = opts.whoamiUrl === false ? null : (opts.whoamiUrl || httpUrl(this.url, '/whoami'));
    this.state = 'idle';
    /** From the last `hello`. */
    this.node = null;
    this.epoch = null;
    this.userId = opts.userId != null ? String(opts.userId) : null;
    this.limits = {};
    this.hello = null;

    this._handlers = new Map();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;          // reconnect timer
    this._helloTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._lastFrameAt = 0;
    this._nextRef = 1;
    this._pending = new Map();    // ref -> request
    this._rooms = new Map();      // room -> { lastSeq, pending, held, joined, waiters, sentSince }
    this._gone = new Set();       // rooms left, kicked or banned from: not held again by a stray event
    this._wire = [];              // frames waiting for a rate-limit token
    this._tokens = 0;
    this._tokensAt = 0;
    this._pumpTimer = null;
    this._tokenExpired = false;
    this._connecting = false;

    if (typeof globalThis.addEventListener === 'function') {
      globalThis.addEventListener('online', () => {
        if (this.state === 'reconnecting') this._retryNow();
      });
    }
  }

  // ---------------------------------------------------------------- events

  /** Subscribe to an event; returns a function that unsubscribes. Events:
   * state, hello, reset, event, joined, gap, unsubscribed, notice, typing,
   * read, error, auth_error, pending, frame. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    const set = this._handlers.get(type);
    if (set) set.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (x) => { off(); fn(x); });
    return off;
  }

  _emit(type, payload) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(payload); } catch (e) { console.error('confab: a "' + type + '" handler threw', e); }
    }
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    if (previous === state && !extra.force) return;
    this.state = state;
    this._emit('state', { state, previous, ...extra });
  }

  // ------------------------------------------------------------ connection

  /** Open the connection (and keep it open until disconnect()). */
  connect() {
    if (this.state === 'connecting' || this.state === 'open' || this.state === 'reconnecting') return;
    this._attempt = 0;
    this._tokenExpired = false;
    this._setState('connecting');
    this._open(false);
  }

  /** Close for good: no reconnection; every waiting request is rejected. */
  disconnect() {
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try { ws.close(1000, 'client disconnect'); } catch (_) { /* already closed */ }
    }
    this._failAll(new ConfabError('closed', 'the client was disconnected'), true);
    for (const r of this._rooms.values()) { r.pending = false; r.joined = false; r.held = []; }
    this._setState('closed', { reason: 'disconnect' });
  }

  /** True when commands can be sent now. */
  get connected() { return this.state === 'open'; }

  _clearTimers() {
    for (const k of ['_timer', '_helloTimer', '_pingTimer', '_pongTimer', '_pumpTimer']) {
      if (this[k]) { clearTimeout(this[k]); this[k] = null; }
    }
  }

  async _tokenValue(expired) {
    const t = this.opts.token;
    if (typeof t === 'function') return t({ expired: !!expired });
    return t;
  }

  get tokenMode() { return this.opts.token != null; }

  /** Ask GET /whoami whether the token is still good. Returns 'ok', 'down'
   * (no answer: a node or the network is down) or an auth error code. */
  async whoami(token) {
    if (!this.whoamiUrl) return { status: 'unknown' };
    const f = this.opts.fetch || globalThis.fetch;
    if (!f) return { status: 'unknown' };
    try {
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      const res = await f(this.whoamiUrl, { headers, cache: 'no-store' });
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      if (res.status === 200) return { status: 'ok', body };
      if (res.status === 401 && body && body.code) return { status: 'auth', code: body.code, message: body.message, body };
      if (res.status === 404) return { status: 'unknown' };
      return { status: 'down', httpStatus: res.status };
    } catch (e) {
      return { status: 'down', error: String(e) };
    }
  }

  async _open(retry) {
    if (this._connecting) return;
    this._connecting = true;
    let url = this.url;
    try {
      const q = new URL(url, globalThis.location ? globalThis.location.href : undefined);
      if (this.tokenMode) {
        let token = await this._tokenValue(this._tokenExpired);
        if (retry || this._tokenExpired) {
          // A browser never learns why a handshake failed: ask before retrying.
          let who = await this.whoami(token);
          if (who.status === 'auth' && who.code === 'token_expired' && typeof this.opts.token === 'function') {
            token = await this._tokenValue(true);
            who = await this.whoami(token);
          }
          if (this.state === 'closed') return;
          if (who.status === 'auth') {
            this._authFailed(who.code, who.message);
            return;
          }
          if (who.status === 'down') {
            this._connecting = false;
            this._scheduleReconnect({ reason: 'whoami: ' + (who.error || 'HTTP ' + who.httpStatus) });
            return;
          }
        }
        this._tokenExpired = false;
        if (!token) { this._authFailed('token_missing', 'no token to connect with'); return; }
        q.searchParams.set('token', token);
      } else if (this.userId) {
        q.searchParams.set('user_id', this.userId);
      }
      url = q.toString();
    } catch (e) {
      this._connecting = false;
      if (this.state !== 'closed') this._scheduleReconnect({ reason: String(e) });
      return;
    }
    this._connecting = false;
    if (this.state === 'closed' || this.state === 'open') return;

    const WS = this.opts.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(url);
    } catch (e) {
      this._scheduleReconnect({ reason: String(e) });
      return;
    }
    this._ws = ws;
    ws.onmessage = (e) => this._onFrame(ws, e.data);
    ws.onclose = (e) => this._onClose(ws, e.code, e.reason);
    ws.onerror = () => { /* onclose follows */ };
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._lastFrameAt = Date.now();
      this._helloTimer = setTimeout(() => {
        if (this._ws === ws && this.state !== 'open') this._drop(ws, 4002, 'no hello');
      }, this.opts.helloTimeout);
    };
  }

  _authFailed(code, message) {
    this._connecting = false;
    this._clearTimers();
    this._failAll(new ConfabError(code, message || code), true);
    this._emit('auth_error', { code, message });
    this._setState('closed', { reason: code, code });
  }

  _detach(ws) {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onopen = null;
    ws.onerror = null;
  }

  /** Give up on a socket now (a dead peer may never send its close). */
  _drop(ws, code, reason) {
    this._detach(ws);
    try { ws.close(4002 <= code && code <= 4999 ? code : 4002, reason); } catch (_) { /* closed */ }
    this._onClose(ws, 1006, reason, true);
  }

  _onClose(ws, code, reason, dropped) {
    if (this._ws !== ws) return;
    this._ws = null;
    if (!dropped) this._detach(ws);
    this._clearTimers();
    this._wire = [];
    // Requests in flight: the queued kinds are sent again after the next
    // hello (same client_msg_id, so never twice); the others fail now.
    for (const [ref, p] of this._pending) {
      if (!p.sent) continue;
      if (p.queueable) {
        p.sent = false;
      } else {
        this._pending.delete(ref);
        if (p.timer) clearTimeout(p.timer);
        p.reject(new ConfabError('disconnected', 'the connection closed before the reply'));
      }
    }
    for (const r of this._rooms.values()) {
      // A replay cut short is asked for again (join with since) after the
      // next hello: what it held is dropped, not delivered out of turn.
      r.joined = false;
      r.pending = false;
      r.held = [];
    }
    this._emitPending();
    if (this.state === 'closed') return;
    if (code === 4001) this._tokenExpired = true;
    let delay;
    if (code === 1001 || code === 4000 || code === 4001) {
      // Shutting down, evicted, or token expired: at once (a little jitter
      // so that a node's clients do not all arrive in the same millisecond).
      delay = Math.random() * 250;
    } else if (code === 1008) {
      this._attempt = Math.max(this._attempt, 4);
    }
    this._scheduleReconnect({ code, reason, delay });
  }

  _scheduleReconnect({ code, reason, delay } = {}) {
    if (this.state === 'closed') return;
    if (delay === undefined) {
      // Exponential backoff with full jitter.
      const ceiling = Math.min(this.opts.backoffMax, this.opts.backoffInitial * 2 ** this._attempt);
      delay = Math.random() * ceiling;
      this._attempt++;
    }
    delay = Math.round(delay);
    if (this._timer) clearTimeout(this._timer);
    this._retryAt = Date.now() + delay;
    this._setState('reconnecting', { code, reason, delay, attempt: this._attempt, force: true });
    this._timer = setTimeout(() => { this._timer = null; this._open(true); }, delay);
  }

  /** Skip the rest of the current backoff (for example on a user's click). */
  reconnectNow() { this._retryNow(); }

  _retryNow() {
    if (this.state !== 'reconnecting' || this._connecting || this._ws) return;
    if (this._timer) { clearTimeout(this._timer); this._timer = null; }
    this._open(true);
  }

  // ----------------------------------------------------------- frames in

  _onFrame(ws, data) {
    if (this._ws !== ws) return;
    this._lastFrameAt = Date.now();
    if (this._pongTimer) { clearTimeout(this._pongTimer); this._pongTimer = null; }
    let f;
    try { f = JSON.parse(data); } catch (_) { return; }
    if (!f || typeof f !== 'object') return;
    this._emit('frame', f);
    const t = f.type;
    if (t === 'hello') return this._onHello(f);
    if (f.ref !== undefined && REPLIES.has(t) && this._pending.has(String(f.ref))) {
      return this._onReply(String(f.ref), f);
    }
    if (t === 'error') return this._emit('error', f);
    if (t === 'notice') {
      if ((f.kind === 'kick' || f.kind === 'ban') && this._rooms.has(f.room)) this._unsubscribed(f.room, f.kind, f);
      return this._emit('notice', f);
    }
    if (t === 'typing') return this._emit('typing', f);
    if (t === 'read') return this._emit('read', f);
    if (EVENT_KINDS.has(t) && typeof f.room === 'string' && typeof f.seq === 'number') return this._onEvent(f);
    this._emit('unknown', f);
  }

  _onHello(h) {
    if (this._helloTimer) { clearTimeout(this._helloTimer); this._helloTimer = null; }
    const previousEpoch = this.epoch;
    this.hello = h;
    this.node = h.node;
    this.limits = h.limits || {};
    if (h.user_id != null) this.userId = String(h.user_id);
    this._tokens = this._burst();
    this._tokensAt = Date.now();
    this._attempt = 0;
    this._retryAt = null;
    this.epoch = h.epoch;
    this._emit('hello', h);
    if (previousEpoch && h.epoch !== previousEpoch) this._reset(previousEpoch, h.epoch);
    this._setState('open', { node: h.node });
    this._schedulePing();
    // Re-join every room held, resuming where each stopped.
    for (const [room, r] of this._rooms) this._sendJoin(room, r);
    // Then what waited for the connection, in the order it was asked for.
    for (const [ref, p] of this._pending) {
      if (!p.sent) this._transmit(ref, p);
    }
  }

  /** The store is a new one: nothing this client knew applies. */
  _reset(previousEpoch, epoch) {
    const rooms = [...this._rooms.keys()];
    const err = new ConfabError('epoch_changed', 'the server\'s event store changed; join again');
    for (const r of this._rooms.values()) for (const w of r.waiters) w.reject(err);
    this._rooms.clear();
    this._gone.clear();
    this._failAll(new ConfabError('epoch_changed', 'the server\'s event store changed; reload'), false);
    this._emit('reset', { previousEpoch, epoch, rooms });
  }

  _onReply(ref, f) {
    const p = this._pending.get(ref);
    if (f.type === 'error' && p.queueable && RETRYABLE.has(f.code) && p.tries < 6) {
      // Nothing was stored: send it again later, with the same client_msg_id.
      p.sent = false;
      const delay = Math.min(8000, 500 * 2 ** p.tries) * (0.5 + Math.random() / 2);
      p.tries++;
      setTimeout(() => {
        if (this._pending.get(ref) === p && !p.sent && this.state === 'open') this._transmit(ref, p);
      }, delay);
      return;
    }
    this._pending.delete(ref);
    if (p.timer) clearTimeout(p.timer);
    this._emitPending();
    if (p.onReply) p.onReply(f);
    if (f.type === 'error') p.reject(new ConfabError(f.code, f.message, f));
    else p.resolve(f);
  }

  // ---------------------------------------------------------------- rooms

  _room(room) {
    this._gone.delete(room);
    let r = this._rooms.get(room);
    if (!r) {
      r = { lastSeq: null, pending: false, held: [], joined: false, waiters: [], sentSince: null };
      this._rooms.set(room, r);
    }
    return r;
  }

  _onEvent(ev) {
    // Room events come only for rooms this connection is subscribed to; a
    // room not held yet was just subscribed by create or dm.
    if (!this._rooms.has(ev.room) && this._gone.has(ev.room)) {
      this._emit('event', ev);
      return;
    }
    const r = this._room(ev.room);
    if (r.pending) { r.held.push(ev); return; }
    this._deliver(ev.room, r, ev);
  }

  _deliver(room, r, ev) {
    if (this._rooms.get(room) !== r) return;
    if (r.lastSeq != null) {
      if (ev.seq <= r.lastSeq) return;   // already delivered (a replay overlaps)
      if (ev.seq > r.lastSeq + 1) this._emit('gap', { room, after: r.lastSeq, before: ev.seq });
    }
    r.lastSeq = ev.seq;
    this._emit('event', ev);
    const me = this.userId;
    if (me != null && ((ev.type === 'leave' && ev.user_id === me) ||
        ((ev.type === 'kick' || ev.type === 'ban') && ev.target === me))) {
      this._unsubscribed(room, ev.type, ev);
    }
  }

  _deliverHeld(r, room) {
    const held = r.held;
    r.held = [];
    held.sort((a, b) => a.seq - b.seq);
    for (const ev of held) this._deliver(room || ev.room, r, ev);
  }

  _unsubscribed(room, reason, frame) {
    const r = this._rooms.get(room);
    if (!r) return;
    this._rooms.delete(room);
    this._gone.add(room);
    for (const w of r.waiters) w.reject(new ConfabError(reason, 'no longer in room ' + room, frame));
    this._emit('unsubscribed', { room, reason, frame });
  }

  _sendJoin(room, r) {
    const cmd = { type: 'join', room };
    if (r.lastSeq != null) cmd.since = r.lastSeq;
    r.pending = true;
    r.held = [];
    r.sentSince = r.lastSeq;
    this._request(cmd, { internal: true, onReply: (f) => this._onJoinReply(room, r, f) })
      .catch(() => { /* handled in _onJoinReply */ });
  }

  _onJoinReply(room, r, f) {
    if (this._rooms.get(room) !== r) return;
    r.pending = false;
    if (f.type === 'error') {
      r.held = [];
      if (FATAL_JOIN.has(f.code)) {
        this._unsubscribed(room, f.code, f);
      } else {
        // unavailable (the replay read failed) or rate_limited: try again.
        setTimeout(() => {
          if (this._rooms.get(room) === r && this.state === 'open' && !r.pending && !r.joined) this._sendJoin(room, r);
        }, 1000 + Math.random() * 1000);
      }
      return;
    }
    const resumed = r.sentSince != null;
    if (resumed && f.recovered === false) {
      // Too much was missed to replay: live events start after f.seq; what
      // lies between is for history.
      if (f.seq > r.sentSince) this._emit('gap', { room, after: r.sentSince, before: f.seq + 1, recovered: false });
      r.lastSeq = Math.max(r.lastSeq ?? 0, f.seq);
    }
    this._deliverHeld(r, room);
    if (typeof f.seq === 'number') r.lastSeq = Math.max(r.lastSeq ?? 0, f.seq);
    r.joined = true;
    const info = { room, seq: f.seq, recovered: f.recovered, resumed, ack: f };
    this._emit('joined', info);
    const waiters = r.waiters;
    r.waiters = [];
    for (const w of waiters) w.resolve(f);
  }

  /** Rooms this client holds (re-joined after every reconnect). */
  subscriptions() { return [...this._rooms.keys()]; }

  /** The last seq delivered for a room, or null. */
  lastSeq(room) {
    const r = this._rooms.get(room);
    return r ? r.lastSeq : null;
  }

  /** Join a room and hold it: after every reconnect it is joined again with
   * `since`. Resolves with the join's ack (after the replay, when resuming);
   * rejects with the error (the room is then no longer held). `since`
   * resumes from a seq the app already has. */
  join(room, opts = {}) {
    const existing = this._rooms.get(room);
    if (existing && existing.joined && opts.since === undefined) {
      return Promise.resolve({ type: 'ack', command: 'join', room, seq: existing.lastSeq, cached: true });
    }
    const r = this._room(room);
    if (opts.since !== undefined && opts.since !== null) r.lastSeq = opts.since;
    return new Promise((resolve, reject) => {
      r.waiters.push({ resolve, reject });
      if (this.state === 'open' && !r.pending) this._sendJoin(room, r);
      // Otherwise the join goes out after the next hello.
    });
  }

  /** Leave a room (ends the membership) and stop holding it. */
  leave(room) {
    return this._request({ type: 'leave', room }).then((ack) => {
      this._unsubscribed(room, 'leave', ack);
      return ack;
    });
  }

  // ------------------------------------------------------------- requests

  /** Send any command; resolves with its reply (ack, history, rooms, …),
   * rejects with a ConfabError. Never throws. Made while not connected, it
   * is sent after the next hello: a send (message, edit, delete, react,
   * unreact, read, leave) whenever that is, anything else if that comes
   * within requestTimeout. */
  request(cmd, opts = {}) {
    return this._request({ ...cmd }, opts);
  }

  _request(cmd, opts = {}) {
    return new Promise((resolve, reject) => {
      if (!cmd || typeof cmd.type !== 'string') {
        reject(new ConfabError('invalid_field', 'a command needs a type'));
        return;
      }
      const queueable = QUEUED.has(cmd.type) && opts.queue !== false;
      if (DURABLE.has(cmd.type) && cmd.client_msg_id == null) cmd.client_msg_id = randomId('c-');
      if (this.state === 'closed') {
        reject(new ConfabError('closed', 'the client is closed: connect() first'));
        return;
      }
      const waiting = [...this._pending.values()].filter((p) => !p.sent).length;
      if (waiting >= this.opts.maxQueue) {
        reject(new ConfabError('queue_full', 'too many requests waiting for the connection'));
        return;
      }
      const ref = 'r' + this._nextRef++;
      cmd.ref = ref;
      const p = { cmd, resolve, reject, queueable, sent: false, tries: 0, timer: null, onReply: opts.onReply };
      this._pending.set(ref, p);
      if (this.state === 'open') {
        this._transmit(ref, p);
      } else {
        // Sent after the next hello. A send (queueable) waits as long as it
        // takes; anything else gives up after requestTimeout.
        if (!queueable) this._armTimeout(ref, p, 'not connected within ');
        this._emitPending();
      }
    });
  }

  _transmit(ref, p) {
    const text = JSON.stringify(p.cmd);
    const max = this.limits.max_frame_bytes;
    if (max && byteLength(text) > max) {
      this._pending.delete(ref);
      p.reject(new ConfabError('frame_too_large', 'the command is over ' + max + ' bytes'));
      return;
    }
    p.sent = true;
    if (!p.queueable) this._armTimeout(ref, p, 'no reply within ');
    this._wire.push(text);
    this._pump();
    this._emitPending();
  }

  _armTimeout(ref, p, what) {
    if (p.timer) clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      if (this._pending.get(ref) !== p) return;
      this._pending.delete(ref);
      p.reject(new ConfabError('timeout', what + this.opts.requestTimeout + ' ms'));
    }, this.opts.requestTimeout);
  }

  _emitPending() {
    let n = 0;
    for (const p of this._pending.values()) if (p.queueable && p.cmd.type !== 'read' && !p.sent) n++;
    if (n !== this._lastPendingCount) {
      this._lastPendingCount = n;
      this._emit('pending', { waiting: n });
    }
  }

  /** Requests (durable sends) waiting for the connection. */
  get waiting() {
    let n = 0;
    for (const p of this._pending.values()) if (p.queueable && !p.sent) n++;
    return n;
  }

  _burst() { return Math.max(1, Math.floor((this.limits.rate_burst || 100) * 0.8)); }

  /** Send frames while the server's rate limit (mirrored from hello's
   * limits, with a margin) allows; the rest waits for tokens. */
  _pump() {
    if (this._pumpTimer) return;
    const rate = Math.max(1, (this.limits.rate_per_sec || 50) * 0.8);
    const now = Date.now();
    this._tokens = Math.min(this._burst(), this._tokens + ((now - this._tokensAt) / 1000) * rate);
    this._tokensAt = now;
    const ws = this._ws;
    while (this._wire.length && this._tokens >= 1) {
      if (!ws || ws.readyState !== 1) return;
      const text = this._wire.shift();
      try { ws.send(text); } catch (_) { /* onclose will follow */ return; }
      this._tokens -= 1;
    }
    if (this._wire.length) {
      const wait = Math.ceil(((1 - this._tokens) / rate) * 1000);
      this._pumpTimer = setTimeout(() => { this._pumpTimer = null; this._pump(); }, Math.max(10, wait));
    }
  }

  _failAll(err, includeQueued) {
    for (const [ref, p] of this._pending) {
      if (!includeQueued && !p.queueable) continue;
      this._pending.delete(ref);
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    if (includeQueued) {
      for (const r of this._rooms.values()) {
        for (const w of r.waiters) w.reject(err);
        r.waiters = [];
      }
    }
    this._emitPending();
  }

  _schedulePing() {
    if (this._pingTimer) clearTimeout(this._pingTimer);
    const ws = this._ws;
    this._pingTimer = setTimeout(() => {
      this._pingTimer = null;
      if (this._ws !== ws || this.state !== 'open') return;
      const idle = Date.now() - this._lastFrameAt;
      if (idle >= this.opts.pingInterval) {
        this._request({ type: 'ping' }, { internal: true }).catch(() => {});
        this._pongTimer = setTimeout(() => {
          if (this._ws === ws) this._drop(ws, 4002, 'no answer to ping');
        }, this.opts.pongTimeout);
      }
      this._schedulePing();
    }, Math.max(1000, this.opts.pingInterval - (Date.now() - this._lastFrameAt)));
  }

  // ------------------------------------------------------------- commands

  create(room, opts = {}) {
    const cmd = { type: 'create', room };
    if (opts.private) cmd.private = true;
    this._gone.delete(room);
    return this._request(cmd).then((ack) => {
      const r = this._room(room);
      r.joined = true;
      if (typeof ack.seq === 'number') r.lastSeq = Math.max(r.lastSeq ?? 0, ack.seq);
      return ack;
    });
  }

  /** Post a message. opts: reply_to (seq), mentions (user ids),
   * client_msg_id (made up when absent). Queued while disconnected. */
  message(room, text, opts = {}) {
    const cmd = { type: 'message', room, message: text };
    if (opts.reply_to != null) cmd.reply_to = opts.reply_to;
    if (opts.mentions && opts.mentions.length) cmd.mentions = opts.mentions.slice(0, 50);
    if (opts.client_msg_id) cmd.client_msg_id = opts.client_msg_id;
    return this._request(cmd);
  }

  edit(room, seq, text, opts = {}) {
    return this._request({ type: 'edit', room, seq, message: text, ...pick(opts, 'client_msg_id') });
  }

  delete(room, seq, opts = {}) {
    return this._request({ type: 'delete', room, seq, ...pick(opts, 'client_msg_id') });
  }

  react(room, seq, emoji, opts = {}) {
    return this._request({ type: 'react', room, seq, emoji, ...pick(opts, 'client_msg_id') });
  }

  unreact(room, seq, emoji, opts = {}) {
    return this._request({ type: 'unreact', room, seq, emoji, ...pick(opts, 'client_msg_id') });
  }

  /** A history page: opts before, since, limit. Resolves with the reply
   * ({events, more}). */
  history(room, opts = {}) {
    return this._request({ type: 'history', room, ...pick(opts, 'before', 'since', 'limit') });
  }

  /** The rooms the user may see, with unread counts: resolves with the list. */
  rooms() { return this._request({ type: 'rooms' }).then((f) => f.rooms); }

  members(room) { return this._request({ type: 'members', room }).then((f) => f.members); }

  bans(room) { return this._request({ type: 'bans', room }).then((f) => f.bans); }

  /** Tell the room this user is (not) typing. Ephemeral: while not
   * connected it resolves with null and sends nothing. */
  typing(room, typing = true) {
    if (this.state !== 'open') return Promise.resolve(null);
    return this._request({ type: 'typing', room, typing: !!typing });
  }

  /** Move the read marker forward to seq. Queued while disconnected. */
  read(room, seq) { return this._request({ type: 'read', room, seq }); }

  /** Open (or create) the DM with a user; the room is held like a join. */
  dm(user) {
    return this._request({ type: 'dm', user }).then((ack) => {
      const r = this._room(ack.room);
      r.joined = true;
      if (typeof ack.seq === 'number') r.lastSeq = Math.max(r.lastSeq ?? 0, ack.seq);
      return ack;
    });
  }

  invite(room, user) { return this._request({ type: 'invite', room, user }); }
  uninvite(room, user) { return this._request({ type: 'uninvite', room, user }); }
  kick(room, user) { return this._request({ type: 'kick', room, user }); }
  ban(room, user, reason) { return this._request({ type: 'ban', room, user, ...(reason ? { reason } : {}) }); }
  unban(room, user) { return this._request({ type: 'unban', room, user }); }
  setRole(room, user, role) { return this._request({ type: 'set_role', room, user, role }); }
  block(user) { return this._request({ type: 'block', user }); }
  unblock(user) { return this._request({ type: 'unblock', user }); }
  ping() { return this._request({ type: 'ping' }); }
}

function pick(obj, ...keys) {
  const out = {};
  for (const k of keys) if (obj[k] !== undefined && obj[k] !== null) out[k] = obj[k];
  return out;
}

/** The DM room of two users, as the server names it: `dm:` and the first 32
 * hex digits of SHA-256(a + "\n" + b), a and b in byte order. Needs
 * crypto.subtle (a secure context, or localhost). */
export async function dmRoomName(a, b) {
  const enc = new TextEncoder();
  const [x, y] = compareBytes(enc.encode(a), enc.encode(b)) <= 0 ? [a, b] : [b, a];
  const digest = await globalThis.crypto.subtle.digest('SHA-256', enc.encode(x + '\n' + y));
  return 'dm:' + [...new Uint8Array(digest)].map((v) => v.toString(16).padStart(2, '0')).join('').slice(0, 32);
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export default Confab;
