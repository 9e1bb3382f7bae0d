// Screenshots of the web chat for docs/ (docs/img/client-*.png), made with the
// browser tests' tooling: scripts/browser-test --screenshots. It fills a fresh
// cluster with a small team's conversation through the REST API, then takes
// each picture in Chromium.
import fs from 'node:fs';
import path from 'node:path';
import {
  BASE, ROOT, launch, openPage, waitOpen, restCommand, createRoom, sleep,
} from './lib.mjs';

const OUT = path.join(ROOT, 'docs', 'img');
fs.mkdirSync(OUT, { recursive: true });

// A fresh store is expected (scripts/browser-test --screenshots starts one):
// these rooms and people must not exist yet.
const [me, jonas, priya, sam] = ['maya', 'jonas', 'priya', 'sam'];
const R = (name) => name;

async function post(room, user, message, extra = {}) {
  return restCommand(BASE, `/rooms/${encodeURIComponent(room)}/messages`, user, { message, ...extra });
}
const join = (room, user) => restCommand(BASE, `/rooms/${encodeURIComponent(room)}/join`, user);
const react = (room, user, seq, emoji) => restCommand(BASE, `/rooms/${encodeURIComponent(room)}/react`, user, { seq, emoji });
const edit = (room, user, seq, message) => restCommand(BASE, `/rooms/${encodeURIComponent(room)}/edit`, user, { seq, message });

async function seed() {
  const general = R('general');
  const design = R('design');
  const release = R('release-train');
  const random = R('random');
  for (const [room, owner] of [[general, priya], [design, jonas], [release, sam], [random, sam], [R('ops'), priya], [R('onboarding'), priya]]) {
    await createRoom(BASE, room, owner);
  }
  for (const user of [jonas, sam, me]) await join(general, user);
  for (const user of [priya, me]) await join(design, user);
  for (const user of [priya, jonas, me]) await join(release, user);
  await join(random, me);

  const m1 = await post(general, priya, 'Morning! Staging is green again 🎉');
  await post(general, jonas, 'Nice. Was it the migration lock?');
  const m3 = await post(general, priya, 'Yes: a stuck job held the advisory lock. The migration now gives up after 30 s instead of waiting forever.');
  const m4 = await post(general, sam, 'Can that go into the runbook?');
  await post(general, priya, 'Already there, under "Stuck migrations" in docs/operations.md.', { reply_to: m4.seq });
  const m6 = await post(general, me, 'Thanks both. I will review the PR after lunch');
  await edit(general, me, m6.seq, 'Thanks both. I will review the PR after lunch.');
  for (const user of [jonas, sam, me]) await react(general, user, m1.seq, '🎉');
  await react(general, sam, m3.seq, '👍');
  await react(general, me, m3.seq, '👍');
  await react(general, jonas, m4.seq, '👀');
  await post(general, jonas, `@${me} the load test numbers are in: p99 ack 18 ms at 20k connections, two nodes.`, { mentions: [me] });

  await post(design, jonas, `@${me} the new icon set is up for review`, { mentions: [me] });
  await post(design, priya, 'Love the rounded corners.');
  await post(release, sam, 'Release cut at 15:00 today.');
  await post(release, sam, 'Code freeze starts now; fixes only.');
  await post(release, jonas, 'Load test report attached to the release notes.');

  const dm = await restCommand(BASE, `/dm/${encodeURIComponent(me)}`, jonas);
  await post(dm.room, jonas, 'Got a minute for the demo later?');
  await restCommand(BASE, `/dm/${encodeURIComponent(sam)}`, me);

  await createRoom(BASE, R('leads'), priya, true);
  await restCommand(BASE, `/rooms/${R('leads')}/invite`, priya, { user: me });
  return { general, design, release };
}

async function shot(page, name) {
  const file = path.join(OUT, `client-${name}.png`);
  await page.screenshot({ path: file });
  console.log('wrote', path.relative(ROOT, file));
}

const browser = await launch();
try {
  const rooms = await seed();

  // 1. Sign-in (open mode: pick a name).
  {
    const p = await openPage(browser, { name: 'signin', viewport: { width: 900, height: 620 } });
    await p.waitForSelector('#signin:not([hidden])');
    await p.fill('#signin-name', me);
    await shot(p, 'signin');
    await p.context().close();
  }

  // 2. The chat on a desktop: a room with replies, an edit, reactions, a
  //    mention, members with presence and roles; badges on other rooms;
  //    someone typing.
  const desk = await openPage(browser, { name: 'maya', user: me, room: rooms.general, viewport: { width: 1280, height: 800 } });
  await waitOpen(desk);
  await desk.locator('#items .msg', { hasText: 'load test numbers' }).waitFor();
  const other = await openPage(browser, { name: 'jonas', user: jonas, room: rooms.general, viewport: { width: 800, height: 600 } });
  await waitOpen(other);
  await desk.locator(`#member-list .member.online[data-user="${jonas}"]`).waitFor({ timeout: 30000 });
  await other.locator('#input').pressSequentially('I can walk you through', { delay: 20 });
  await desk.locator('#typing', { hasText: 'typing' }).waitFor();
  await desk.mouse.move(5, 5);
  await shot(desk, 'chat');

  // 3. The same in the dark.
  const dark = await openPage(browser, { name: 'maya-dark', user: me, room: rooms.general, viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
  await waitOpen(dark);
  await dark.locator('#items .msg', { hasText: 'load test numbers' }).waitFor();
  await dark.locator('#items .msg', { hasText: 'Already there' }).hover();
  await shot(dark, 'dark');
  await dark.context().close();

  // 4. The directory of public rooms.
  await desk.click('#btn-browse');
  await desk.locator('#browse-list li').first().waitFor();
  await shot(desk, 'browse');
  await desk.keyboard.press('Escape');

  // 5. Connection lost: the state is shown, and what is sent waits.
  await desk.context().setOffline(true);
  await desk.evaluate(() => window.confab.client._ws && window.confab.client._ws.close());
  await desk.locator('#conn[data-state=reconnecting]').waitFor();
  await desk.fill('#input', 'Sent from the train: this goes out when the connection is back.');
  await desk.press('#input', 'Enter');
  await desk.locator('#pending .msg').waitFor();
  await sleep(300);
  await shot(desk, 'reconnecting');
  await desk.context().setOffline(false);
  await desk.locator('#conn[data-state=open]').waitFor({ timeout: 40000 });
  await desk.locator('#pending .msg').waitFor({ state: 'detached', timeout: 20000 });
  await other.context().close();
  await desk.context().close();

  // 6. A phone: the room, then the room list.
  const phone = await openPage(browser, { name: 'phone', user: me, room: rooms.release, viewport: { width: 390, height: 780 }, deviceScaleFactor: 2 });
  await waitOpen(phone);
  await phone.locator('#items .msg', { hasText: 'Load test report' }).waitFor();
  await shot(phone, 'phone');
  await phone.click('#btn-menu');
  await sleep(400);
  await shot(phone, 'phone-rooms');
  await phone.context().close();
} finally {
  await browser.close();
}
