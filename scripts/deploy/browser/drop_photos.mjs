// Drops photos on kestrel-serve's page in headless Chromium and prints the result cards.
//
//   node drop_photos.mjs URL SCREENSHOT.png PHOTO...
//
// Prints one JSON line: {"cards": [{"name", "label", "error"}]} once every card is done
// (30 s at most). Uses Debian's chromium (/usr/bin/chromium, or $CHROMIUM) through
// playwright-core; no browser is downloaded. The page is loaded from the server only:
// every other request is blocked, so a page that needed the network would fail here.
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

const [url, shot, ...photos] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  const origin = new URL(url).origin;
  await page.route('**/*', route => (route.request().url().startsWith(origin) ? route.continue() : route.abort()));
  await page.goto(url);
  const files = photos.map(p => ({ name: basename(p), b64: readFileSync(p).toString('base64') }));
  const dt = await page.evaluateHandle(files => {
    const dt = new DataTransfer();
    for (const f of files) {
      const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
      dt.items.add(new File([bytes], f.name, { type: 'image/jpeg' }));
    }
    return dt;
  }, files);
  await page.dispatchEvent('#drop', 'dragover', { dataTransfer: dt });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
  await page.waitForFunction(n => document.querySelectorAll('.card.done').length === n, photos.length, { timeout: 30000 });
  await page.screenshot({ path: shot, fullPage: true });
  const cards = await page.$$eval('.card', cs => cs.map(c => ({ name: c.dataset.name, label: c.dataset.label || null, error: c.dataset.error || null })));
  console.log(JSON.stringify({ cards }));
} finally {
  await browser.close();
}
