import { launch, openPage, waitOpen, BASE, sleep } from './lib.mjs';
const browser = await launch();
const a = await openPage(browser, { user: 'ann', name: 'ann' });
const b = await openPage(browser, { user: 'ben', name: 'ben' });
const errs = (p) => p.consoleLog.filter(l => /error|warn/.test(l));
try {
  await waitOpen(a); await waitOpen(b);
  // create a private room via dialog
  await a.click('#btn-create');
  await a.fill('#create-name', 'secret-plans');
  await a.check('#create-private');
  await a.press('#create-name', 'Enter');
  await a.locator('#room-name', { hasText: 'secret-plans' }).waitFor();
  // invite ben
  await a.click('#btn-invite');
  await a.fill('#invite-name', 'ben');
  await a.press('#invite-name', 'Enter');
  await sleep(800);
  await b.screenshot({ path: '/tmp/x-ben-invite.png' });
  await b.locator('#list-invites button', { hasText: 'Join' }).click();
  await b.locator('#room-name', { hasText: 'secret-plans' }).waitFor();
  await b.fill('#input', 'hi ann, thanks for the invite @ann');
  await b.press('#input', 'Enter');
  await a.locator('#items .msg', { hasText: 'thanks for the invite' }).waitFor();
  // reply from ann
  await a.locator('#items .msg', { hasText: 'thanks for the invite' }).hover();
  await a.locator('#items .msg', { hasText: 'thanks for the invite' }).locator('[data-act=reply]').click();
  await a.fill('#input', 'welcome!');
  await a.press('#input', 'Enter');
  await b.locator('#items .msg .reply-ref').waitFor();
  // DM from ben to ann
  await b.click('#btn-dm');
  await b.fill('#dm-name', 'ann');
  await b.press('#dm-name', 'Enter');
  await b.locator('#room-name', { hasText: 'ann' }).waitFor();
  await b.fill('#input', 'psst');
  await b.press('#input', 'Enter');
  await a.locator('#list-dms .room-item', { hasText: 'ben' }).waitFor();
  await sleep(500);
  await a.screenshot({ path: '/tmp/x-ann.png' });
  // ann makes ben admin then kicks him
  await a.locator('#list-rooms .room-item', { hasText: 'secret-plans' }).click();
  await a.locator('#member-list .member[data-user=ben]').hover();
  await a.locator('#member-list .member[data-user=ben] button', { hasText: 'Make admin' }).click();
  await a.locator('#member-list .member[data-user=ben] .role', { hasText: 'admin' }).waitFor();
  await a.locator('#member-list .member[data-user=ben]').hover();
  await a.locator('#member-list .member[data-user=ben] button', { hasText: 'Kick' }).click();
  await sleep(1000);
  await b.screenshot({ path: '/tmp/x-ben-kicked.png' });
  // infinite scroll: post 150 messages via REST in a public room, open it
  await fetch(BASE + '/rooms', { method: 'POST', body: JSON.stringify({ user_id: 'ann', room: 'long' }) });
  for (let i = 1; i <= 150; i++) await fetch(BASE + '/rooms/long/messages', { method: 'POST', body: JSON.stringify({ user_id: 'ann', message: 'line ' + i }) });
  await a.evaluate(() => window.confab.refreshRooms());
  await a.locator('#list-rooms .room-item', { hasText: 'long' }).click();
  await a.locator('#items .msg', { hasText: 'line 150' }).waitFor();
  const n1 = await a.locator('#items .msg').count();
  for (let k = 0; k < 6; k++) { await a.evaluate(() => { document.getElementById('log').scrollTop = 0; }); await sleep(400); }
  const n2 = await a.locator('#items .msg').count();
  const texts = await a.$$eval('#items .msg .text', els => els.map(e => e.textContent));
  console.log('loaded', n1, '->', n2, 'first', texts[0], 'last', texts.at(-1), 'ordered', texts.every((t, i) => i === 0 || Number(t.split(' ')[1]) === Number(texts[i-1].split(' ')[1]) + 1));
  await a.screenshot({ path: '/tmp/x-long.png' });
} finally {
  console.log('A:', errs(a).join('\n')); console.log('B:', errs(b).join('\n'));
  await browser.close();
}
