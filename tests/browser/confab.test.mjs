// static/confab.js on its own, in node, against a scripted fake WebSocket:
// resume with since, queued sends that keep their client_msg_id, the epoch
// check, backoff with full jitter, /whoami in token mode, never throwing.
// No browser and no server needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Confab, ConfabError } from '../../static/confab.js';

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000, reason = '') { this.serverClose(code, reason); }
  // What the test does as the server:
  accept(hello) {
    this.readyState = 1;
    this.onopen && this.onopen();
    this.recv({ type: 'hello', node: 'node-a', protocol: 1, epoch: 'e1', user_id: 'alice', limits: { max_frame_bytes: 65536, rate_per_sec: 50, rate_burst: 100 }, ...hello });
  }
  recv(frame) { this.onmessage && this.onmessage({ data: JSON.stringify(frame) }); }
  serverClose(code = 1006, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  last(type) { return [...this.sent].reverse().find((f) => f.type === type); }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

async function nextSocket(n) {
  for (let i = 0; i < 200 && FakeSocket.all.length < n; i++) await tick(5);
  assert.ok(FakeSocket.all.length >= n, `socket #${n} was opened`);
  return FakeSocket.all[n - 1];
}

function client(opts = {}) {
  FakeSocket.all = [];
  const c = new Confab({ url: 'ws://chat.test/ws', userId: 'alice', WebSocket: FakeSocket, backoffInitial: 5, backoffMax: 20, ...opts });
  const seen = { events: [], states: [], resets: [], gaps: [], joined: [] };
  c.on('event', (e) => seen.events.push(e.seq));
  c.on('state', (s) => seen.states.push(s));
  c.on('reset', (r) => seen.resets.push(r));
  c.on('gap', (g) => seen.gaps.push(g));
  c.on('joined', (j) => seen.joined.push(j));
  return { c, seen };
}

const ev = (seq, extra = {}) => ({ type: 'message', room: 'r', seq, id: seq, user_id: 'bob', message: 'm' + seq, ...extra });

test('resumes with since, delivers each event once, and queues sends with their client_msg_id', async () => {
  const { c, seen } = client();
  c.connect();
  const s1 = await nextSocket(1);
  assert.match(s1.url, /\?user_id=alice$/);
  s1.accept();
  const joined = c.join('r');
  const j1 = s1.last('join');
  assert.equal(j1.since, undefined, 'a first join has no since');
  s1.recv(ev(1, { type: 'join', user_id: 'alice' }));
  s1.recv({ type: 'ack', ref: j1.ref, command: 'join', room: 'r', seq: 1, id: 1 });
  await joined;
  s1.recv(ev(2));
  s1.recv(ev(3));
  assert.deepEqual(seen.events, [1, 2, 3]);

  // A message sent just before the drop, and one while disconnected.
  const m1 = c.message('r', 'in flight');
  const sentM1 = s1.last('message');
  assert.ok(sentM1.client_msg_id, 'a message gets a client_msg_id');
  s1.serverClose(1006);
  assert.equal(c.state, 'reconnecting');
  const m2 = c.message('r', 'while away');
  assert.equal(c.waiting, 2);

  const s2 = await nextSocket(2);
  s2.accept();
  const [rejoin, r1, r2] = s2.sent;
  assert.deepEqual([rejoin.type, rejoin.room, rejoin.since], ['join', 'r', 3], 'rejoined with since = the last seq seen');
  assert.equal(r1.client_msg_id, sentM1.client_msg_id, 'the retry keeps its client_msg_id');
  assert.equal(r1.message, 'in flight');
  assert.equal(r2.message, 'while away');
  // The replay overlaps what was seen; live events wait for the ack.
  s2.recv(ev(3));
  s2.recv(ev(4, { client_msg_id: sentM1.client_msg_id, user_id: 'alice' }));
  s2.recv(ev(5, { client_msg_id: r2.client_msg_id, user_id: 'alice' }));
  assert.deepEqual(seen.events, [1, 2, 3], 'held until the join is acked');
  s2.recv({ type: 'ack', ref: rejoin.ref, command: 'join', room: 'r', seq: 5, recovered: true });
  assert.deepEqual(seen.events, [1, 2, 3, 4, 5]);
  s2.recv({ type: 'ack', ref: r1.ref, command: 'message', room: 'r', seq: 4, id: 4, duplicate: true });
  s2.recv({ type: 'ack', ref: r2.ref, command: 'message', room: 'r', seq: 5, id: 5 });
  assert.equal((await m1).duplicate, true);
  assert.equal((await m2).seq, 5);
  assert.equal(c.waiting, 0);
  assert.equal(seen.joined.at(-1).resumed, true);
  c.disconnect();
});

test('a replay refused (recovered: false) is reported as a gap to page with history', async () => {
  const { c, seen } = client();
  c.connect();
  const s1 = await nextSocket(1);
  s1.accept();
  c.join('r', { since: 10 });
  const j = s1.last('join');
  assert.equal(j.since, 10);
  s1.recv({ type: 'ack', ref: j.ref, command: 'join', room: 'r', seq: 20000, recovered: false });
  assert.deepEqual(seen.gaps, [{ room: 'r', after: 10, before: 20001, recovered: false }]);
  s1.recv(ev(20001));
  assert.deepEqual(seen.events, [20001]);
  c.disconnect();
});

test('a new epoch drops every room and position and emits reset', async () => {
  const { c, seen } = client();
  c.connect();
  const s1 = await nextSocket(1);
  s1.accept({ epoch: 'old' });
  c.join('r');
  const j = s1.last('join');
  s1.recv({ type: 'ack', ref: j.ref, command: 'join', room: 'r', seq: 7 });
  s1.serverClose(1001);
  const queued = c.message('r', 'for the old store');
  const s2 = await nextSocket(2);
  s2.accept({ epoch: 'new' });
  assert.equal(seen.resets.length, 1);
  assert.deepEqual(seen.resets[0], { previousEpoch: 'old', epoch: 'new', rooms: ['r'] });
  assert.deepEqual(c.subscriptions(), []);
  assert.equal(s2.sent.filter((f) => f.type === 'join').length, 0, 'no since from another store is sent');
  await assert.rejects(queued, (e) => e instanceof ConfabError && e.code === 'epoch_changed');
  c.disconnect();
});

test('never throws: requests wait for the connection, or reject; typing resolves null', async () => {
  const { c } = client({ requestTimeout: 300 });
  const early = c.history('r'); // before connect(): sent after the first hello
  const unanswered = c.members('r');
  c.connect();
  const s1 = await nextSocket(1);
  assert.equal(s1.sent.length, 0, 'nothing is sent before hello');
  s1.accept();
  const h = s1.last('history');
  s1.recv({ type: 'history', ref: h.ref, room: 'r', events: [], more: false });
  assert.deepEqual((await early).events, []);
  await assert.rejects(unanswered, (e) => e instanceof ConfabError && e.code === 'timeout');
  s1.readyState = 2; // closing under our feet, before onclose
  const inFlight = c.rooms();
  s1.serverClose(1006);
  await assert.rejects(inFlight, (e) => e.code === 'disconnected', 'in flight when the socket closed');
  assert.equal(await c.typing('r', true), null);
  await assert.rejects(c.bans('r'), (e) => e.code === 'timeout', 'no connection within requestTimeout');
  c.disconnect();
  await assert.rejects(c.members('r'), (e) => e.code === 'closed');
  await assert.rejects(c.message('r', 'x'), (e) => e.code === 'closed');
});

test('reconnects with exponential backoff and full jitter, capped; 1001 at once', async () => {
  const { c, seen } = client({ backoffInitial: 500, backoffMax: 30000 });
  const random = Math.random;
  Math.random = () => 0.999999;
  try {
    c.connect();
    for (let i = 1; i <= 8; i++) {
      const s = await nextSocket(i);
      s.serverClose(1006);
      c.reconnectNow();
    }
  } finally {
    Math.random = random;
  }
  const delays = seen.states.filter((s) => s.state === 'reconnecting').map((s) => s.delay);
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  const s9 = await nextSocket(9);
  s9.accept();
  s9.serverClose(1001);
  const last = seen.states.at(-1);
  assert.equal(last.state, 'reconnecting');
  assert.ok(last.delay <= 250, 'a node shutting down (1001): reconnect at once');
  c.disconnect();
});

test('token mode: the token goes in ?token=; after a close /whoami tells an expired token from a node that is down', async () => {
  const answers = [];
  const fetch = async (url, opts) => {
    answers.push([url, opts.headers.Authorization]);
    const a = fetch.next.shift();
    if (a === 'down') throw new TypeError('fetch failed');
    return { status: a.status, json: async () => a.body };
  };
  fetch.next = [];
  const { c, seen } = client({ userId: undefined, token: () => 'T1', fetch });
  const auth = [];
  c.on('auth_error', (e) => auth.push(e.code));
  c.connect();
  const s1 = await nextSocket(1);
  assert.match(s1.url, /\?token=T1$/);
  s1.accept();
  // The node dies: /whoami does not answer; it keeps trying.
  fetch.next.push('down', { status: 200, body: { mode: 'token', user_id: 'alice' } });
  s1.serverClose(1006);
  const s2 = await nextSocket(2);
  assert.equal(answers[0][0], 'http://chat.test/whoami');
  assert.equal(answers[0][1], 'Bearer T1');
  assert.equal(answers.length, 2, 'asked again after the node was down, then connected');
  assert.equal(seen.states.filter((s) => s.state === 'reconnecting').length, 2);
  s2.accept();
  // The token expires (4001): /whoami says so; the page is told, no retry.
  fetch.next.push({ status: 401, body: { type: 'error', code: 'token_expired', message: 'the token has expired: get a new one' } },
    { status: 401, body: { type: 'error', code: 'token_expired', message: 'the token has expired: get a new one' } });
  s2.serverClose(4001);
  for (let i = 0; i < 100 && c.state !== 'closed'; i++) await tick(5);
  assert.equal(c.state, 'closed');
  assert.deepEqual(auth, ['token_expired']);
  assert.equal(FakeSocket.all.length, 2, 'no handshake with a token known to be expired');
});

test('a rate-limited or unavailable durable send is retried with the same client_msg_id', async () => {
  const { c } = client();
  c.connect();
  const s1 = await nextSocket(1);
  s1.accept();
  const p = c.react('r', 3, '👍');
  const first = s1.last('react');
  s1.recv({ type: 'error', ref: first.ref, code: 'unavailable', message: 'later', room: 'r' });
  for (let i = 0; i < 100 && s1.sent.filter((f) => f.type === 'react').length < 2; i++) await tick(20);
  const second = s1.sent.filter((f) => f.type === 'react')[1];
  assert.equal(second.client_msg_id, first.client_msg_id);
  s1.recv({ type: 'ack', ref: second.ref, command: 'react', room: 'r', seq: 4, id: 4 });
  assert.equal((await p).seq, 4);
  // Other errors reject at once.
  const q = c.edit('r', 3, 'x');
  s1.recv({ type: 'error', ref: s1.last('edit').ref, code: 'not_author', message: 'no', room: 'r' });
  await assert.rejects(q, (e) => e.code === 'not_author' && e.room === 'r');
  c.disconnect();
});
