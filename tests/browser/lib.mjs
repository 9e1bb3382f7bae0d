// Shared by the browser tests and the screenshot script: launch Debian's
// Chromium through playwright-core, open pages on the cluster scripts/browser-test
// started (or the one named by CONFAB_URL), keep each page's console, and save
// a screenshot and that log under target/browser/ when a test fails.
import { chromium } from 'playwright-core';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../..');
export const STATIC = path.join(ROOT, 'static');
export const OUT = path.join(ROOT, 'target', 'browser');

export const BASE = (process.env.CONFAB_URL || '').replace(/\/$/, '');
if (!BASE) {
  console.error('CONFAB_URL is not set: run scripts/browser-test, or see its --help');
  process.exit(2);
}

function parseSpec(s) {
  const out = {};
  for (const part of (s || '').split(',').filter(Boolean)) {
    const i = part.indexOf('=');
    out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}
/** NODE_ID -> the node's own URL. */
export const NODES = parseSpec(process.env.CONFAB_NODES);
/** NODE_ID -> pid. */
export const NODE_PIDS = parseSpec(process.env.CONFAB_NODE_PIDS);
/** A node in token mode, and the secret its tokens are signed with. */
export const TOKEN_URL = (process.env.CONFAB_TOKEN_URL || '').replace(/\/$/, '');
export const TOKEN_SECRET = process.env.CONFAB_TOKEN_SECRET || '';

/** An HS256 JWT for `sub`, expiring `ttl` seconds from now. */
export function signToken(sub, ttl, secret = TOKEN_SECRET) {
  const b64 = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64({ sub, iat: now, exp: now + ttl });
  return body + '.' + crypto.createHmac('sha256', secret).update(body).digest('base64url');
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** Launch Chromium. playwright-core gives every launch a fresh
 * --user-data-dir of its own (a temp dir removed on close). */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };
const STATIC_FILES = fs.readdirSync(STATIC).filter((f) => TYPES[path.extname(f)]);

let staticMode = null;
/** How the page's files are served: by the server (the default, checked
 * against static/ on disk, so a stale binary fails the tests), or, with
 * CONFAB_STATIC=disk (editing the client without rebuilding), by Playwright
 * from disk while everything else still goes to the server. */
export async function resolveStaticMode() {
  if (staticMode) return staticMode;
  if ((process.env.CONFAB_STATIC || 'server') === 'disk') return (staticMode = 'disk');
  for (const f of STATIC_FILES) {
    const url = BASE + (f === 'index.html' ? '/' : '/' + f);
    let same = false;
    try {
      const res = await fetch(url);
      same = res.ok && (await res.text()) === fs.readFileSync(path.join(STATIC, f), 'utf8');
    } catch (_) { /* not served */ }
    if (!same) {
      throw new Error(`${url} is not static/${f} as on disk: the binary is older than static/; `
        + 'run cargo build (or CONFAB_STATIC=disk to test the files on disk)');
    }
  }
  return (staticMode = 'server');
}

async function routeStatic(context, base) {
  if ((await resolveStaticMode()) !== 'disk') return;
  const origin = new URL(base).origin;
  // A page Playwright answers has no address Chromium can place, so its
  // Local Network Access checks would refuse its WebSocket to 127.0.0.1.
  await context.grantPermissions(['local-network-access'], { origin });
  await context.route((url) => url.origin === origin && (url.pathname === '/' || url.pathname === '/index.html'
    || STATIC_FILES.includes(url.pathname.slice(1))), async (route) => {
    const p = new URL(route.request().url()).pathname;
    const f = p === '/' ? 'index.html' : p.slice(1);
    await route.fulfill({ status: 200, contentType: TYPES[path.extname(f)], body: fs.readFileSync(path.join(STATIC, f)) });
  });
}

/** A page in a context of its own (its own storage), with its console kept. */
export async function openPage(browser, { name, user, room, viewport = { width: 1200, height: 800 }, query = '', base = BASE, colorScheme = 'light', deviceScaleFactor = 1 } = {}) {
  const context = await browser.newContext({ viewport, deviceScaleFactor, colorScheme });
  await routeStatic(context, base);
  const page = await context.newPage();
  page.label = name || user || 'page';
  page.consoleLog = [];
  const stamp = () => new Date().toISOString().slice(11, 23);
  page.on('console', (m) => page.consoleLog.push(`${stamp()} [${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.consoleLog.push(`${stamp()} [pageerror] ${e.stack || e}`));
  page.on('requestfailed', (r) => page.consoleLog.push(`${stamp()} [requestfailed] ${r.url()} ${r.failure()?.errorText}`));
  page.on('websocket', (ws) => {
    page.consoleLog.push(`${stamp()} [websocket] open ${ws.url().replace(/token=[^&]+/, 'token=…')}`);
    ws.on('close', () => page.consoleLog.push(`${stamp()} [websocket] closed`));
  });
  const q = new URLSearchParams(query);
  if (user) q.set('user', user);
  if (room) q.set('room', room);
  await page.goto(base + '/' + (q.toString() ? '?' + q : ''));
  return page;
}

/** Save a screenshot and the console log of each page, named after the test. */
export async function saveArtifacts(testName, pages) {
  fs.mkdirSync(OUT, { recursive: true });
  const base = testName.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 80);
  for (const page of pages) {
    if (!page) continue;
    const file = path.join(OUT, `${base}-${page.label}`);
    try { await page.screenshot({ path: file + '.png', fullPage: false, timeout: 5000 }); } catch (e) { page.consoleLog.push('screenshot failed: ' + e); }
    fs.writeFileSync(file + '.console.log', page.consoleLog.join('\n') + '\n');
    console.log(`# saved ${path.relative(ROOT, file)}.png and .console.log`);
  }
}

/** Run body(pages) and, when it throws, save each page's artifacts. */
export async function withArtifacts(t, pages, body) {
  try {
    await body();
  } catch (e) {
    await saveArtifacts(t.name, pages);
    throw e;
  }
}

export async function waitOpen(page, timeout = 20000) {
  await page.waitForSelector('body[data-state=open]', { state: 'attached', timeout });
}

export async function nodeOf(page) {
  return page.evaluate(() => window.confab.client && window.confab.client.node);
}

/** The texts of the messages shown, in order (committed ones only). */
export async function messageTexts(page) {
  return page.$$eval('#items .msg .text', (els) => els.map((e) => e.firstChild ? e.innerText.replace(/ \(edited\)$/, '') : ''));
}

export function unique(prefix) {
  return prefix + '-' + Date.now().toString(36) + Math.floor(Math.random() * 1e4).toString(36);
}

/** POST a message through the REST API (as bob, without a page). */
export async function postMessage(baseUrl, room, user, message, clientMsgId) {
  const res = await fetch(`${baseUrl}/rooms/${encodeURIComponent(room)}/messages`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user, message, ...(clientMsgId ? { client_msg_id: clientMsgId } : {}) }),
  });
  const body = await res.json().catch(() => null);
  if (res.status !== 201 && res.status !== 200) throw new Error(`POST ${room} ${res.status} ${JSON.stringify(body)}`);
  return body;
}

export async function createRoom(baseUrl, room, user, priv = false) {
  const res = await fetch(`${baseUrl}/rooms`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user, room, ...(priv ? { private: true } : {}) }),
  });
  if (res.status !== 201) throw new Error(`create ${room}: ${res.status} ${await res.text()}`);
  return res.json();
}

export async function restCommand(baseUrl, pathname, user, body = {}) {
  const res = await fetch(baseUrl + pathname, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user, ...body }),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${pathname}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
