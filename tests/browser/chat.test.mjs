// The web chat in Chromium, through nginx in front of two nodes (issue 12):
//   1. two pages chat in a room;
//   3. an edit, a delete and a reaction on one page appear on the other;
//   4. an unread badge appears and clears;
//   2. the node one page is connected to is SIGKILLed: the page reconnects
//      to the other node and shows every message once and in order,
//      including those sent while it was away (after 1, 3 and 4: it leaves
//      one node);
// and: token mode (sign-in, expiry through /whoami), and a new epoch.
// Run by scripts/browser-test (node --test). A failure saves a screenshot
// and the console log of each page under target/browser/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  BASE, NODES, NODE_PIDS, launch, openPage, withArtifacts, waitOpen, nodeOf, messageTexts,
  unique, postMessage, createRoom, restCommand, sleep, TOKEN_URL, TOKEN_SECRET, signToken,
} from './lib.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { if (browser) await browser.close(); });

const T = 20000; // how long the page may take to show something

async function send(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

async function waitText(page, text, timeout = T) {
  await page.locator('#items .msg .text', { hasText: text }).first().waitFor({ timeout });
}

async function roomShown(page, room) {
  await page.locator('#room-name', { hasText: room }).waitFor({ timeout: T });
}

/** Wait until the page shows exactly `want` (texts, in order). */
async function waitMessages(page, want, timeout = T) {
  const until = Date.now() + timeout;
  let got;
  for (;;) {
    got = await messageTexts(page);
    if (JSON.stringify(got) === JSON.stringify(want)) return got;
    if (Date.now() > until) break;
    await sleep(100);
  }
  assert.deepEqual(got, want, 'the messages the page shows');
  return got;
}

async function closeAll(...pages) {
  for (const p of pages) if (p) await p.context().close().catch(() => {});
}

test('two pages chat in a room through nginx', { timeout: 90000 }, async (t) => {
  const tag = unique('t1');
  const room = 'lobby-' + tag;
  const [alice, bob] = ['alice-' + tag, 'bob-' + tag];
  await createRoom(BASE, room, alice);
  const pa = await openPage(browser, { name: 'alice', user: alice, room });
  const pb = await openPage(browser, { name: 'bob', user: bob, room });
  await withArtifacts(t, [pa, pb], async () => {
    await Promise.all([waitOpen(pa), waitOpen(pb)]);
    await Promise.all([roomShown(pa, room), roomShown(pb, room)]);
    t.diagnostic(`alice on ${await nodeOf(pa)}, bob on ${await nodeOf(pb)}`);

    await send(pa, 'Hi Bob, can you read me?');
    await waitText(pb, 'Hi Bob, can you read me?');
    await send(pb, 'Loud and clear, Alice.');
    await waitText(pa, 'Loud and clear, Alice.');
    const want = ['Hi Bob, can you read me?', 'Loud and clear, Alice.'];
    await waitMessages(pa, want);
    await waitMessages(pb, want);
    // Bob joined through the link: the member list shows both, online.
    await pa.locator(`#member-list .member.online[data-user="${bob}"]`).waitFor({ timeout: 30000 });
    // Bob's message is Bob's.
    const author = await pa.locator('#items .msg', { hasText: 'Loud and clear' }).getAttribute('data-user');
    assert.equal(author, bob);
  });
  await closeAll(pa, pb);
});

test('an edit, a delete and a reaction on one page appear on the other', { timeout: 90000 }, async (t) => {
  const tag = unique('t3');
  const room = 'edits-' + tag;
  const [alice, bob] = ['alice-' + tag, 'bob-' + tag];
  await createRoom(BASE, room, alice);
  const pa = await openPage(browser, { name: 'alice', user: alice, room });
  const pb = await openPage(browser, { name: 'bob', user: bob, room });
  await withArtifacts(t, [pa, pb], async () => {
    await Promise.all([waitOpen(pa), waitOpen(pb)]);
    await Promise.all([roomShown(pa, room), roomShown(pb, room)]);
    for (const m of ['Typo in this one', 'This one goes away', 'React to this']) await send(pa, m);
    await waitMessages(pb, ['Typo in this one', 'This one goes away', 'React to this']);

    const msgA = (text) => pa.locator('#items .msg', { hasText: text });
    const msgB = (text) => pb.locator('#items .msg', { hasText: text });

    // Edit: the message's Edit action fills the composer; Enter saves.
    await msgA('Typo in this one').hover();
    await msgA('Typo in this one').locator('[data-act=edit]').click();
    await pa.locator('#compose-context', { hasText: 'Editing' }).waitFor();
    await pa.fill('#input', 'No typo in this one');
    await pa.press('#input', 'Enter');
    await msgB('No typo in this one').locator('.edited').waitFor({ timeout: T });

    // Delete, through the confirmation dialog.
    await msgA('This one goes away').hover();
    await msgA('This one goes away').locator('[data-act=delete]').click();
    await pa.click('#confirm-ok');
    await pb.locator('#items .msg .text.deleted').waitFor({ timeout: T });
    assert.equal(await msgB('This one goes away').count(), 0, 'the deleted text is gone from the other page');

    // React from the keyboard: focus the message, "+" opens the picker.
    await msgA('React to this').focus();
    await pa.keyboard.press('+');
    await pa.locator('#picker button[title="👍"]').click();
    const reactionB = msgB('React to this').locator('.reaction[data-emoji="👍"]');
    await reactionB.locator('.n', { hasText: '1' }).waitFor({ timeout: T });
    // Bob adds his: both pages count 2, and Bob's button is pressed.
    await reactionB.click();
    await msgA('React to this').locator('.reaction[data-emoji="👍"] .n', { hasText: '2' }).waitFor({ timeout: T });
    await pb.locator('#items .msg', { hasText: 'React to this' }).locator('.reaction[aria-pressed=true]').waitFor({ timeout: T });

    // What the server holds agrees.
    const res = await fetch(`${BASE}/rooms/${room}/events?limit=100`).then((r) => r.json());
    const msgs = res.events.filter((e) => e.type === 'message');
    assert.equal(msgs[0].message, 'No typo in this one');
    assert.equal(msgs[1].deleted, true);
    assert.equal(msgs[2].reactions['👍'].count, 2);
  });
  await closeAll(pa, pb);
});

test('an unread badge appears and clears', { timeout: 90000 }, async (t) => {
  const tag = unique('t4');
  const [busy, quiet] = ['busy-' + tag, 'quiet-' + tag];
  const [alice, bob] = ['alice-' + tag, 'bob-' + tag];
  await createRoom(BASE, busy, alice);
  await createRoom(BASE, quiet, alice);
  await restCommand(BASE, `/rooms/${busy}/join`, bob);
  const pa = await openPage(browser, { name: 'alice', user: alice, room: quiet });
  await withArtifacts(t, [pa], async () => {
    await waitOpen(pa);
    await roomShown(pa, quiet);
    const item = pa.locator(`#list-rooms .room-item[data-room="${busy}"]`);
    await item.waitFor({ timeout: T });
    assert.equal(await item.locator('.badge').count(), 0, 'no badge before anything is posted');

    await postMessage(BASE, busy, bob, 'one');
    await postMessage(BASE, busy, bob, 'two');
    await item.locator('[data-badge=unread]', { hasText: '2' }).waitFor({ timeout: T });
    // A mention gets its own badge.
    await restCommand(BASE, `/rooms/${busy}/messages`, bob, { message: `@${alice} are you there?`, mentions: [alice] });
    await item.locator('[data-badge=unread]', { hasText: '3' }).waitFor({ timeout: T });
    await item.locator('[data-badge=mentions]', { hasText: '@1' }).waitFor({ timeout: T });
    // The server counts the same (a `rooms` refresh keeps the badge).
    await pa.evaluate(() => window.confab.refreshRooms());
    await item.locator('[data-badge=unread]', { hasText: '3' }).waitFor({ timeout: T });

    // Opening the room clears it, and the read marker moves on the server.
    await item.click();
    await roomShown(pa, busy);
    await waitText(pa, 'are you there?');
    await pa.locator(`#list-rooms .room-item[data-room="${busy}"] .badge`).waitFor({ state: 'detached', timeout: T });
    await pa.locator(`#list-rooms .room-item[data-room="${quiet}"]`).click();
    await roomShown(pa, quiet);
    await sleep(500);
    await pa.evaluate(() => window.confab.refreshRooms());
    await sleep(300);
    assert.equal(await item.locator('.badge').count(), 0, 'the badge stays cleared after a refresh from the server');
    await pa.reload();
    await waitOpen(pa);
    await pa.locator(`#list-rooms .room-item[data-room="${busy}"]`).waitFor({ timeout: T });
    assert.equal(await pa.locator(`#list-rooms .room-item[data-room="${busy}"] .badge`).count(), 0, 'and after a reload');
  });
  await closeAll(pa);
});

test('a page whose node is SIGKILLed moves to the other node and misses nothing', { timeout: 120000 }, async (t) => {
  const tag = unique('t2');
  const room = 'failover-' + tag;
  const [alice, bob] = ['alice-' + tag, 'bob-' + tag];
  await createRoom(BASE, room, alice);
  await restCommand(BASE, `/rooms/${room}/join`, bob);
  const pa = await openPage(browser, { name: 'alice', user: alice, room });
  const pb = await openPage(browser, { name: 'bob', user: bob, room });
  await withArtifacts(t, [pa, pb], async () => {
    await Promise.all([waitOpen(pa), waitOpen(pb)]);
    await Promise.all([roomShown(pa, room), roomShown(pb, room)]);
    await send(pa, 'before 1');
    await waitText(pb, 'before 1');
    await send(pb, 'before 2');
    await waitText(pa, 'before 2');

    const victim = await nodeOf(pa);
    const pid = Number(NODE_PIDS[victim]);
    const others = Object.keys(NODES).filter((n) => n !== victim);
    assert.ok(pid && others.length,
      `no pid for ${victim} or no other node: set CONFAB_NODE_PIDS and CONFAB_NODES, or run scripts/browser-test, which starts them`);
    const survivor = others[0];
    const survivorUrl = NODES[survivor];
    t.diagnostic(`alice on ${victim} (pid ${pid}); bob on ${await nodeOf(pb)}; killing ${victim}`);

    // Hold the page's JavaScript still, so that nothing it does can happen
    // before the messages below are committed: they are all sent while it is
    // away. Its socket dies with the node all the same.
    const cdp = await pa.context().newCDPSession(pa);
    await cdp.send('Debugger.enable');
    await cdp.send('Debugger.pause');
    process.kill(pid, 'SIGKILL');
    const away = [];
    for (let i = 1; i <= 5; i++) {
      const text = `while away ${i}`;
      await postMessage(survivorUrl, room, bob, text, `away-${tag}-${i}`);
      away.push(text);
    }
    const postedAt = Date.now();
    await cdp.send('Debugger.resume');
    await cdp.detach();

    // The page notices, reconnects through nginx (to the node left), and
    // resumes with since.
    await pa.waitForFunction((v) => window.confab.client.state === 'open' && window.confab.client.node !== v, victim, { timeout: 45000 });
    assert.equal(await nodeOf(pa), survivor);
    // Bob's page too, if it was on the same node; then both write again.
    await waitOpen(pb, 45000);
    await send(pb, 'after 1');
    await waitText(pa, 'after 1');
    await send(pa, 'after 2');

    const want = ['before 1', 'before 2', ...away, 'after 1', 'after 2'];
    await waitMessages(pa, want, 30000);
    await waitMessages(pb, want, 30000);
    // Nothing waits to be sent, and the store holds each message once.
    assert.equal(await pa.locator('#pending .msg').count(), 0);
    const res = await fetch(`${survivorUrl}/rooms/${room}/events?limit=100`).then((r) => r.json());
    assert.deepEqual(res.events.filter((e) => e.type === 'message').map((e) => e.message), want);
    // The page noticed the loss only after the messages were committed, and
    // came back by resuming: a join with since that the server replayed.
    const journal = await pa.evaluate(() => window.confab.journal);
    const lost = journal.find((j) => j.what === 'state' && j.state === 'reconnecting');
    assert.ok(lost && lost.at >= postedAt, 'the page was away while the messages were sent');
    const rejoin = journal.find((j) => j.what === 'joined' && j.room === room && j.at > lost.at);
    assert.ok(rejoin, 'the page joined the room again');
    assert.equal(rejoin.resumed, true, 'with since');
    assert.equal(rejoin.recovered, true, 'and the server replayed what it missed');
    assert.ok(!journal.some((j) => j.what === 'gap'), 'no gap to fill from history');
  });
  await closeAll(pa, pb);
});

test('token mode: a token signs in, and an expired one sends the page back to sign-in', { timeout: 90000 }, async (t) => {
  assert.ok(TOKEN_URL && TOKEN_SECRET,
    'no token-mode node: set CONFAB_TOKEN_URL and CONFAB_TOKEN_SECRET, or run scripts/browser-test, which starts one');
  const carol = unique('carol');
  // The token comes in the link; the page takes it out of the address bar.
  const pc = await openPage(browser, { name: 'carol', base: TOKEN_URL, query: `token=${signToken(carol, 4)}` });
  await withArtifacts(t, [pc], async () => {
    await waitOpen(pc);
    assert.equal(await pc.textContent('#me-name'), carol);
    assert.ok(!pc.url().includes('token='), 'the token is not left in the URL');
    // The server closes the socket when the token expires (4001); the page
    // asks /whoami, learns the token expired, and asks for a new one.
    await pc.locator('#signin-error', { hasText: 'expired' }).waitFor({ timeout: 20000 });
    assert.equal(await pc.isVisible('#signin-token-input'), true);
    const journal = await pc.evaluate(() => window.confab.journal);
    assert.ok(journal.some((j) => j.what === 'state' && j.code === 4001), 'closed with 4001');
    // A pasted fresh token signs in again.
    await pc.fill('#signin-token-input', signToken(carol, 600));
    await pc.click('#signin-form button[type=submit]');
    await waitOpen(pc);
    assert.equal(await pc.textContent('#me-name'), carol);
    // A token signed with another key is refused, and the page says so.
    await pc.click('#btn-signout');
    await pc.fill('#signin-token-input', signToken(carol, 600, 'another secret that is 32 bytes long!'));
    await pc.click('#signin-form button[type=submit]');
    await pc.locator('#signin-error', { hasText: 'refused' }).waitFor({ timeout: 20000 });
  });
  await closeAll(pc);
});

test('a new epoch (a new store behind the same address) drops what the page knew and reloads', { timeout: 90000 }, async (t) => {
  const bin = process.env.CONFAB_BIN;
  assert.ok(bin, 'CONFAB_BIN is not set: build with cargo build and run scripts/browser-test, which sets it');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'confab-epoch-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const db = path.join(dir, 'confab.db');
  const start = () => spawn(bin, [], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), SQLITE_PATH: db, NODE_ID: 'node-epoch', WORKERS: '1', DATABASE_URL: '', REDIS_URL: '', AUTH_SECRET: '' },
    stdio: 'ignore',
  });
  const healthy = async () => {
    for (let i = 0; i < 300; i++) {
      try { if ((await fetch(base + '/health')).ok) return; } catch (_) { /* not yet */ }
      await sleep(100);
    }
    throw new Error('the epoch node did not start');
  };
  const wipe = () => { for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true }); };
  let node = start();
  let pe;
  try {
    await healthy();
    const [eve, room] = ['eve', 'town'];
    await createRoom(base, room, eve);
    await postMessage(base, room, eve, 'from the old store');
    pe = await openPage(browser, { name: 'eve', user: eve, room, base });
    await withArtifacts(t, [pe], async () => {
      await waitOpen(pe);
      await waitText(pe, 'from the old store');
      const before = await pe.evaluate(() => window.confab.client.epoch);
      // The store is replaced while the page cannot act: the node dies, its
      // SQLite file goes, a node starts on a new one with the same room name.
      const cdp = await pe.context().newCDPSession(pe);
      await cdp.send('Debugger.enable');
      await cdp.send('Debugger.pause');
      node.kill('SIGKILL');
      await new Promise((r) => node.once('exit', r));
      wipe();
      node = start();
      await healthy();
      await createRoom(base, room, eve);
      await postMessage(base, room, eve, 'from the new store');
      await cdp.send('Debugger.resume');
      await cdp.detach();

      await pe.waitForFunction((e) => window.confab.client.state === 'open' && window.confab.client.epoch !== e, before, { timeout: 45000 });
      await waitMessages(pe, ['from the new store'], 30000);
      const journal = await pe.evaluate(() => window.confab.journal);
      assert.ok(journal.some((j) => j.what === 'reset'), 'the client reported the new epoch');
      const resumed = journal.filter((j) => j.what === 'joined' && j.resumed);
      assert.equal(resumed.length, 0, 'no since from the old store was sent to the new one');
    });
  } finally {
    if (pe) await closeAll(pe);
    node.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
    srv.on('error', reject);
  });
}
