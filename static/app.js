// Confab's web chat. Plain ES module, no build step; the connection logic
// lives in confab.js. See docs/client.md.
import { Confab, ConfabError } from './confab.js';

// ------------------------------------------------------------------ helpers

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'style') e.style.cssText = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? '' : v);
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function hue(s) {
  let x = 0;
  for (const ch of String(s)) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

function avatar(user, cls = 'avatar') {
  const first = [...String(user)][0] || '?';
  return h('span', { class: cls, style: `--hue:${hue(user)}`, 'aria-hidden': 'true' }, first);
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const dayKey = (d) => `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;

function dayLabel(d) {
  const today = new Date();
  if (dayKey(d) === dayKey(today)) return 'Today';
  const y = new Date(today); y.setDate(today.getDate() - 1);
  if (dayKey(d) === dayKey(y)) return 'Yesterday';
  return dayFmt.format(d);
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function toast(text, action, ms = 6000) {
  const t = h('div', { class: 'toast', role: 'status' }, h('span', { text }));
  if (action) {
    t.append(h('button', { type: 'button', text: action.label, onclick: () => { t.remove(); action.run(); } }));
  }
  $('toasts').append(t);
  setTimeout(() => t.remove(), ms);
  while ($('toasts').children.length > 4) $('toasts').firstChild.remove();
}

function errText(e) {
  if (e instanceof ConfabError) {
    const map = {
      disconnected: 'Not connected right now. Try again in a moment.',
      closed: 'Signed out.',
      timeout: 'The server did not answer in time.',
      no_such_room: 'That room does not exist, or it is private.',
      room_exists: 'A room with that name already exists.',
      invalid_room: 'Room names are 1–64 characters from A–Z, a–z, 0–9 and - _ . :',
      forbidden: 'You are not allowed to do that here.',
      banned: 'You are banned from that room.',
      not_a_member: 'You are not a member of that room.',
      too_many_rooms: 'This connection holds as many rooms as it may.',
      rate_limited: 'Slow down a little.',
      unavailable: 'The server cannot take that right now; try again.',
    };
    return map[e.code] || e.message;
  }
  return String(e && e.message ? e.message : e);
}

const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];

// -------------------------------------------------------------------- state

const params = new URLSearchParams(location.search);
const S = {
  client: null,
  me: null,
  mode: 'unknown',          // 'open' | 'token' | 'unknown' (no /whoami)
  token: null,
  rooms: new Map(),         // name -> info from `rooms` (+ local unread counts)
  views: new Map(),         // name -> RoomView
  active: null,             // name of the room shown
  reply: null,              // { seq, user, text } while replying
  editing: null,            // seq while editing
  typingSent: 0,            // when we last said typing: true
  typingRoom: null,
  wantRoom: params.get('room'),
  membersOpen: window.matchMedia('(min-width: 1100px)').matches,
  refreshTimer: null,
  booted: false,
  journal: [],              // what the connection did, newest last (for the console and tests)
};

function note(what, detail) {
  S.journal.push({ at: Date.now(), what, ...detail });
  if (S.journal.length > 300) S.journal.splice(0, 100);
}
window.confab = S; // for the console and the browser tests
S.refreshRooms = () => refreshRooms();

function isMember(info) { return info && ['owner', 'admin', 'member'].includes(info.role); }
function maxRooms() { return (S.client && S.client.limits.max_rooms_per_connection) || 500; }

function displayName(name) {
  const info = S.rooms.get(name);
  if (info && info.dm) return info.with || 'Direct message';
  return name;
}

function sigil(info) {
  if (!info) return '#';
  if (info.dm) return '@';
  return info.private ? '🔒' : '#';
}

// ---------------------------------------------------------------- sign-in

async function detectMode() {
  try {
    const res = await fetch('/whoami', { cache: 'no-store' });
    if (res.status === 200) {
      const body = await res.json().catch(() => ({}));
      return body.mode === 'token' ? 'token' : 'open';
    }
    if (res.status === 401) return 'token';
  } catch (_) { /* the server is down: ask for both below */ }
  return 'unknown';
}

async function boot() {
  S.mode = await detectMode();
  const urlToken = params.get('token');
  if (urlToken) {
    // Keep the token out of the address bar, history and shared links.
    sessionStorage.setItem('confab.token', urlToken);
    params.delete('token');
    history.replaceState(null, '', location.pathname + (params.toString() ? '?' + params : ''));
  }
  const token = urlToken || sessionStorage.getItem('confab.token');
  const urlUser = params.get('user');
  if (S.mode !== 'open' && token) return start({ token });
  if (S.mode !== 'token' && urlUser) return start({ userId: urlUser });
  const saved = localStorage.getItem('confab.user');
  if (S.mode === 'open' && saved) return start({ userId: saved });
  $('signin-name').value = saved || '';
  showSignin();
}

function showSignin(error) {
  $('app').hidden = true;
  $('signin').hidden = false;
  const tokenMode = S.mode === 'token';
  $('signin-open').hidden = tokenMode;
  $('signin-token').hidden = S.mode === 'open';
  $('signin-intro').textContent = tokenMode
    ? 'This server needs an access token.'
    : S.mode === 'open' ? 'Pick a name to chat with. No password: this server is in open mode.'
      : 'Pick a name, or paste an access token.';
  $('signin-error').hidden = !error;
  $('signin-error').textContent = error || '';
  (tokenMode ? $('signin-token-input') : $('signin-name')).focus();
}

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('signin-token-input').value.trim();
  const name = $('signin-name').value.trim();
  if (token && S.mode !== 'open') {
    sessionStorage.setItem('confab.token', token);
    start({ token });
  } else if (name && S.mode !== 'token') {
    if ([...name].length > 64 || /[\u0000-\u001f\u007f-\u009f]/.test(name)) {
      showSignin('Names are 1–64 characters.');
      return;
    }
    localStorage.setItem('confab.user', name);
    start({ userId: name });
  } else {
    showSignin(S.mode === 'token' ? 'Paste a token first.' : 'Type a name first.');
  }
});

$('btn-signout').addEventListener('click', () => {
  localStorage.removeItem('confab.user');
  sessionStorage.removeItem('confab.token');
  if (S.client) S.client.disconnect();
  const p = new URLSearchParams(location.search);
  p.delete('user');
  location.href = location.pathname + (p.toString() ? '?' + p : '');
});

// ------------------------------------------------------------- connection

function start({ userId, token }) {
  $('signin').hidden = true;
  $('app').hidden = false;
  if (S.client) S.client.disconnect();
  for (const v of S.views.values()) v.destroy();
  S.views.clear();
  S.rooms.clear();
  S.active = null;
  S.booted = false;
  S.token = token || null;
  S.me = userId || null;
  renderMe();
  renderMain();
  const client = new Confab(token ? { token: () => S.token } : { userId });
  S.client = client;

  client.on('state', onState);
  client.on('hello', (hello) => { S.me = hello.user_id; renderMe(); });
  client.on('pending', () => renderPendingAll());
  client.on('reset', onReset);
  client.on('event', onEvent);
  client.on('state', ({ state, code, delay }) => note('state', { state, code, delay, node: client.node }));
  client.on('joined', ({ room, resumed, recovered, seq }) => note('joined', { room, resumed, recovered, seq }));
  client.on('gap', ({ room, after, before }) => note('gap', { room, after, before }));
  client.on('reset', ({ epoch }) => note('reset', { epoch }));
  client.on('joined', ({ room }) => { const v = S.views.get(room); if (v && v.shown) v.markRead(); });
  client.on('gap', ({ room }) => { const v = S.views.get(room); if (v) v.reload(); });
  client.on('unsubscribed', onUnsubscribed);
  client.on('notice', onNotice);
  client.on('typing', onTyping);
  client.on('read', (f) => {
    // Another device of ours read up to f.seq.
    const info = S.rooms.get(f.room);
    if (info && f.seq >= (info.last_seq || 0)) { info.unread = 0; info.mentions_unread = 0; renderRooms(); }
    refreshRoomsSoon();
  });
  client.on('auth_error', ({ code, message }) => {
    sessionStorage.removeItem('confab.token');
    const why = code === 'token_expired' ? 'Your token has expired: paste a new one.'
      : code === 'token_missing' ? 'This server needs an access token.' : 'That token was refused: ' + (message || code);
    S.mode = 'token';
    showSignin(why);
  });
  client.on('error', (f) => console.warn('confab: error frame', f));
  client.connect();

  clearInterval(S.refreshTimer);
  S.refreshTimer = setInterval(() => { if (client.connected) refreshRooms(); }, 30000);
}

function onState({ state, delay, node }) {
  document.body.dataset.state = state;
  const conn = $('conn');
  conn.dataset.state = state;
  $('conn-mini').dataset.state = state;
  conn.dataset.node = S.client.node || '';
  document.body.dataset.node = S.client.node || '';
  $('conn-retry').hidden = state !== 'reconnecting';
  clearInterval(S.countdown);
  const text = $('conn-text');
  if (state === 'open') {
    text.textContent = 'Connected';
    conn.title = 'Connected to ' + node;
    onOpen();
  } else if (state === 'connecting') {
    text.textContent = 'Connecting…';
  } else if (state === 'reconnecting') {
    const at = Date.now() + (delay || 0);
    const tick = () => {
      const s = Math.ceil((at - Date.now()) / 1000);
      text.textContent = s > 0 ? `Reconnecting in ${s} s…` : 'Reconnecting…';
      $('conn-mini').title = text.textContent;
    };
    tick();
    S.countdown = setInterval(tick, 1000);
  } else if (state === 'closed') {
    text.textContent = 'Offline';
  }
  $('conn-mini').title = text.textContent;
  renderBanner();
  renderPendingAll();
}

function renderBanner() {
  const b = $('banner');
  const state = S.client ? S.client.state : 'idle';
  if (state === 'open' || state === 'idle') { b.hidden = true; return; }
  const waiting = S.client.waiting;
  b.hidden = false;
  b.dataset.kind = state === 'connecting' ? 'info' : 'warn';
  b.textContent = state === 'connecting' ? 'Connecting…'
    : state === 'closed' ? 'Offline.'
      : 'Connection lost. Reconnecting; what you send now is delivered once it is back'
        + (waiting ? ` (${waiting} waiting).` : '.');
}

$('conn-retry').addEventListener('click', () => S.client && S.client.reconnectNow());

async function onOpen() {
  await refreshRooms();
  if (!S.booted) {
    S.booted = true;
    if (S.wantRoom) {
      const want = S.wantRoom;
      S.wantRoom = null;
      openRoom(want, { join: true });
    } else {
      const last = localStorage.getItem('confab.room.' + S.me);
      if (last && isMember(S.rooms.get(last))) openRoom(last);
      else renderMain();
    }
  } else if (S.active) {
    const v = S.views.get(S.active);
    if (v) v.refreshMembers();
  }
}

function onReset() {
  for (const v of S.views.values()) v.destroy();
  S.views.clear();
  S.rooms.clear();
  toast('The server started a new history; everything was reloaded.');
  const active = S.active;
  S.active = null;
  refreshRooms().then(() => { if (active) openRoom(active, { join: true }); });
}

// ------------------------------------------------------------------ rooms

const refreshRoomsSoon = debounce(() => refreshRooms(), 300);

async function refreshRooms() {
  const c = S.client;
  if (!c || !c.connected) return;
  let list;
  try { list = await c.rooms(); } catch (_) { return; }
  const next = new Map();
  for (const r of list) {
    const info = { ...r, unread: r.unread || 0, mentions_unread: r.mentions_unread || 0 };
    if (r.name === S.active && !document.hidden) { info.unread = 0; info.mentions_unread = 0; }
    next.set(r.name, info);
  }
  // Rooms held but missing from the reply (a node that has not heard of them yet): keep.
  for (const name of c.subscriptions()) if (!next.has(name) && S.rooms.has(name)) next.set(name, S.rooms.get(name));
  S.rooms = next;
  subscribe();
  renderRooms();
  renderBrowse();
  renderHeader();
}

/** Join (subscribe to) the rooms the user belongs to, up to the limit:
 * the open room first, then the ones with unread messages, then the rest. */
function subscribe() {
  const c = S.client;
  const held = new Set(c.subscriptions());
  const mine = [...S.rooms.values()].filter(isMember);
  mine.sort((a, b) => (b.name === S.active) - (a.name === S.active)
    || (b.mentions_unread - a.mentions_unread) || (b.unread - a.unread) || (b.last_seq - a.last_seq));
  let budget = maxRooms() - held.size;
  for (const info of mine) {
    if (held.has(info.name)) continue;
    if (budget <= 0) break;
    budget--;
    c.join(info.name).catch(() => {});
  }
}

function roomButton(info) {
  const name = info.name;
  const unread = name === S.active && !document.hidden ? 0 : info.unread;
  const mentions = name === S.active && !document.hidden ? 0 : info.mentions_unread;
  const b = h('button', {
    class: 'room-item' + (unread ? ' unread' : ''), type: 'button', 'aria-current': name === S.active ? 'true' : 'false',
    dataset: { room: name }, onclick: () => openRoom(name),
  },
  h('span', { class: 'sigil', 'aria-hidden': 'true' }, sigil(info)),
  h('span', { class: 'name' }, displayName(name)));
  let label = displayName(name);
  if (mentions) {
    b.append(h('span', { class: 'badge mention', 'data-badge': 'mentions', title: `${mentions} mention${mentions > 1 ? 's' : ''}` }, '@' + mentions));
    label += `, ${mentions} mentions`;
  }
  if (unread) {
    b.append(h('span', { class: 'badge', 'data-badge': 'unread', title: `${unread} unread` }, unread > 99 ? '99+' : unread));
    label += `, ${unread} unread`;
  }
  b.setAttribute('aria-label', label);
  return h('li', null, b);
}

function renderRooms() {
  const all = [...S.rooms.values()];
  const rooms = all.filter((r) => isMember(r) && !r.dm).sort((a, b) => a.name.localeCompare(b.name));
  const dms = all.filter((r) => isMember(r) && r.dm).sort((a, b) => String(a.with).localeCompare(String(b.with)));
  const invites = all.filter((r) => r.role === 'invited');
  $('list-rooms').replaceChildren(...rooms.map(roomButton));
  if (!rooms.length) $('list-rooms').append(h('li', { class: 'muted small', style: 'padding:4px 16px' }, 'No rooms yet'));
  $('list-dms').replaceChildren(...dms.map(roomButton));
  $('section-invites').hidden = !invites.length;
  $('list-invites').replaceChildren(...invites.map((info) => h('li', { class: 'invite-row' },
    h('span', { class: 'sigil', 'aria-hidden': 'true' }, sigil(info)),
    h('span', { class: 'name' }, info.name),
    h('button', { class: 'btn', type: 'button', onclick: () => openRoom(info.name, { join: true }) }, 'Join'))));
  const total = all.reduce((n, r) => n + (r.name === S.active && !document.hidden ? 0 : r.unread || 0), 0);
  document.title = (total ? `(${total}) ` : '') + (S.active ? displayName(S.active) + ' · ' : '') + 'Confab';
}

function renderBrowse() {
  const dlg = $('dlg-browse');
  if (!dlg.open) return;
  const f = $('browse-filter').value.trim().toLowerCase();
  const pub = [...S.rooms.values()].filter((r) => !r.private && !r.dm && (!f || r.name.toLowerCase().includes(f)))
    .sort((a, b) => a.name.localeCompare(b.name));
  $('browse-list').replaceChildren(...pub.map((r) => h('li', null,
    h('span', { class: 'name' }, '# ' + r.name),
    h('span', { class: 'muted' }, `${r.members} member${r.members === 1 ? '' : 's'}`),
    isMember(r)
      ? h('button', { class: 'btn', type: 'button', onclick: () => { dlg.close(); openRoom(r.name); } }, 'Open')
      : h('button', { class: 'primary', type: 'button', onclick: () => { dlg.close(); openRoom(r.name, { join: true }); } }, 'Join'))));
  if (!pub.length) $('browse-list').append(h('li', { class: 'muted' }, f ? 'No room matches.' : 'No public rooms yet.'));
}

async function openRoom(name, { join = false } = {}) {
  const c = S.client;
  closeNav();
  let info = S.rooms.get(name);
  if (!isMember(info)) {
    if (!join && info && info.role !== 'invited' && (info.private || info.dm)) return;
    try {
      await c.join(name);
    } catch (e) {
      toast(e.code === 'no_such_room' ? `Room ${name} does not exist, or it is private.` : errText(e));
      if (!S.active) renderMain();
      return;
    }
    await refreshRooms();
    info = S.rooms.get(name);
  }
  if (S.active && S.active !== name) stopTyping();
  S.active = name;
  localStorage.setItem('confab.room.' + S.me, name);
  const p = new URLSearchParams(location.search);
  p.set('room', name);
  history.replaceState(null, '', location.pathname + '?' + p);
  S.reply = null;
  S.editing = null;
  if (!c.subscriptions().includes(name)) c.join(name).catch((e) => toast(errText(e)));
  let v = S.views.get(name);
  if (!v) { v = new RoomView(name); S.views.set(name, v); }
  renderRooms();
  renderMain();
  v.show();
  // Not on a touch screen: focusing would pop up the keyboard.
  if (!window.matchMedia('(pointer: coarse)').matches) $('input').focus();
}

function stepRoom(dir) {
  const order = [...document.querySelectorAll('#list-rooms .room-item, #list-dms .room-item')].map((b) => b.dataset.room);
  if (!order.length) return;
  const i = order.indexOf(S.active);
  const next = order[(i + dir + order.length) % order.length];
  openRoom(next);
}

// ------------------------------------------------------------------ events

function onEvent(ev) {
  const info = S.rooms.get(ev.room);
  const v = S.views.get(ev.room);
  if (v) v.apply(ev, true);
  if (ev.type === 'message' && info) {
    info.last_seq = Math.max(info.last_seq || 0, ev.seq);
    const visible = ev.room === S.active && !document.hidden;
    if (ev.user_id !== S.me && !visible) {
      info.unread = (info.unread || 0) + 1;
      if (Array.isArray(ev.mentions) && ev.mentions.includes(S.me)) info.mentions_unread = (info.mentions_unread || 0) + 1;
      renderRoomsSoon();
    }
  }
  if (['join', 'leave', 'kick', 'ban', 'role', 'create', 'invite'].includes(ev.type)) {
    if (v && ev.room === S.active) v.refreshMembersSoon();
    refreshRoomsSoon();
  }
}

const renderRoomsSoon = debounce(renderRooms, 50);

function onUnsubscribed({ room, reason, frame }) {
  if (reason === 'kick' || reason === 'ban') {
    const by = frame && (frame.by || frame.user_id);
    toast(`You were ${reason === 'kick' ? 'removed from' : 'banned from'} ${displayName(room)}${by ? ' by ' + by : ''}.`);
  }
  const v = S.views.get(room);
  if (v) { v.destroy(); S.views.delete(room); }
  if (S.active === room) {
    S.active = null;
    const p = new URLSearchParams(location.search);
    p.delete('room');
    history.replaceState(null, '', location.pathname + (p.toString() ? '?' + p : ''));
    renderMain();
  }
  refreshRoomsSoon();
}

function onNotice(n) {
  if (n.kind === 'invite') {
    toast(`${n.by} invited you to ${n.room}.`, { label: 'Join', run: () => openRoom(n.room, { join: true }) }, 15000);
  } else if (n.kind === 'dm') {
    S.client.join(n.room).catch(() => {});
  } else if (n.kind === 'mention') {
    // A room this connection does not hold: counts come from `rooms`.
  }
  refreshRoomsSoon();
}

function onTyping(f) {
  if (f.user_id === S.me) return;
  const v = S.views.get(f.room);
  if (v) v.setTyping(f.user_id, f.typing, f.ttl_ms);
}

// --------------------------------------------------------------- the view

class RoomView {
  constructor(room) {
    this.room = room;
    this.items = new Map();     // seq -> message or system line
    this.els = new Map();       // seq -> element (while shown)
    this.oldest = null;         // smallest seq loaded
    this.more = true;           // older history exists
    this.loaded = false;
    this.loading = null;
    this.pending = new Map();   // client_msg_id -> { text, reply_to, state, error }
    this.typing = new Map();    // user -> timer
    this.members = null;
    this.readSent = 0;
    this.unseen = 0;
    this.refreshMembersSoon = debounce(() => this.refreshMembers(), 400);
  }

  destroy() {
    for (const t of this.typing.values()) clearTimeout(t);
    this.typing.clear();
    clearInterval(this.membersTimer);
  }

  get shown() { return S.active === this.room; }

  show() {
    this.renderAll();
    if (!this.loaded) this.loadLatest();
    else this.fill();
    this.refreshMembers();
    clearInterval(this.membersTimer);
    this.membersTimer = setInterval(() => { if (this.shown && S.membersOpen) this.refreshMembers(); }, 20000);
    this.markRead();
  }

  renderAll() {
    if (!this.shown) return;
    const items = $('items');
    items.replaceChildren();
    this.els.clear();
    const seqs = [...this.items.keys()].sort((a, b) => a - b);
    const frag = document.createDocumentFragment();
    let prev = null;
    for (const seq of seqs) {
      const el = this.render(this.items.get(seq), prev);
      this.els.set(seq, el);
      frag.append(el);
      prev = this.items.get(seq);
    }
    items.append(frag);
    this.renderPending();
    this.renderTop();
    this.renderTyping();
    this.scrollToBottom();
  }

  async loadLatest() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        const page = await S.client.history(this.room, { limit: 50 });
        this.loaded = true;
        this.more = page.more;
        for (const ev of page.events) this.apply(ev, false);
        if (page.events.length) this.oldest = Math.min(this.oldest ?? Infinity, page.events[0].seq);
      } catch (e) {
        if (this.shown) $('log-top').textContent = 'Could not load messages: ' + errText(e);
      } finally {
        this.loading = null;
      }
      if (this.shown && this.loaded) {
        this.renderAll();
        this.fill();
        this.markRead();
      }
    })();
    return this.loading;
  }

  /** Drop what is loaded and load the latest page again (after a gap). */
  reload() {
    this.items.clear();
    this.oldest = null;
    this.more = true;
    this.loaded = false;
    if (this.shown) this.show();
  }

  async loadOlder() {
    if (this.loading || !this.more || !this.loaded) return;
    const log = $('log');
    this.loading = (async () => {
      try {
        $('log-top').textContent = 'Loading earlier messages…';
        const page = await S.client.history(this.room, { before: this.oldest ?? undefined, limit: 50 });
        this.more = page.more;
        if (!this.shown) { for (const ev of page.events) this.apply(ev, false); return; }
        const before = log.scrollHeight;
        const top = log.scrollTop;
        for (const ev of page.events) this.apply(ev, false);
        if (page.events.length) this.oldest = Math.min(this.oldest ?? Infinity, page.events[0].seq);
        log.scrollTop = top + (log.scrollHeight - before);
      } catch (e) {
        $('log-top').textContent = 'Could not load earlier messages: ' + errText(e);
      } finally {
        this.loading = null;
        if (this.shown) { this.renderTop(); this.fill(); }
      }
    })();
    return this.loading;
  }

  /** Load older pages until the log can scroll (a page may hold few messages). */
  fill() {
    const log = $('log');
    if (this.shown && this.more && this.loaded && !this.loading && log.scrollHeight <= log.clientHeight + 200) {
      this.loadOlder();
    }
  }

  renderTop() {
    if (!this.shown) return;
    const info = S.rooms.get(this.room);
    $('log-top').textContent = !this.loaded ? 'Loading…'
      : this.more ? '' : info && info.dm ? `This is the beginning of your conversation with ${displayName(this.room)}.`
        : `This is the beginning of ${this.room}.`;
  }

  /** Apply an event: a message or a system line is added; an edit, delete,
   * react or unreact changes its message when it is newer than the state
   * the message carries (state_seq). */
  apply(ev, live) {
    const t = ev.type;
    if (t === 'message') {
      if (this.items.has(ev.seq)) return;
      const m = { ...ev, kind: 'message', state_seq: ev.state_seq ?? ev.seq, reactions: ev.reactions ? structuredClone(ev.reactions) : {} };
      this.items.set(ev.seq, m);
      if (ev.client_msg_id && ev.user_id === S.me && this.pending.delete(ev.client_msg_id)) this.renderPending();
      this.place(ev.seq, live);
      if (live && this.shown) this.onNew(ev);
      return;
    }
    if (t === 'edit' || t === 'delete' || t === 'react' || t === 'unreact') {
      const m = this.items.get(ev.target);
      if (!m || m.kind !== 'message' || ev.seq <= m.state_seq) return;
      m.state_seq = ev.seq;
      if (t === 'edit') {
        if (ev.message !== undefined) m.message = ev.message;
        m.edited = (m.edited || 0) + 1;
      } else if (t === 'delete') {
        m.deleted = true;
        m.deleted_by = ev.user_id;
        delete m.message;
        m.reactions = {};
      } else if (t === 'react') {
        const r = m.reactions[ev.emoji] || (m.reactions[ev.emoji] = { count: 0, users: [] });
        r.count++;
        if (!r.users.includes(ev.user_id) && r.users.length < 20) r.users.push(ev.user_id);
      } else {
        const r = m.reactions[ev.emoji];
        if (r) {
          r.count = Math.max(0, r.count - 1);
          r.users = r.users.filter((u) => u !== ev.user_id);
          if (!r.count) delete m.reactions[ev.emoji];
        }
      }
      this.rerender(ev.target);
      // Replies quote their target: refresh those shown.
      if (this.shown && (t === 'edit' || t === 'delete')) {
        for (const [seq, it] of this.items) if (it.reply_to === ev.target) this.rerender(seq);
      }
      return;
    }
    if (['create', 'join', 'leave', 'invite', 'uninvite', 'kick', 'ban', 'unban', 'role'].includes(t)) {
      if (this.items.has(ev.seq)) return;
      this.items.set(ev.seq, { ...ev, kind: 'system' });
      this.place(ev.seq, live);
    }
  }

  /** Put an item's element where its seq belongs (if the view is shown). */
  place(seq, live) {
    if (!this.shown) return;
    const log = $('log');
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    const item = this.items.get(seq);
    // Find the neighbours among the elements shown.
    let next = null;
    let prevItem = null;
    for (const [s, el] of this.els) {
      if (s > seq && (!next || s < Number(next.dataset.seq))) next = el;
      if (s < seq && (!prevItem || s > prevItem.seq)) prevItem = this.items.get(s);
    }
    const el = this.render(item, prevItem);
    this.els.set(seq, el);
    $('items').insertBefore(el, next);
    if (next) this.regroup(Number(next.dataset.seq));
    if (live && atBottom) this.scrollToBottom();
  }

  prevOf(seq) {
    let best = null;
    for (const s of this.els.keys()) if (s < seq && (best === null || s > best)) best = s;
    return best === null ? null : this.items.get(best);
  }

  rerender(seq) {
    const old = this.els.get(seq);
    if (!old || !this.shown) return;
    const el = this.render(this.items.get(seq), this.prevOf(seq));
    const focused = old.contains(document.activeElement);
    old.replaceWith(el);
    this.els.set(seq, el);
    if (focused) el.focus();
  }

  regroup(seq) { this.rerender(seq); }

  render(item, prev) {
    const date = new Date(item.at || Date.now());
    const newDay = !prev || dayKey(new Date(prev.at || Date.now())) !== dayKey(date);
    const wrap = document.createDocumentFragment();
    if (newDay) wrap.append(h('div', { class: 'day', role: 'separator' }, dayLabel(date)));
    if (item.kind === 'system') {
      const line = h('div', { class: 'sys', dataset: { seq: item.seq } }, systemText(item));
      return withDay(wrap, line, item.seq);
    }
    const cont = !newDay && prev && prev.kind === 'message' && prev.user_id === item.user_id
      && date - new Date(prev.at) < 5 * 60 * 1000 && !item.reply_to;
    const mine = item.user_id === S.me;
    const mentionsMe = Array.isArray(item.mentions) && item.mentions.includes(S.me) && !mine;
    const el = h('article', {
      class: 'msg' + (cont ? ' cont' : '') + (mentionsMe ? ' mentions-me' : ''), tabindex: '-1',
      id: `m-${item.seq}`, dataset: { seq: item.seq, user: item.user_id },
      'aria-label': `${item.user_id} at ${timeFmt.format(date)}`,
    },
    avatar(item.user_id),
    h('div', { class: 'body' },
      h('div', { class: 'meta' },
        h('span', { class: 'author' }, item.user_id),
        h('time', { datetime: item.at, title: fullFmt.format(date) }, timeFmt.format(date))),
      item.reply_to ? this.replyRef(item.reply_to) : null,
      item.deleted
        ? h('div', { class: 'text deleted' }, 'Message deleted' + (item.deleted_by && item.deleted_by !== item.user_id ? ` by ${item.deleted_by}` : ''))
        : h('div', { class: 'text' }, richText(item.message || ''), item.edited ? h('span', { class: 'edited', title: `edited ${item.edited}×` }, ' (edited)') : null),
      this.reactions(item)),
    item.deleted ? null : this.actions(item));
    el.addEventListener('keydown', (e) => this.onMessageKey(e, item.seq));
    return withDay(wrap, el, item.seq);
  }

  replyRef(seq) {
    const target = this.items.get(seq);
    const text = !target ? 'an earlier message' : target.deleted ? 'a deleted message' : (target.message || '');
    return h('button', {
      class: 'reply-ref', type: 'button', tabindex: '-1', title: 'Show the message this replies to',
      onclick: () => this.scrollTo(seq),
    }, '↩ ', target ? h('b', null, target.user_id) : null, target ? ': ' : '', text.slice(0, 140));
  }

  reactions(item) {
    const entries = Object.entries(item.reactions || {});
    if (!entries.length) return null;
    return h('div', { class: 'reactions' }, entries.map(([emoji, r]) => {
      const mine = r.users.includes(S.me);
      return h('button', {
        class: 'reaction', type: 'button', tabindex: '-1', 'aria-pressed': mine ? 'true' : 'false',
        title: r.users.join(', ') + (r.count > r.users.length ? ` and ${r.count - r.users.length} more` : ''),
        dataset: { emoji },
        onclick: () => this.toggleReaction(item.seq, emoji),
      }, h('span', null, emoji), h('span', { class: 'n' }, r.count));
    }));
  }

  actions(item) {
    const mine = item.user_id === S.me;
    const info = S.rooms.get(this.room);
    const staff = info && (info.role === 'owner' || info.role === 'admin') && !info.dm;
    const bar = h('div', { class: 'actions', role: 'toolbar', 'aria-label': 'Message actions' },
      h('button', { type: 'button', tabindex: '-1', title: 'React (+)', 'data-act': 'react', onclick: (e) => openPicker(e.currentTarget, this.room, item.seq) }, '☺ React'),
      h('button', { type: 'button', tabindex: '-1', title: 'Reply (R)', 'data-act': 'reply', onclick: () => startReply(item) }, 'Reply'),
      mine ? h('button', { type: 'button', tabindex: '-1', title: 'Edit (E)', 'data-act': 'edit', onclick: () => startEdit(item) }, 'Edit') : null,
      mine || staff ? h('button', { type: 'button', tabindex: '-1', title: 'Delete (Del)', 'data-act': 'delete', onclick: () => confirmDelete(this.room, item) }, 'Delete') : null);
    return bar;
  }

  onMessageKey(e, seq) {
    const item = this.items.get(seq);
    if (!item || e.target !== e.currentTarget) return;
    const k = e.key;
    if (k === 'ArrowUp' || k === 'ArrowDown') {
      e.preventDefault();
      const msgs = [...$('items').querySelectorAll('.msg')];
      const i = msgs.indexOf(e.currentTarget);
      const to = msgs[i + (k === 'ArrowUp' ? -1 : 1)];
      if (to) to.focus(); else if (k === 'ArrowDown') $('input').focus();
      if (k === 'ArrowUp' && i <= 1) this.loadOlder();
    } else if (k === 'r' || k === 'R') { e.preventDefault(); startReply(item); }
    else if ((k === 'e' || k === 'E') && item.user_id === S.me && !item.deleted) { e.preventDefault(); startEdit(item); }
    else if ((k === 'Delete' || k === 'Backspace') && !item.deleted) { e.preventDefault(); confirmDelete(this.room, item); }
    else if ((k === '+' || k === 'a') && !item.deleted) { e.preventDefault(); openPicker(e.currentTarget, this.room, seq); }
    else if (k === 'Escape') { e.preventDefault(); $('input').focus(); }
  }

  toggleReaction(seq, emoji) {
    const m = this.items.get(seq);
    const r = m && m.reactions[emoji];
    const p = r && r.users.includes(S.me)
      ? S.client.unreact(this.room, seq, emoji) : S.client.react(this.room, seq, emoji);
    p.catch((e) => { if (e.code !== 'no_such_reaction') toast(errText(e)); });
  }

  scrollTo(seq) {
    const el = this.els.get(seq);
    if (!el) { toast('That message is further back; scroll up to load it.'); return; }
    el.scrollIntoView({ block: 'center', behavior: 'smooth' });
    el.classList.remove('flash');
    void el.offsetWidth;
    el.classList.add('flash');
    el.focus({ preventScroll: true });
  }

  scrollToBottom() {
    const log = $('log');
    log.scrollTop = log.scrollHeight;
    this.unseen = 0;
    $('jump').hidden = true;
  }

  onNew(ev) {
    const log = $('log');
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    if (ev.user_id === S.me) this.scrollToBottom();
    else if (!atBottom) { this.unseen++; $('jump').hidden = false; }
    this.markRead();
  }

  /** Move the read marker to the last event when the newest messages are on screen. */
  markRead() {
    if (!this.shown || document.hidden || !S.client.connected) return;
    const log = $('log');
    if (log.scrollHeight - log.scrollTop - log.clientHeight > 80) return;
    const seq = S.client.lastSeq(this.room);
    const info = S.rooms.get(this.room);
    if (info) {
      const changed = info.unread || info.mentions_unread;
      info.unread = 0;
      info.mentions_unread = 0;
      if (changed) renderRooms();
    }
    // One read per burst of messages, not one per message.
    if (seq && seq > this.readSent && !this.readTimer) {
      this.readTimer = setTimeout(() => {
        this.readTimer = null;
        const last = S.client.lastSeq(this.room);
        if (!last || last <= this.readSent) return;
        this.readSent = last;
        S.client.read(this.room, last).catch(() => { this.readSent = 0; });
      }, 250);
    }
  }

  // Local echo of sends not yet committed.
  send(text, opts) {
    const cmid = 'w-' + (crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(16).slice(2)).replace(/-/g, '').slice(0, 20);
    const p = { text, reply_to: opts.reply_to, state: 'sending', at: new Date().toISOString() };
    this.pending.set(cmid, p);
    this.renderPending();
    this.scrollToBottom();
    this.post(cmid, p, opts);
  }

  post(cmid, p, opts) {
    p.state = 'sending';
    S.client.message(this.room, p.text, { ...opts, client_msg_id: cmid })
      .then(() => {
        // The event (live or replayed) removes the echo; a duplicate ack
        // means it was stored before: its event came or comes with the replay.
        setTimeout(() => { if (this.pending.delete(cmid)) this.renderPending(); }, 3000);
      })
      .catch((e) => {
        p.state = 'failed';
        p.error = errText(e);
        p.opts = opts;
        this.renderPending();
      });
  }

  renderPending() {
    if (!this.shown) return;
    const box = $('pending');
    const waiting = S.client && !S.client.connected;
    box.replaceChildren(...[...this.pending].map(([cmid, p]) => {
      const state = p.state === 'failed'
        ? h('div', { class: 'state failed' }, 'Not sent: ' + p.error + ' ',
          h('button', { class: 'link', type: 'button', onclick: () => { this.post(cmid, p, p.opts || {}); this.renderPending(); } }, 'Retry'), ' · ',
          h('button', { class: 'link', type: 'button', onclick: () => { this.pending.delete(cmid); this.renderPending(); } }, 'Discard'))
        : h('div', { class: 'state' }, waiting ? 'Waiting for the connection…' : 'Sending…');
      return h('article', { class: 'msg', dataset: { pending: cmid } }, avatar(S.me),
        h('div', { class: 'body' },
          h('div', { class: 'meta' }, h('span', { class: 'author' }, S.me)),
          h('div', { class: 'text' }, p.text), state));
    }));
  }

  setTyping(user, typing, ttl) {
    clearTimeout(this.typing.get(user));
    if (typing) this.typing.set(user, setTimeout(() => { this.typing.delete(user); this.renderTyping(); }, ttl || 6000));
    else this.typing.delete(user);
    this.renderTyping();
  }

  renderTyping() {
    if (!this.shown) return;
    const who = [...this.typing.keys()];
    $('typing').textContent = !who.length ? ''
      : who.length === 1 ? `${who[0]} is typing…`
        : who.length === 2 ? `${who[0]} and ${who[1]} are typing…`
          : `${who.length} people are typing…`;
  }

  async refreshMembers() {
    if (!this.shown || !S.client.connected) return;
    try {
      this.members = await S.client.members(this.room);
    } catch (_) { return; }
    if (this.shown) { renderMembers(this); renderHeader(); }
  }
}

function withDay(frag, el, seq) {
  if (!frag.childNodes.length) return el;
  // Keep one element per seq: the day line goes inside a wrapper.
  const box = h('div', { class: 'daybox', dataset: { seq } });
  box.append(frag, el);
  box.focus = (o) => el.focus(o);
  return box;
}

function systemText(ev) {
  const u = (x) => h('b', null, x);
  switch (ev.type) {
    case 'create': return ev.dm ? ['Conversation started by ', u(ev.user_id)] : [u(ev.user_id), ' created this room'];
    case 'join': return ev.by ? [u(ev.user_id), ' was added by ', u(ev.by)] : [u(ev.user_id), ' joined'];
    case 'leave': return [u(ev.user_id), ' left'];
    case 'invite': return [u(ev.user_id), ' invited ', u(ev.target)];
    case 'uninvite': return [u(ev.user_id), ' withdrew the invitation of ', u(ev.target)];
    case 'kick': return [u(ev.user_id), ' removed ', u(ev.target)];
    case 'ban': return [u(ev.user_id), ' banned ', u(ev.target), ev.reason ? ` (${ev.reason})` : ''];
    case 'unban': return [u(ev.user_id), ' lifted the ban on ', u(ev.target)];
    case 'role': return [u(ev.target), ` is now ${ev.role === 'owner' ? 'the owner' : 'an ' + ev.role}`.replace('an member', 'a member')];
    default: return ev.type;
  }
}

/** Text with links and @mentions, built from text nodes only. */
function richText(text) {
  const out = [];
  const re = /(https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]])|(@[^\s@]+)/g;
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) {
      out.push(h('a', { href: m[1], target: '_blank', rel: 'noopener noreferrer nofollow' }, m[1]));
    } else {
      const name = m[2].slice(1).replace(/[.,;:!?)\]]+$/, '');
      const rest = m[2].slice(1 + name.length);
      out.push(h('span', { class: 'at' + (name === S.me ? ' me' : '') }, '@' + name));
      if (rest) out.push(rest);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function mentionsIn(text, room) {
  const v = S.views.get(room);
  const members = v && v.members ? new Set(v.members.map((m) => m.user_id)) : null;
  const found = new Set();
  for (const m of text.matchAll(/@([^\s@]+)/g)) {
    let name = m[1];
    // "@bob," mentions bob; a member whose id ends in punctuation still matches whole.
    if (!(members && members.has(name))) name = name.replace(/[.,;:!?)\]]+$/, '');
    if (name && name !== S.me && (!members || members.has(name))) found.add(name);
  }
  return [...found].slice(0, 50);
}

// -------------------------------------------------------------- main pane

function renderMain() {
  const room = S.active;
  $('empty').hidden = !!room;
  $('composer').hidden = !room;
  $('log').hidden = !room;
  if (!room) {
    $('items').replaceChildren();
    $('pending').replaceChildren();
    $('typing').textContent = '';
    $('members').hidden = true;
  }
  renderHeader();
  renderContext();
  renderBanner();
}

function renderHeader() {
  const room = S.active;
  const info = room ? S.rooms.get(room) : null;
  for (const id of ['btn-invite', 'btn-leave', 'btn-members', 'btn-link', 'btn-more']) $(id).hidden = !room;
  if (!room) {
    $('room-name').textContent = 'Confab';
    $('room-sub').textContent = '';
    return;
  }
  $('room-name').textContent = (info && info.dm ? '@ ' : info && info.private ? '🔒 ' : '# ') + displayName(room);
  const v = S.views.get(room);
  const n = v && v.members ? v.members.length : info ? info.members : null;
  const online = v && v.members ? v.members.filter((m) => m.online).length : null;
  $('room-sub').textContent = [
    info && info.dm ? 'Direct message' : info && info.private ? 'Private room' : 'Public room',
    n != null ? `${n} member${n === 1 ? '' : 's'}` : null,
    online != null ? `${online} online` : null,
  ].filter(Boolean).join(' · ');
  const canInvite = info && !info.dm && (!info.private || info.role === 'owner' || info.role === 'admin');
  $('btn-invite').hidden = !canInvite;
  $('btn-link').hidden = !!(info && info.dm);
  $('members').hidden = !S.membersOpen;
  $('btn-members').setAttribute('aria-expanded', String(S.membersOpen));
  $('input').placeholder = `Message ${info && info.dm ? displayName(room) : room}`;
}

function renderMembers(v) {
  const info = S.rooms.get(v.room);
  const myRole = info ? info.role : null;
  const rank = { owner: 0, admin: 1, member: 2 };
  const list = [...(v.members || [])].sort((a, b) => (b.online - a.online) || (rank[a.role] - rank[b.role]) || a.user_id.localeCompare(b.user_id));
  $('member-list').replaceChildren(...list.map((m) => {
    const menu = h('span', { class: 'member-menu' });
    if (m.user_id !== S.me) {
      menu.append(h('button', { type: 'button', title: `Message ${m.user_id}`, onclick: () => openDm(m.user_id) }, 'Message'));
      const canModerate = info && !info.dm && m.role !== 'owner'
        && (myRole === 'owner' || (myRole === 'admin' && m.role === 'member'));
      if (myRole === 'owner' && !info.dm) {
        const to = m.role === 'admin' ? 'member' : 'admin';
        menu.append(h('button', { type: 'button', onclick: () => act(S.client.setRole(v.room, m.user_id, to)) }, to === 'admin' ? 'Make admin' : 'Make member'));
      }
      if (canModerate) {
        menu.append(h('button', { type: 'button', onclick: () => act(S.client.kick(v.room, m.user_id)) }, 'Kick'));
        menu.append(h('button', {
          type: 'button',
          onclick: () => confirmBox(`Ban ${m.user_id}?`, `${m.user_id} is removed from ${v.room} and cannot join again until unbanned.`, 'Ban')
            .then((ok) => ok && act(S.client.ban(v.room, m.user_id))),
        }, 'Ban'));
      }
    }
    return h('li', { class: 'member' + (m.online ? ' online' : ''), dataset: { user: m.user_id } },
      h('span', { class: 'presence', title: m.online ? 'online' : 'offline', 'aria-label': m.online ? 'online' : 'offline' }),
      avatar(m.user_id, 'avatar small'),
      h('span', { class: 'who' }, m.user_id + (m.user_id === S.me ? ' (you)' : '')),
      m.role !== 'member' ? h('span', { class: 'role' }, m.role) : null,
      menu);
  }));
}

function act(promise) {
  promise.then(() => { const v = S.views.get(S.active); if (v) v.refreshMembersSoon(); }).catch((e) => toast(errText(e)));
}

// ---------------------------------------------------------------- composer

const input = $('input');

function autosize() {
  input.style.height = 'auto';
  input.style.height = Math.min(input.scrollHeight + 2, window.innerHeight * 0.4) + 'px';
}

function renderContext() {
  const box = $('compose-context');
  if (S.editing) {
    box.hidden = false;
    $('compose-context-text').textContent = 'Editing your message · Esc to cancel';
  } else if (S.reply) {
    box.hidden = false;
    $('compose-context-text').textContent = `Replying to ${S.reply.user}: ${S.reply.text.slice(0, 100)}`;
  } else {
    box.hidden = true;
  }
}

function startReply(item) {
  S.editing = null;
  S.reply = { seq: item.seq, user: item.user_id, text: item.deleted ? 'a deleted message' : item.message || '' };
  renderContext();
  input.focus();
}

function startEdit(item) {
  S.reply = null;
  S.editing = item.seq;
  input.value = item.message || '';
  autosize();
  renderContext();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function cancelContext() {
  if (S.editing) input.value = '';
  S.editing = null;
  S.reply = null;
  autosize();
  renderContext();
}

$('compose-cancel').addEventListener('click', () => { cancelContext(); input.focus(); });

function stopTyping() {
  if (S.typingSent && S.typingRoom) S.client.typing(S.typingRoom, false).catch(() => {});
  S.typingSent = 0;
  S.typingRoom = null;
}

input.addEventListener('input', () => {
  autosize();
  const room = S.active;
  if (!room || S.editing) return;
  if (!input.value.trim()) { stopTyping(); return; }
  if (Date.now() - S.typingSent > 3000 || S.typingRoom !== room) {
    S.typingSent = Date.now();
    S.typingRoom = room;
    S.client.typing(room, true).catch(() => {});
  }
});

input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('composer').requestSubmit();
  } else if (e.key === 'Escape') {
    if (S.editing || S.reply) { e.preventDefault(); cancelContext(); }
  } else if (e.key === 'ArrowUp' && !input.value && !e.altKey) {
    const v = S.views.get(S.active);
    if (!v) return;
    const mine = [...v.items.values()].filter((m) => m.kind === 'message' && m.user_id === S.me && !m.deleted).sort((a, b) => b.seq - a.seq)[0];
    if (mine) { e.preventDefault(); startEdit(mine); }
  }
});

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = S.active;
  const v = S.views.get(room);
  const text = input.value.replace(/\s+$/, '');
  if (!room || !v || !text.trim()) return;
  const max = (S.client.limits && S.client.limits.max_message_chars) || 4096;
  if ([...text].length > max) { toast(`Messages are at most ${max} characters.`); return; }
  if (S.editing) {
    const seq = S.editing;
    S.client.edit(room, seq, text).catch((err) => toast('Edit failed: ' + errText(err)));
  } else {
    const opts = {};
    if (S.reply) opts.reply_to = S.reply.seq;
    const mentions = mentionsIn(text, room);
    if (mentions.length) opts.mentions = mentions;
    v.send(text, opts);
    stopTyping();
  }
  input.value = '';
  S.editing = null;
  S.reply = null;
  autosize();
  renderContext();
});

// ------------------------------------------------------------- reactions

let pickerFor = null;

function openPicker(anchor, room, seq) {
  const picker = $('picker');
  pickerFor = { room, seq, anchor };
  picker.replaceChildren(...QUICK_EMOJI.map((emoji) => h('button', {
    type: 'button', role: 'menuitem', title: emoji, 'aria-label': 'React with ' + emoji,
    onclick: () => { closePicker(); const v = S.views.get(room); if (v) v.toggleReaction(seq, emoji); },
  }, emoji)));
  picker.hidden = false;
  const r = anchor.getBoundingClientRect();
  const w = picker.offsetWidth;
  picker.style.left = Math.max(8, Math.min(window.innerWidth - w - 8, r.right - w)) + 'px';
  picker.style.top = (r.top > 60 ? r.top - picker.offsetHeight - 6 : r.bottom + 6) + 'px';
  picker.firstChild.focus();
}

function closePicker() {
  const p = pickerFor;
  $('picker').hidden = true;
  pickerFor = null;
  if (p && p.anchor && document.contains(p.anchor)) p.anchor.closest('.msg')?.focus();
}

$('picker').addEventListener('keydown', (e) => {
  const items = [...$('picker').children];
  const i = items.indexOf(document.activeElement);
  if (e.key === 'Escape') { e.preventDefault(); closePicker(); }
  else if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
    e.preventDefault();
    items[(i + (e.key === 'ArrowRight' ? 1 : -1) + items.length) % items.length].focus();
  }
});
document.addEventListener('mousedown', (e) => {
  if (!$('picker').hidden && !$('picker').contains(e.target) && !e.target.closest('[data-act=react]')) closePicker();
});

// --------------------------------------------------------------- dialogs

function confirmBox(title, text, ok = 'OK') {
  const dlg = $('dlg-confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  dlg.returnValue = '';
  dlg.showModal();
  return new Promise((resolve) => dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true }));
}

function confirmDelete(room, item) {
  const ret = document.activeElement;
  confirmBox('Delete this message?', 'Its text is removed for everyone, for good.', 'Delete').then((ok) => {
    if (ok) S.client.delete(room, item.seq).catch((e) => toast('Delete failed: ' + errText(e)));
    if (ret && document.contains(ret)) ret.focus();
  });
}

function formDialog(dlgId, formId, onOk) {
  const dlg = $(dlgId);
  const form = $(formId);
  const err = form.querySelector('.error');
  form.addEventListener('submit', async (e) => {
    if (e.submitter && e.submitter.value !== 'ok') return;
    e.preventDefault();
    err.hidden = true;
    try {
      await onOk();
      dlg.close();
    } catch (x) {
      err.textContent = errText(x);
      err.hidden = false;
    }
  });
  return () => { err.hidden = true; form.reset(); dlg.showModal(); };
}

const openCreate = formDialog('dlg-create', 'form-create', async () => {
  const name = $('create-name').value.trim();
  await S.client.create(name, { private: $('create-private').checked });
  await refreshRooms();
  openRoom(name);
});

const openDmDialog = formDialog('dlg-dm', 'form-dm', async () => {
  await openDm($('dm-name').value.trim());
});

async function openDm(user) {
  if (user === S.me) throw new ConfabError('invalid_field', 'That is you.');
  const ack = await S.client.dm(user);
  await refreshRooms();
  openRoom(ack.room);
}

const openInvite = formDialog('dlg-invite', 'form-invite', async () => {
  const user = $('invite-name').value.trim();
  const ack = await S.client.invite(S.active, user);
  toast(ack.unchanged ? `${user} was already invited.` : `Invited ${user}.`);
});

$('btn-create').addEventListener('click', openCreate);
$('btn-dm').addEventListener('click', openDmDialog);
$('btn-invite').addEventListener('click', () => { $('invite-room').textContent = S.active; openInvite(); });
$('btn-browse').addEventListener('click', openBrowse);
$('browse-create').addEventListener('click', (e) => { e.preventDefault(); $('dlg-browse').close(); openCreate(); });
$('browse-filter').addEventListener('input', renderBrowse);
$('form-browse').addEventListener('submit', (e) => e.preventDefault());
for (const b of document.querySelectorAll('[data-close]')) b.addEventListener('click', () => b.closest('dialog').close());
document.querySelector('[data-act=browse]').addEventListener('click', openBrowse);
document.querySelector('[data-act=create]').addEventListener('click', openCreate);

function openBrowse() {
  closeNav();
  $('browse-filter').value = '';
  $('dlg-browse').showModal();
  renderBrowse();
  refreshRooms();
}

$('btn-leave').addEventListener('click', async () => {
  const room = S.active;
  const info = S.rooms.get(room);
  const extra = info && info.private ? ' It is private: you need a new invitation to come back.' : '';
  if (!(await confirmBox(`Leave ${displayName(room)}?`, 'You stop receiving its messages.' + extra, 'Leave'))) return;
  S.client.leave(room).catch((e) => toast(errText(e)));
});

$('btn-link').addEventListener('click', async () => {
  const url = location.origin + location.pathname + '?room=' + encodeURIComponent(S.active);
  try { await navigator.clipboard.writeText(url); toast('Link copied.'); } catch (_) { toast(url, null, 12000); }
});

$('btn-members').addEventListener('click', () => {
  S.membersOpen = !S.membersOpen;
  renderHeader();
  const v = S.views.get(S.active);
  if (S.membersOpen && v) v.refreshMembers();
});
$('members-close').addEventListener('click', () => { S.membersOpen = false; renderHeader(); });

// ------------------------------------------------------- nav and scrolling

// On a phone the room's actions sit behind a "more" button.
function setMore(open) {
  $('room-actions').classList.toggle('open', open);
  $('btn-more').setAttribute('aria-expanded', String(open));
  if (open) $('room-actions').querySelector('.btn:not([hidden])')?.focus();
}
$('btn-more').addEventListener('click', () => setMore(!$('room-actions').classList.contains('open')));
$('room-actions').addEventListener('click', () => setMore(false));
document.addEventListener('click', (e) => {
  if (!e.target.closest('#room-actions, #btn-more')) setMore(false);
});

function closeNav() { $('app').classList.remove('nav-open'); $('scrim').hidden = true; }
$('btn-menu').addEventListener('click', () => { $('app').classList.add('nav-open'); $('scrim').hidden = false; $('list-rooms').querySelector('button')?.focus(); });
$('scrim').addEventListener('click', closeNav);

$('log').addEventListener('scroll', () => {
  const v = S.views.get(S.active);
  if (!v) return;
  const log = $('log');
  if (log.scrollTop < 300) v.loadOlder();
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) { $('jump').hidden = true; v.unseen = 0; v.markRead(); }
}, { passive: true });

$('jump').addEventListener('click', () => { const v = S.views.get(S.active); if (v) { v.scrollToBottom(); v.markRead(); } });

$('log').addEventListener('keydown', (e) => {
  if (e.target !== $('log')) return;
  if (e.key === 'ArrowUp' || e.key === 'End' || e.key === 'ArrowDown') {
    const msgs = [...$('items').querySelectorAll('.msg')];
    if (!msgs.length) return;
    e.preventDefault();
    msgs[e.key === 'ArrowDown' ? 0 : msgs.length - 1].focus();
  }
});

document.addEventListener('keydown', (e) => {
  if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
    e.preventDefault();
    stepRoom(e.key === 'ArrowUp' ? -1 : 1);
  } else if (e.key === 'Escape' && $('app').classList.contains('nav-open')) {
    closeNav();
  } else if (e.key === 'Escape' && $('room-actions').classList.contains('open')) {
    setMore(false);
    $('btn-more').focus();
  }
});

document.addEventListener('visibilitychange', () => {
  if (document.hidden) { stopTyping(); return; }
  const v = S.views.get(S.active);
  if (v) v.markRead();
  renderRooms();
});

function renderPendingAll() {
  const v = S.views.get(S.active);
  if (v) v.renderPending();
  renderBanner();
}

function renderMe() {
  $('me-name').textContent = S.me || '';
  $('me-avatar').replaceChildren();
  if (S.me) {
    $('me-avatar').style.setProperty('--hue', hue(S.me));
    $('me-avatar').className = 'avatar small';
    $('me-avatar').textContent = [...S.me][0];
  }
}

boot();
