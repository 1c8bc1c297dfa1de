// The Panoptes web page: cameras with their latest snapshot, search by words or meaning,
// results drawn with their box, clips played from the moment of the insight, and a live
// feed. Plain JavaScript served from the binary; every text from the API goes into the
// page through textContent or attributes, never as HTML.
'use strict';

(function () {
  const SNAPSHOT_EVERY_MS = 3000;
  const CAMERAS_EVERY_MS = 10000;
  const LIVE_MAX = 12;
  const LIVE_RETRY_MS = 5000;
  const KEY_STORE = 'panoptes.apiKey';

  const $ = (id) => document.getElementById(id);

  // --- API access -------------------------------------------------------------------

  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORE) || '';
    } catch (_) {
      return '';
    }
  }

  class AuthNeeded extends Error {}

  // Fetches JSON from the API with the key as a bearer token; a 401 asks for a key.
  async function api(path) {
    const headers = { Accept: 'application/json' };
    const key = apiKey();
    if (key) headers.Authorization = 'Bearer ' + key;
    const resp = await fetch(path, { headers, cache: 'no-store' });
    if (resp.status === 401) {
      askForKey(key ? 'The API refused this key; enter another.' : 'This API needs a key.');
      throw new AuthNeeded('401');
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
    if (!resp.ok) {
      const msg = body && body.error && body.error.message ? body.error.message : resp.statusText;
      throw new Error(resp.status + ': ' + msg);
    }
    return body;
  }

  // URL for an <img>, <video> or EventSource, which cannot send headers: the key goes in
  // the query, and only to this origin.
  function authed(url) {
    const u = new URL(url, location.href);
    const key = apiKey();
    if (key && u.origin === location.origin) u.searchParams.set('access_token', key);
    return u.origin === location.origin ? u.pathname + u.search + u.hash : u.href;
  }

  function say(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('error', !!isError);
  }

  function report(e, what) {
    if (e instanceof AuthNeeded) return;
    say(what + ': ' + e.message, true);
  }

  function askForKey(message) {
    $('auth-message').textContent = message;
    if ($('auth').hidden) {
      $('auth').hidden = false;
      $('auth-key').focus();
    }
    say('An API key is needed.', true);
  }

  // --- Small DOM helpers ------------------------------------------------------------

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function when(ts) {
    const d = new Date(ts);
    return isNaN(d) ? String(ts) : d.toLocaleString();
  }

  function seconds(a, b) {
    const s = (new Date(b) - new Date(a)) / 1000;
    return isFinite(s) && s > 0 ? s : 0;
  }

  // --- Cameras ----------------------------------------------------------------------

  const cameraCards = new Map();

  function cameraCard(id) {
    let card = cameraCards.get(id);
    if (card) return card;
    card = el('article', 'camera');
    card.dataset.camera = id;
    const frame = el('div', 'frame');
    const img = el('img');
    img.alt = 'Latest frame of ' + id;
    img.decoding = 'async';
    const none = el('span', 'placeholder', 'no frame yet');
    frame.append(img, none);
    const caption = el('div', 'caption');
    const title = el('button', 'camera-id', id);
    title.type = 'button';
    title.title = 'Latest insights of ' + id;
    title.addEventListener('click', () => {
      $('camera').value = id;
      $('q').value = '';
      runSearch('words');
    });
    caption.append(title, el('span', 'badge state'), el('span', 'meta'));
    card.append(frame, caption);
    card._img = img;
    cameraCards.set(id, card);
    return card;
  }

  function showCamera(c) {
    const card = cameraCard(c.id);
    const badge = card.querySelector('.state');
    badge.textContent = c.state || 'unknown';
    badge.dataset.state = c.state || 'unknown';
    const meta = [];
    if (c.owner) meta.push('on ' + c.owner);
    if (c.video && c.video.width) {
      let v = c.video.codec + ' ' + c.video.width + '×' + c.video.height;
      if (c.video.fps) v += ' @ ' + Number(c.video.fps).toFixed(1) + ' fps';
      meta.push(v);
    }
    card.querySelector('.meta').textContent = meta.join(' · ');
    card.title = c.last_error ? 'last error: ' + c.last_error : '';
    return card;
  }

  async function refreshCameras() {
    let page;
    try {
      page = await api('/v1/cameras');
    } catch (e) {
      report(e, 'cameras');
      return;
    }
    const grid = $('cameras');
    const ids = new Set();
    const cards = (page.items || []).map((c) => {
      ids.add(c.id);
      return showCamera(c);
    });
    for (const [id, card] of cameraCards) {
      if (!ids.has(id)) {
        card.remove();
        cameraCards.delete(id);
      }
    }
    grid.replaceChildren(...cards);
    if (!cards.length) grid.append(el('p', 'empty', 'No cameras configured.'));
    const select = $('camera');
    const chosen = select.value;
    select.replaceChildren(new Option('all cameras', ''), ...[...ids].map((id) => new Option(id, id)));
    select.value = ids.has(chosen) ? chosen : '';
    refreshSnapshots();
  }

  // Loads each snapshot off-screen and swaps it in when complete, so the picture never
  // blanks while the next one loads; the query defeats caches.
  function refreshSnapshots() {
    for (const [id, card] of cameraCards) {
      if (card._loading) continue;
      card._loading = true;
      const next = new Image();
      next.onload = () => {
        card._loading = false;
        card._img.src = next.src;
        card.classList.add('has-frame');
      };
      next.onerror = () => {
        card._loading = false;
        card.classList.remove('has-frame');
      };
      next.src = authed('/v1/cameras/' + encodeURIComponent(id) + '/snapshot?t=' + Date.now());
    }
  }

  // --- Insights ---------------------------------------------------------------------

  function insightCard(i) {
    const card = el('article', 'insight');
    card.dataset.id = i.id;
    card.dataset.kind = i.kind;
    const frame = el('div', 'frame');
    if (i.url) {
      const img = el('img');
      img.alt = 'Frame of ' + i.camera;
      img.loading = 'lazy';
      img.src = authed(i.url);
      frame.append(img);
      const b = i.bbox;
      if (b && [b.x, b.y, b.w, b.h].every((v) => typeof v === 'number')) {
        const box = el('div', 'box');
        box.style.left = b.x * 100 + '%';
        box.style.top = b.y * 100 + '%';
        box.style.width = b.w * 100 + '%';
        box.style.height = b.h * 100 + '%';
        frame.append(box);
      }
    } else {
      frame.classList.add('blank');
      frame.append(el('span', 'placeholder', i.kind === 'speech' ? 'speech' : 'no picture'));
    }
    const body = el('div', 'caption');
    const what = i.kind === 'object' ? i.label : i.text;
    body.append(el('p', 'what', what || i.label || i.kind));
    const facts = el('p', 'meta');
    facts.append(el('span', 'badge kind', i.kind));
    facts.append(el('span', 'camera-name', i.camera));
    const t = el('time', null, when(i.ts));
    t.dateTime = i.ts;
    facts.append(t);
    if (i.ts_end) {
      const s = seconds(i.ts, i.ts_end);
      if (s >= 1) facts.append(el('span', null, 'for ' + Math.round(s) + ' s'));
    }
    if (typeof i.confidence === 'number') {
      facts.append(el('span', null, Math.round(i.confidence * 100) + '%'));
    }
    if (typeof i.similarity === 'number') {
      facts.append(el('span', 'similarity', 'similarity ' + i.similarity.toFixed(2)));
    }
    body.append(facts);
    card.append(frame, body);
    card.tabIndex = 0;
    card.setAttribute('role', 'button');
    setPlayable(card, i);
    card.addEventListener('click', () => play(card));
    card.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        play(card);
      }
    });
    card._insight = i;
    return card;
  }

  function setPlayable(card, i) {
    const playable = !!(i.clip && i.clip.url);
    card.classList.toggle('playable', playable);
    card.title = playable ? 'Play the clip' : 'The clip is not stored yet';
  }

  async function play(card) {
    let i = card._insight;
    const video = $('video');
    if (!(i.clip && i.clip.url)) {
      // The clip may have been stored since the card was drawn.
      try {
        i = await api('/v1/insights/' + encodeURIComponent(i.id));
      } catch (e) {
        report(e, 'insight');
        return;
      }
      card._insight = i;
      setPlayable(card, i);
      if (!(i.clip && i.clip.url)) {
        say('The clip of this insight is not stored yet; try again in a few seconds.', true);
        return;
      }
    }
    const offset = Math.max(0, Number(i.clip.offset_s) || 0);
    video.dataset.offset = String(offset);
    video.dataset.insight = i.id;
    // The media fragment starts the clip at the insight; loadedmetadata (see init) seeks
    // there too for players that ignore fragments.
    video.src = authed(i.clip.url) + '#t=' + offset.toFixed(3);
    const what = i.kind === 'object' ? i.label : i.text;
    $('player-caption').textContent =
      i.camera + ' · ' + when(i.ts) + ' · ' + (what || i.kind) + ' · clip ' + i.clip.id +
      ' from ' + offset.toFixed(1) + ' s';
    $('player').hidden = false;
    $('player').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    try {
      await video.play();
    } catch (e) {
      if (e.name === 'NotAllowedError') {
        video.muted = true;
        video.play().catch((err) => report(err, 'clip'));
      } else if (e.name !== 'AbortError') {
        report(e, 'clip');
      }
    }
  }

  // --- Search -----------------------------------------------------------------------

  let nextCursor = null;
  let lastQuery = '';

  function queryString(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) u.set(k, v);
    const s = u.toString();
    return s ? '?' + s : '';
  }

  async function runSearch(mode, more) {
    const q = $('q').value.trim();
    const filters = { kind: $('kind').value, camera: $('camera').value };
    const results = $('results');
    let path;
    if (mode === 'meaning') {
      if (!q) {
        say('Type what to look for first.', true);
        return;
      }
      path = '/v1/search' + queryString({ q, ...filters, limit: '24' });
    } else if (more) {
      path = lastQuery + (lastQuery.includes('?') ? '&' : '?') + 'cursor=' + encodeURIComponent(nextCursor);
    } else {
      path = '/v1/insights' + queryString({ q, ...filters, limit: '24' });
      lastQuery = path;
    }
    results.setAttribute('aria-busy', 'true');
    let page;
    try {
      page = await api(path);
    } catch (e) {
      report(e, 'search');
      results.removeAttribute('aria-busy');
      return;
    }
    results.removeAttribute('aria-busy');
    const cards = (page.items || []).map(insightCard);
    if (more) {
      results.append(...cards);
    } else {
      let title = q ? (mode === 'meaning' ? 'Meaning like “' + q + '”' : 'Insights with “' + q + '”') : 'Latest insights';
      if (filters.camera) title += ' on ' + filters.camera;
      $('results-title').textContent = title;
      results.replaceChildren(...cards);
      if (!cards.length) results.append(el('p', 'empty', 'Nothing found.'));
    }
    nextCursor = mode === 'meaning' ? null : page.next_cursor || null;
    $('more').hidden = !nextCursor;
    say(cards.length ? '' : 'Nothing found.');
  }

  // --- Live feed --------------------------------------------------------------------

  let source = null;
  let liveRetry = null;

  function connectLive() {
    clearTimeout(liveRetry);
    if (source) source.close();
    const state = $('live-state');
    state.textContent = 'connecting';
    source = new EventSource(authed('/v1/events'));
    source.onopen = () => {
      state.textContent = 'live';
      state.dataset.state = 'live';
    };
    source.onerror = () => {
      state.textContent = 'reconnecting';
      state.dataset.state = 'reconnecting';
      // EventSource retries a dropped connection by itself but gives up on an error status
      // (a refused key shows up on the next fetch): try again a little later.
      if (source.readyState === EventSource.CLOSED) {
        clearTimeout(liveRetry);
        liveRetry = setTimeout(connectLive, LIVE_RETRY_MS);
      }
    };
    source.addEventListener('insight', (ev) => {
      let i;
      try {
        i = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      // An insight that lasts (a sign, a parked car) is sent again as it grows: one card
      // each, moved to the top of the feed and updated in place in the results.
      const live = $('live');
      for (const old of live.querySelectorAll('.insight')) {
        if (old.dataset.id === i.id) old.remove();
      }
      live.prepend(insightCard(i));
      while (live.children.length > LIVE_MAX) live.lastElementChild.remove();
      for (const old of $('results').querySelectorAll('.insight')) {
        if (old.dataset.id === i.id) {
          if (typeof old._insight.similarity === 'number') i.similarity = old._insight.similarity;
          old.replaceWith(insightCard(i));
        }
      }
    });
  }

  // --- Wiring -----------------------------------------------------------------------

  function refreshAll() {
    refreshCameras();
    runSearch('words');
    connectLive();
    $('forget-key').hidden = !apiKey();
  }

  function init() {
    $('search').addEventListener('submit', (e) => {
      e.preventDefault();
      const mode = e.submitter && e.submitter.value === 'meaning' ? 'meaning' : 'words';
      runSearch(mode);
    });
    $('more').addEventListener('click', () => runSearch('words', true));
    $('video').addEventListener('loadedmetadata', () => {
      const video = $('video');
      const offset = Number(video.dataset.offset) || 0;
      if (Math.abs(video.currentTime - offset) > 0.25) video.currentTime = offset;
    });
    $('player-close').addEventListener('click', () => {
      const video = $('video');
      video.pause();
      video.removeAttribute('src');
      video.load();
      $('player').hidden = true;
    });
    $('auth').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('auth-key').value.trim();
      if (!key) return;
      try {
        localStorage.setItem(KEY_STORE, key);
      } catch (_) {
        say('This browser does not keep the key (storage is off).', true);
      }
      $('auth-key').value = '';
      $('auth').hidden = true;
      say('');
      refreshAll();
    });
    $('forget-key').addEventListener('click', () => {
      try {
        localStorage.removeItem(KEY_STORE);
      } catch (_) {
        /* nothing kept */
      }
      location.reload();
    });
    refreshAll();
    setInterval(refreshSnapshots, SNAPSHOT_EVERY_MS);
    setInterval(refreshCameras, CAMERAS_EVERY_MS);
  }

  init();
})();
