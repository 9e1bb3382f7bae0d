import { launch, openPage, waitOpen, BASE, sleep } from './lib.mjs';
const browser = await launch();
const a = await openPage(browser, { user: 'ann', name: 'ann', room: 'secret-plans', viewport: { width: 390, height: 780 } });
try {
  await waitOpen(a);
  await a.locator('#items .msg').first().waitFor();
  await a.click('#btn-more');
  await sleep(300);
  await a.screenshot({ path: '/tmp/x-phone-more.png' });
} finally { console.log(a.consoleLog.filter(l => /error|warn/.test(l)).join('\n')); await browser.close(); }
