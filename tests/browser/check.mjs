// Drives the Panoptes web page in Debian's Chromium, as a user would, and checks what they
// would see. Run by tests/browser.rs:
//
//   node tests/browser/check.mjs <base-url> <expected text> <screenshot path>
//
// Checks: every camera of /v1/cameras is on the page with a loaded snapshot; searching for
// the text shows a result card with it; clicking that card plays its clip from the
// insight's offset; the page raises no error and breaks no Content-Security-Policy rule;
// when the API answers 401 the page asks for a key, keeps it and sends it (header for
// fetch, access_token for images). Saves a full-page screenshot. Exits non-zero with a
// message on the first failed check; every wait is bounded.
import { chromium } from 'playwright-core';

const [base, expected, screenshot] = process.argv.slice(2);
if (!base || !expected || !screenshot) {
  console.error('usage: node check.mjs <base-url> <expected text> <screenshot path>');
  process.exit(2);
}
const CHROMIUM = process.env.PANOPTES_CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = 150_000;

let browser;
const problems = [];

function fail(message) {
  const err = new Error(message);
  err.check = true;
  throw err;
}

function log(message) {
  console.log(`check.mjs: ${message}`);
}

const norm = (s) => String(s).toUpperCase().replace(/\s+/g, ' ').trim();

// Waits for `fn` in the page to return a truthy value; fails with `what` after `ms`.
async function until(page, what, ms, fn, arg) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout: ms, polling: 250 });
    return await handle.jsonValue();
  } catch (e) {
    if (e.name === 'TimeoutError') fail(`timed out after ${ms / 1000} s waiting for ${what}`);
    throw e;
  }
}

function watch(page, label) {
  page.on('pageerror', (e) => problems.push(`${label}: uncaught error in the page: ${e.message}`));
  page.on('console', (m) => {
    const text = m.text();
    if (/Content[- ]Security[- ]Policy/i.test(text)) {
      problems.push(`${label}: CSP violation: ${text}`);
    } else if (m.type() === 'error') {
      log(`${label} console: ${text}`);
    }
  });
}

// Answers of the API the page should never get: an error other than the 401s of the key
// check. The key is masked in what is printed.
function watchResponses(page, label, allowed) {
  page.on('response', (r) => {
    const url = new URL(r.url());
    if (r.status() < 400 || allowed(r.status(), url)) return;
    if (url.searchParams.has('access_token')) url.searchParams.set('access_token', '***');
    problems.push(`${label}: ${r.request().method()} ${url.pathname}${url.search} answered ${r.status()}`);
  });
}

function checkProblems() {
  if (problems.length) fail(problems.join('\n'));
}

async function main() {
  const resp = await fetch(new URL('/v1/cameras', base));
  if (!resp.ok) fail(`GET /v1/cameras answered ${resp.status}`);
  const cameras = (await resp.json()).items.map((c) => c.id);
  if (!cameras.length) fail('the API lists no cameras');

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 30_000 });
  log(`Chromium ${browser.version()}`);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  watch(page, 'page');
  // A camera without a sampled frame yet answers 404 for its snapshot: normal at start.
  watchResponses(page, 'page', (status, url) => status === 404 && /^\/v1\/cameras\/[^/]+\/snapshot$/.test(url.pathname));

  // The page and its assets, with their types.
  const main = await page.goto(base + '/', { waitUntil: 'load' });
  if (main.status() !== 200) fail(`GET / answered ${main.status()}`);
  if (!/^text\/html/.test(main.headers()['content-type'] || '')) {
    fail(`GET / is ${main.headers()['content-type']}, not text/html`);
  }
  for (const [path, type] of [['/assets/app.js', /javascript/], ['/assets/style.css', /^text\/css/]]) {
    const r = await page.request.get(base + path);
    if (r.status() !== 200 || !type.test(r.headers()['content-type'] || '')) {
      fail(`GET ${path}: ${r.status()} ${r.headers()['content-type']}`);
    }
  }

  // Every camera, each with a loaded snapshot.
  const shown = await until(
    page,
    `the cameras ${cameras.join(', ')} with loaded snapshots`,
    30_000,
    (ids) => {
      const cards = [...document.querySelectorAll('#cameras [data-camera]')];
      const ok = ids.every((id) => {
        const card = cards.find((c) => c.dataset.camera === id);
        const img = card && card.querySelector('img');
        return img && img.complete && img.naturalWidth > 0;
      });
      return ok && cards.map((c) => [c.dataset.camera, c.querySelector('img').naturalWidth]);
    },
    cameras,
  );
  log(`camera grid: ${shown.map(([id, w]) => `${id} (${w} px wide)`).join(', ')}`);
  if (shown.length !== cameras.length) fail(`the grid shows ${shown.length} cameras, the API ${cameras.length}`);

  // Search by words.
  await page.fill('#q', expected);
  await page.click('#search-words');
  const want = norm(expected);
  const card = await until(
    page,
    `a result card with "${expected}"`,
    20_000,
    (want) => {
      const norm = (s) => String(s).toUpperCase().replace(/\s+/g, ' ').trim();
      const cards = [...document.querySelectorAll('#results .insight')].filter((c) =>
        norm(c.querySelector('.what').textContent).includes(want),
      );
      if (!cards.length) return null;
      const hit = cards.find((c) => c.classList.contains('playable')) || cards[0];
      return {
        id: hit.dataset.id,
        text: hit.querySelector('.what').textContent,
        playable: hit.classList.contains('playable'),
      };
    },
    want,
  );
  if (!card.playable) fail(`the result card ${card.id} ("${card.text}") has no clip to play`);
  log(`result card ${card.id}: "${card.text}"`);
  const selector = `#results .insight[data-id="${card.id}"]`;
  await until(
    page,
    "the result's snapshot",
    15_000,
    (sel) => {
      const img = document.querySelector(sel + ' img');
      return img && img.complete && img.naturalWidth > 0;
    },
    selector,
  );
  const boxes = await page.locator(selector + ' .box').count();
  log(`result card shows its snapshot${boxes ? ' with the box drawn' : ' (no box)'}`);

  // Its clip plays from the insight's offset.
  await page.click(selector);
  const offset = await until(page, 'the player to get a clip', 10_000, () => {
    const v = document.getElementById('video');
    return !document.getElementById('player').hidden && v.currentSrc && v.dataset.offset;
  });
  const start = Number(offset);
  const played = await until(
    page,
    `the clip to play past ${start.toFixed(2)} s`,
    15_000,
    (start) => {
      const v = document.getElementById('video');
      if (v.error) return { error: `media error ${v.error.code}: ${v.error.message}` };
      const past = v.currentTime > start + 0.2 || (v.ended && v.currentTime >= start);
      return past && !v.seeking && v.readyState >= 2
        ? { t: v.currentTime, duration: v.duration, src: v.currentSrc }
        : null;
    },
    start,
  );
  if (played.error) fail(`the clip does not play: ${played.error}`);
  log(`clip ${played.src} plays: at ${played.t.toFixed(2)} s of ${played.duration.toFixed(2)} s (offset ${start.toFixed(2)} s)`);

  await page.screenshot({ path: screenshot, fullPage: true });
  log(`screenshot: ${screenshot}`);
  checkProblems();

  await checkKeyForm(context);
  checkProblems();
  log('all checks passed');
}

// With the API answering 401 to requests without the key (as it will once keys are
// configured), the page asks for one, keeps it, and sends it on fetches and media URLs.
async function checkKeyForm(context) {
  const KEY = 'test-key-42';
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  watch(page, 'key page');
  watchResponses(page, 'key page', (status) => status === 401);
  let bearer = 0;
  let token = 0;
  await page.route('**/v1/**', (route) => {
    const req = route.request();
    const url = new URL(req.url());
    const auth = req.headers()['authorization'];
    if (auth === `Bearer ${KEY}`) bearer++;
    if (url.searchParams.get('access_token') === KEY) token++;
    if (auth === `Bearer ${KEY}` || url.searchParams.get('access_token') === KEY) {
      // The real server (no keys configured here) must take the token off the query itself.
      return route.continue();
    }
    return route.fulfill({
      status: 401,
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'unauthorized', message: 'an API key is required' } }),
    });
  });
  await page.goto(base + '/', { waitUntil: 'load' });
  await until(page, 'the key form after a 401', 10_000, () => !document.getElementById('auth').hidden);
  await page.fill('#auth-key', KEY);
  await page.click('#auth button[type="submit"]');
  await until(page, 'the cameras once the key is given', 20_000, () => {
    const imgs = [...document.querySelectorAll('#cameras [data-camera] img')];
    return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0 && i.src.includes('access_token='));
  });
  const kept = await page.evaluate(() => localStorage.getItem('panoptes.apiKey'));
  if (kept !== KEY) fail(`the key was not kept in localStorage (found ${JSON.stringify(kept)})`);
  if (!bearer) fail('no fetch sent Authorization: Bearer <key>');
  if (!token) fail('no image, video or event URL carried access_token=<key>');
  if (!(await page.locator('#auth').isHidden())) fail('the key form is still shown with a good key');
  log(`key form: key kept; ${bearer} requests with the bearer header, ${token} with access_token`);
  await page.close();
}

const watchdog = setTimeout(() => {
  console.error(`check.mjs: FAILED: the checks took more than ${TOTAL_MS / 1000} s`);
  process.exit(3);
}, TOTAL_MS);

try {
  await main();
  await browser.close();
  clearTimeout(watchdog);
} catch (e) {
  console.error(`check.mjs: FAILED: ${e.check ? e.message : e.stack || e}`);
  if (browser) {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) await pages[0].screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    await browser.close().catch(() => {});
  }
  clearTimeout(watchdog);
  process.exitCode = 1;
}
