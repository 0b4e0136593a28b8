// @ts-check
// The logpipe console: one page over logconsole's JSON API (console/src/api.rs).
// The view lives in the URL's hash (#search?q=…&range=15m&f=host.name:web-1,
// #line/<id>, #fleet, #collect/<host>), so a URL is a shareable view.
'use strict';

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** @param {string} id */
const $in = (id) => /** @type {HTMLInputElement} */ (document.getElementById(id));

/**
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {(Node|string|null|undefined)[]} [kids]
 */
function el(tag, attrs = {}, kids = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v; // CSSOM: allowed by the page's CSP
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** @type {{name: string, role: string, csrf?: string} | null} */
let me = null;

class ApiError extends Error {
  /** @param {number} status @param {string} message @param {any} body */
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

/**
 * @param {string} path
 * @param {{method?: string, body?: any}} [opts]
 * @returns {Promise<any>}
 */
async function api(path, opts = {}) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (opts.method && opts.method !== 'GET' && me && me.csrf) headers['x-csrf-token'] = me.csrf;
  let r;
  try {
    r = await fetch(path, {
      method: opts.method || 'GET', headers, credentials: 'same-origin',
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
  } catch (e) {
    throw new ApiError(0, 'the console does not answer: ' + e, null);
  }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!r.ok) {
    if (r.status === 401 && path !== '/api/session') showLogin();
    throw new ApiError(r.status, (body && body.error) || `${r.status} ${r.statusText}`, body);
  }
  return body;
}

/** @param {HTMLElement} box @param {string|null} msg */
function say(box, msg) {
  box.hidden = !msg;
  box.textContent = msg || '';
}

// ---------- time ----------

const RANGES = /** @type {Record<string, number>} */ ({ '5m': 300e3, '15m': 900e3, '1h': 3600e3, '6h': 6 * 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 });

/** @param {number} n @param {number} [w] */
const pad = (n, w = 2) => String(n).padStart(w, '0');

/** A time in the chosen zone: 2026-12-01 12:04:05.123 @param {number} ms */
function fmt(ms, withMs = true) {
  const d = new Date(ms);
  const utc = state.tz === 'utc';
  const [Y, M, D, h, m, s, x] = utc
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), d.getUTCMilliseconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds(), d.getMilliseconds()];
  return `${Y}-${pad(M)}-${pad(D)} ${pad(h)}:${pad(m)}:${pad(s)}${withMs ? '.' + pad(x, 3) : ''}`;
}

/** For a datetime-local input, in the chosen zone. @param {number} ms */
function toInput(ms) { return fmt(ms, false).replace(' ', 'T'); }

/** From a datetime-local input, in the chosen zone. @param {string} v */
function fromInput(v) {
  if (!v) return NaN;
  const full = v.length === 16 ? v + ':00' : v;
  return state.tz === 'utc' ? Date.parse(full + 'Z') : new Date(full).getTime();
}

// ---------- state in the URL ----------

const state = {
  view: 'search',
  q: '',
  range: '15m',
  /** @type {number|null} */ from: null,
  /** @type {number|null} */ to: null,
  /** @type {string[]} */ filters: [],
  tz: localStorage.getItem('tz') || 'local',
  live: false,
  wrap: localStorage.getItem('wrap') === '1',
  arg: '',
};

function readHash() {
  const h = location.hash.replace(/^#/, '');
  const [path, qs] = h.split('?');
  const [view, ...rest] = (path || 'search').split('/');
  state.view = ['search', 'fleet', 'collect', 'line'].includes(view) ? view : 'search';
  state.arg = decodeURIComponent(rest.join('/'));
  if (state.view === 'search') {
    const p = new URLSearchParams(qs || '');
    state.q = p.get('q') || '';
    state.range = p.get('range') || (p.get('from') ? 'abs' : '15m');
    state.from = p.get('from') ? Date.parse(/** @type {string} */ (p.get('from'))) : null;
    state.to = p.get('to') ? Date.parse(/** @type {string} */ (p.get('to'))) : null;
    state.filters = p.getAll('f');
    state.live = p.get('live') === '1';
    if (p.get('tz')) state.tz = /** @type {string} */ (p.get('tz'));
  }
}

function searchHash() {
  const p = new URLSearchParams();
  if (state.q) p.set('q', state.q);
  if (state.range === 'abs' && state.from !== null && state.to !== null) {
    p.set('from', new Date(state.from).toISOString());
    p.set('to', new Date(state.to).toISOString());
  } else p.set('range', state.range);
  for (const f of state.filters) p.append('f', f);
  if (state.live) p.set('live', '1');
  p.set('tz', state.tz);
  return '#search?' + p.toString();
}

/** Sets the hash without a reload loop. @param {string} h */
function go(h) {
  if (location.hash !== h) { ignoreHash = true; location.hash = h; }
}
let ignoreHash = false;

/** The range searched now: [from, to] in ms. */
function currentRange() {
  if (state.range === 'abs' && state.from !== null && state.to !== null) return [state.from, state.to];
  const now = Date.now();
  return [now - (RANGES[state.range] || RANGES['15m']), now];
}

/** The API's query string of the current search. @param {Record<string,string>} [extra] */
function searchParams(extra = {}) {
  const [from, to] = currentRange();
  const p = new URLSearchParams({ q: state.q, from: new Date(from).toISOString(), to: new Date(to).toISOString(), ...extra });
  for (const f of state.filters) p.append('f', f);
  return p;
}

// ---------- views ----------

function showView(/** @type {string} */ v) {
  for (const s of document.querySelectorAll('.view')) /** @type {HTMLElement} */ (s).hidden = s.id !== 'view-' + v;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('on', /** @type {HTMLElement} */ (a).dataset.view === v);
  if (v !== 'fleet') stopFleet();
}

function showLogin() {
  showView('login');
  stopLive();
}

async function route() {
  readHash();
  if (state.view !== 'search') stopLive();
  if (state.view === 'search') { showView('search'); syncControls(); runSearch(); startBanner(); }
  else if (state.view === 'line') { showView('line'); showLine(state.arg); }
  else if (state.view === 'fleet') { showView('fleet'); startFleet(); }
  else if (state.view === 'collect') { showView('collect'); openCollect(state.arg); }
}

// ---------- search ----------

function syncControls() {
  $in('q').value = state.q;
  /** @type {HTMLSelectElement} */ ($('range')).value = state.range;
  /** @type {HTMLSelectElement} */ ($('tz')).value = state.tz;
  $('abs').hidden = state.range !== 'abs';
  const [from, to] = currentRange();
  $in('from').value = toInput(from);
  $in('to').value = toInput(to);
  $in('wrap').checked = state.wrap;
  document.body.classList.toggle('wrap', state.wrap);
  $('live-toggle').setAttribute('aria-pressed', String(state.live));
  renderChips();
}

function renderChips() {
  const box = $('chips');
  box.replaceChildren(...state.filters.map((f, i) => {
    const ex = f.startsWith('-');
    const [field, ...v] = f.replace(/^-/, '').split(':');
    return el('span', { class: 'chip' + (ex ? ' exclude' : ''), title: ex ? 'excluded' : 'included' }, [
      `${ex ? 'NOT ' : ''}${field}: ${v.join(':')}`,
      el('button', { title: 'Remove this filter', 'aria-label': 'remove filter', onclick: () => { state.filters.splice(i, 1); submit(); } }, ['×']),
    ]);
  }));
}

/** Adds (or flips) a filter and searches. @param {string} field @param {string} value @param {boolean} exclude */
function addFilter(field, value, exclude) {
  const f = `${exclude ? '-' : ''}${field}:${value}`;
  const other = `${exclude ? '' : '-'}${field}:${value}`;
  state.filters = state.filters.filter((x) => x !== other && x !== f);
  state.filters.push(f);
  submit();
}

function submit() {
  state.q = $in('q').value;
  go(searchHash());
  syncControls();
  runSearch();
}

/** @type {{lines: any[], next: string|null, seq: number, sel: number}} */
const results = { lines: [], next: null, seq: 0, sel: -1 };

async function runSearch() {
  if (state.live) { startLive(); return; }
  stopLive();
  const seq = ++results.seq;
  say($('search-error'), null);
  $('summary').textContent = 'Searching…';
  updateExports();
  try {
    const page = await api('/api/search?' + searchParams({ size: '100' }));
    if (seq !== results.seq) return;
    results.lines = page.lines;
    results.next = page.next;
    results.sel = -1;
    renderHistogram(page.histogram);
    renderFields(page.fields);
    renderResults(false);
    $('summary').textContent = `${page.total.toLocaleString()} lines · ${page.took_ms} ms`;
    say($('search-error'), page.warnings.length ? page.warnings.join('\n') : null);
    $('summary').dataset.total = String(page.total);
    document.body.dataset.searched = location.hash;
  } catch (e) {
    if (seq !== results.seq) return;
    document.body.dataset.searched = location.hash;
    say($('search-error'), String(/** @type {Error} */ (e).message));
    $('summary').textContent = '';
    results.lines = [];
    renderResults(false);
    renderHistogram(null);
    renderFields([]);
  }
}

async function loadMore() {
  if (!results.next) return;
  const seq = results.seq;
  try {
    const page = await api('/api/search?' + searchParams({ size: '100', aggs: '0', after: results.next }));
    if (seq !== results.seq) return;
    results.lines.push(...page.lines);
    results.next = page.next;
    renderResults(true);
  } catch (e) { say($('search-error'), String(/** @type {Error} */ (e).message)); }
}

function updateExports() {
  const cap = 10000;
  for (const fmtName of ['ndjson', 'csv']) {
    /** @type {HTMLAnchorElement} */ ($('export-' + fmtName)).href = '/api/export?' + searchParams({ format: fmtName, cap: String(cap) });
  }
  $('export-cap').textContent = `(at most ${cap.toLocaleString()} lines)`;
}

/** The message with its matches marked; no markup from the log reaches the page. @param {any} hit */
function messageNode(hit) {
  const span = el('span', { class: 'm' });
  const h = hit.highlight;
  if (!h) { span.textContent = hit.message; return span; }
  for (const part of h.split('\u0001')) {
    const [marked, rest] = part.includes('\u0002') ? part.split('\u0002') : [null, part];
    if (marked !== null) span.append(el('mark', {}, [marked]));
    span.append(rest);
  }
  return span;
}

/** One line of a list. @param {any} hit @param {{context?: boolean}} [opts] */
function lineItem(hit, opts = {}) {
  const li = el('li', { 'data-id': hit.id }, [
    el('div', { class: 'row', onclick: () => toggleDetail(li, hit) }, [
      el('span', { class: 't' }, [hit.timestamp ? fmt(Date.parse(hit.timestamp)) : '']),
      el('span', { class: 'h' }, [hit.host]),
      opts.context ? el('span', { class: 't' }, ['@' + hit.offset]) : null,
      messageNode(hit),
    ]),
  ]);
  return li;
}

function renderResults(append) {
  const ol = $('results');
  if (!append) ol.replaceChildren();
  const from = append ? ol.children.length : 0;
  for (const hit of results.lines.slice(from)) ol.append(lineItem(hit));
  if (!append && results.lines.length === 0) ol.append(el('li', { class: 'muted' }, ['No line matches in this range.']));
  $('more').hidden = !results.next;
}

/** Expands a line to its JSON, provenance and actions. @param {HTMLElement} li @param {any} hit */
function toggleDetail(li, hit) {
  const open = li.querySelector('.detail');
  if (open) { open.remove(); return; }
  const p = hit.provenance || {};
  const json = JSON.stringify(hit.source, null, 2);
  const prov = [
    ['host', `${hit.host}${p.host_id && p.host_id !== hit.host ? ' (' + p.host_id + ')' : ''}`],
    ['file', hit.file],
    ['offset', hit.offset],
    ['kafka', p.kafka_topic ? `${p.kafka_topic} partition ${p.kafka_partition} offset ${p.kafka_offset}` : '—'],
    ['read at', hit.timestamp],
    ['index', hit.index || '—'],
  ];
  const copy = el('button', { onclick: async () => {
    try { await navigator.clipboard.writeText(json); copy.textContent = 'Copied'; } catch { copy.textContent = 'Copy failed (select the text)'; }
  } }, ['Copy JSON']);
  const d = el('div', { class: 'detail' }, [
    el('table', { class: 'prov' }, prov.map(([k, v]) => el('tr', {}, [el('td', {}, [String(k)]), el('td', {}, [String(v)])]))),
    el('div', { class: 'toolbar' }, [
      el('button', { class: 'ctx', onclick: () => openContext(hit.id) }, ['Context (c)']),
      el('a', { href: '#line/' + encodeURIComponent(hit.id) }, ['Permalink']),
      copy,
      el('button', { onclick: () => addFilter('host.name', hit.host, false) }, ['Only this host']),
      el('button', { onclick: () => addFilter('log.file.path', hit.file, false) }, ['Only this file']),
    ]),
    el('pre', { class: 'json' }, [json]),
  ]);
  li.append(d);
}

/** @param {any[]} fields */
function renderFields(fields) {
  const box = $('fields');
  box.replaceChildren();
  for (const f of fields) {
    box.append(el('h4', {}, [f.field]));
    for (const [value, count] of f.values) {
      box.append(el('div', { class: 'value' }, [
        el('span', { class: 'name', title: value }, [value]),
        el('span', { class: 'muted' }, [String(count)]),
        el('button', { title: `only ${f.field}: ${value}`, 'aria-label': `include ${f.field} ${value}`, onclick: () => addFilter(f.field, value, false) }, ['+']),
        el('button', { title: `not ${f.field}: ${value}`, 'aria-label': `exclude ${f.field} ${value}`, onclick: () => addFilter(f.field, value, true) }, ['−']),
      ]));
    }
  }
}

// ---------- histogram (SVG; drag to zoom) ----------

/** @type {{from: number, to: number, interval: number} | null} */
let hist = null;
const SVGNS = 'http://www.w3.org/2000/svg';
/** @param {string} tag @param {Record<string, any>} attrs */
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** @param {{interval_ms: number, buckets: {t: number, count: number}[]} | null} h */
function renderHistogram(h) {
  const s = $('hist');
  s.replaceChildren();
  if (!h) { hist = null; return; }
  const [from, to] = currentRange();
  hist = { from, to, interval: h.interval_ms };
  const W = s.clientWidth || 800, H = 120, top = 6, bottom = 18;
  const max = Math.max(1, ...h.buckets.map((b) => b.count));
  const x = (/** @type {number} */ t) => ((t - from) / (to - from)) * W;
  s.setAttribute('viewBox', `0 0 ${W} ${H}`);
  s.append(svg('line', { x1: 0, x2: W, y1: H - bottom, y2: H - bottom }));
  let total = 0;
  for (const b of h.buckets) {
    total += b.count;
    if (!b.count) continue;
    const x0 = Math.max(0, x(b.t)), x1 = Math.min(W, x(b.t + h.interval_ms));
    const bh = ((H - top - bottom) * b.count) / max;
    const r = svg('rect', { class: 'bar', x: x0, y: H - bottom - bh, width: Math.max(1, x1 - x0 - 1), height: bh, 'data-count': b.count, 'data-t': b.t });
    const title = svg('title', {});
    title.textContent = `${fmt(b.t, false)}: ${b.count} lines`;
    r.append(title);
    s.append(r);
  }
  s.dataset.total = String(total);
  for (const frac of [0, 0.25, 0.5, 0.75]) {
    const t = from + (to - from) * frac;
    const label = svg('text', { x: frac * W + 2, y: H - 4 });
    label.textContent = fmt(t, false);
    s.append(label);
  }
}

function histogramDrag() {
  const s = $('hist');
  /** @type {number|null} */ let start = null;
  /** @type {SVGElement|null} */ let brush = null;
  const pos = (/** @type {MouseEvent} */ e) => {
    const r = s.getBoundingClientRect();
    return Math.min(Math.max(e.clientX - r.left, 0), r.width) * ((s.clientWidth || 800) / r.width);
  };
  s.addEventListener('mousedown', (e) => {
    if (!hist) return;
    start = pos(e);
    brush = svg('rect', { class: 'brush', x: start, y: 0, width: 0, height: 120 });
    s.append(brush);
  });
  window.addEventListener('mousemove', (e) => {
    if (start === null || !brush) return;
    const p = pos(e);
    brush.setAttribute('x', String(Math.min(start, p)));
    brush.setAttribute('width', String(Math.abs(p - start)));
  });
  window.addEventListener('mouseup', (e) => {
    if (start === null || !hist) return;
    const p = pos(e);
    const W = s.clientWidth || 800;
    const a = Math.min(start, p), b = Math.max(start, p);
    start = null;
    brush?.remove();
    if (b - a < 3) return;
    const t = (/** @type {number} */ px) => hist ? hist.from + (px / W) * (hist.to - hist.from) : 0;
    state.range = 'abs';
    state.from = Math.floor(t(a));
    state.to = Math.ceil(t(b));
    submit();
  });
}

// ---------- banner ----------

let bannerTimer = 0;
async function refreshBanner() {
  try {
    const b = await api('/api/banner');
    const box = $('banner');
    if (b.gaps.length) {
      box.hidden = false;
      box.textContent = 'Results may be incomplete: ' + b.gaps.map((/** @type {any} */ g) => g.text).join('; ');
    } else box.hidden = true;
  } catch { /* the banner is a hint; the search shows real errors */ }
}
function startBanner() {
  if (bannerTimer) return;
  refreshBanner();
  bannerTimer = window.setInterval(() => { if (state.view === 'search') refreshBanner(); }, 10000);
}

// ---------- context ----------

const ctx = { id: '', before: 20, after: 20 };
async function openContext(/** @type {string} */ id, keep = false) {
  if (!keep) { ctx.id = id; ctx.before = 20; ctx.after = 20; }
  $('context').hidden = false;
  say($('context-error'), null);
  try {
    const c = await api(`/api/context/${encodeURIComponent(ctx.id)}?before=${ctx.before}&after=${ctx.after}`);
    const file = c.file.by === 'identity' ? `${c.line.host} · ${c.line.file} (inode ${c.file.inode})` : `${c.line.host} · ${c.line.file}`;
    $('context-file').textContent = file;
    const ol = $('context-lines');
    ol.replaceChildren(...c.before.map((/** @type {any} */ l) => lineItem(l, { context: true })));
    const hit = lineItem(c.line, { context: true });
    hit.classList.add('hit');
    ol.append(hit, ...c.after.map((/** @type {any} */ l) => lineItem(l, { context: true })));
    /** @type {HTMLButtonElement} */ ($('context-before')).disabled = c.before.length < ctx.before;
    /** @type {HTMLButtonElement} */ ($('context-after')).disabled = c.after.length < ctx.after;
    if (!keep) hit.scrollIntoView({ block: 'center' });
  } catch (e) { say($('context-error'), String(/** @type {Error} */ (e).message)); }
}
function closeContext() { $('context').hidden = true; }

// ---------- one line (permalink) ----------

async function showLine(/** @type {string} */ id) {
  const box = $('line-detail');
  box.replaceChildren();
  say($('line-error'), null);
  try {
    const hit = await api('/api/line/' + encodeURIComponent(id));
    const ol = el('ol', { class: 'lines' });
    const li = lineItem(hit);
    ol.append(li);
    box.append(ol);
    toggleDetail(li, hit);
  } catch (e) { say($('line-error'), String(/** @type {Error} */ (e).message)); }
}

// ---------- live tail ----------

const LIVE_MAX = 1000;
/** @type {EventSource|null} */ let source = null;
const live = { paused: false, missed: 0 };

function startLive() {
  stopLive();
  $('results').hidden = true; $('more').hidden = true; $('hist-wrap').hidden = true;
  $('live-view').hidden = false;
  $('live').replaceChildren();
  live.paused = false; live.missed = 0;
  $('jump-live').hidden = true;
  $('live-status').textContent = 'Connecting…';
  say($('search-error'), null);
  const p = new URLSearchParams({ q: state.q });
  for (const f of state.filters) p.append('f', f);
  const es = new EventSource('/api/tail?' + p);
  source = es;
  es.addEventListener('started', () => { $('live-status').textContent = 'Live: new lines appear as they are written.'; });
  es.addEventListener('line', (ev) => addLive(JSON.parse(/** @type {MessageEvent} */ (ev).data)));
  es.addEventListener('warning', (ev) => { $('live-status').textContent = 'Live (Kafka: ' + /** @type {MessageEvent} */ (ev).data + ')'; });
  es.addEventListener('dropped', (ev) => { $('live-status').textContent = `Live: ${/** @type {MessageEvent} */ (ev).data} lines dropped (too fast to show)`; });
  es.addEventListener('failed', (ev) => { say($('search-error'), 'Live tail stopped: ' + /** @type {MessageEvent} */ (ev).data); es.close(); });
  es.onerror = async () => {
    if (es.readyState === EventSource.CLOSED || es !== source) return;
    // A refused query answers 400 before any event: show why.
    try {
      const r = await fetch('/api/tail?' + p, { method: 'GET', headers: { accept: 'text/event-stream' } });
      if (!r.ok) { const b = await r.json(); say($('search-error'), b.error); es.close(); }
      else r.body?.cancel();
    } catch { /* retrying */ }
  };
}

/** @param {any} hit */
function addLive(hit) {
  const ol = $('live');
  const atBottom = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 4;
  ol.append(lineItem(hit));
  while (ol.children.length > LIVE_MAX) ol.firstElementChild?.remove();
  if (live.paused) {
    live.missed++;
    $('jump-live').hidden = false;
    $('jump-live').textContent = `Jump to live (${live.missed} new)`;
  } else if (atBottom || ol.children.length < 3) ol.scrollTop = ol.scrollHeight;
}

function stopLive() {
  if (source) { source.close(); source = null; }
  $('results').hidden = false; $('hist-wrap').hidden = false;
  $('live-view').hidden = true;
}

function liveScroll() {
  const ol = $('live');
  ol.addEventListener('scroll', () => {
    const atBottom = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 4;
    if (!atBottom && !live.paused) { live.paused = true; $('live-status').textContent = 'Paused (scrolled up); new lines are kept below.'; }
    if (atBottom && live.paused) { live.paused = false; live.missed = 0; $('jump-live').hidden = true; $('live-status').textContent = 'Live: new lines appear as they are written.'; }
  });
  $('jump-live').addEventListener('click', () => { ol.scrollTop = ol.scrollHeight; });
}

// ---------- fleet ----------

let fleetTimer = 0;
function stopFleet() { if (fleetTimer) { clearInterval(fleetTimer); fleetTimer = 0; } }
function startFleet() {
  stopFleet();
  loadFleet();
  fleetTimer = window.setInterval(loadFleet, 3000);
}

/** @param {number} b */
function bytes(b) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
}

async function loadFleet() {
  try {
    const f = await api('/api/fleet');
    say($('fleet-error'), f.agents.error ? 'agents: ' + f.agents.error : null);
    $('fleet-checked').textContent = 'checked ' + fmt(Date.parse(f.checked_at), false);
    $('group').textContent = `(group ${f.group})`;
    const tb = /** @type {HTMLElement} */ ($('agents').querySelector('tbody'));
    tb.replaceChildren();
    for (const a of Array.isArray(f.agents) ? f.agents : []) {
      const s = a.state;
      const status = a.liveness === 'down' ? 'down' : s.paused ? 'paused' : a.liveness;
      const since = s.paused && s.paused_since ? ` since ${fmt(Date.parse(s.paused_since), false)}` : '';
      const pct = s.wal.max_bytes ? Math.min(100, (100 * s.wal.used_bytes) / s.wal.max_bytes) : 0;
      const keys = Object.entries(s.collect || {}).map(([k, v]) => {
        const kv = /** @type {any} */ (v);
        return el('div', { title: k }, [`${k.split('/').pop()}: ${kv.applied_revision} / ${kv.revision}${kv.error ? ' — refused: ' + kv.error : ''}`]);
      });
      const files = el('details', {}, [
        el('summary', {}, [`${s.files.total} files, ${bytes(s.files.unshipped_bytes)} unshipped`]),
        el('table', { class: 'grid' }, [
          el('tr', {}, ['path', 'size', 'read', 'acked'].map((h) => el('th', {}, [h]))),
          ...s.files.shown.map((/** @type {any} */ x) => el('tr', {}, [x.path, bytes(x.size), bytes(x.read_offset), bytes(x.acked_offset)].map((v) => el('td', {}, [v])))),
        ]),
      ]);
      tb.append(el('tr', { 'data-host': a.host_id }, [
        el('td', {}, [el('a', { href: '#collect/' + encodeURIComponent(a.host_id) }, [a.host_id]), el('div', { class: 'muted' }, [s.hostname ? `${s.hostname} ${s.ip} v${s.version}` : ''])]),
        el('td', { class: 'state-' + status }, [status + since, a.liveness !== 'down' && !s.etcd_connected ? el('div', { class: 'muted' }, ['etcd disconnected']) : null]),
        el('td', {}, [a.liveness === 'down' ? '—' : el('span', {}, [el('span', { class: 'meter' }, [el('i', { style: `width:${pct}%` })]), `${bytes(s.wal.used_bytes)} / ${bytes(s.wal.max_bytes)}`])]),
        el('td', {}, [a.liveness === 'down' ? '—' : String(s.wal.unacked_records)]),
        el('td', {}, [s.wal.lag_secs != null ? `${s.wal.lag_secs} s` : '—']),
        el('td', {}, keys.length ? keys : ['—']),
        el('td', {}, [a.liveness === 'down' ? '—' : files]),
        el('td', {}, s.problems.length ? s.problems.map((/** @type {any} */ p) => el('div', {}, [`${p.key}: ${p.reason} (${p.for_secs} s)`])) : ['—']),
      ]));
    }
    const lb = /** @type {HTMLElement} */ ($('lag').querySelector('tbody'));
    lb.replaceChildren();
    if (Array.isArray(f.lag)) {
      for (const l of f.lag) lb.append(el('tr', {}, [l.topic, l.partition, l.committed, l.high, l.lag].map((v) => el('td', {}, [String(v)]))));
    } else lb.append(el('tr', {}, [el('td', { colspan: 5, class: 'muted' }, [f.lag.error])]));
  } catch (e) { say($('fleet-error'), String(/** @type {Error} */ (e).message)); }
}

// ---------- collect entries ----------

const collect = { host: '', revision: 0, raw: false };

async function openCollect(/** @type {string} */ host) {
  fillHosts();
  say($('collect-error'), null); say($('collect-ok'), null);
  $('collect-diff').hidden = true;
  if (!host) return;
  $in('collect-host').value = host;
  collect.host = host;
  try {
    const v = await api('/api/collect/' + encodeURIComponent(host));
    collect.revision = v.revision;
    $('collect-key').textContent = v.key;
    $('collect-rev').textContent = v.revision ? `read at revision ${v.revision}` : 'no entries yet';
    setValue(v.value || '[]');
    loadHistory();
  } catch (e) { say($('collect-error'), String(/** @type {Error} */ (e).message)); }
}

async function fillHosts() {
  try {
    const f = await api('/api/fleet');
    const dl = $('hosts');
    dl.replaceChildren(el('option', { value: '_all' }), ...(Array.isArray(f.agents) ? f.agents : []).map((/** @type {any} */ a) => el('option', { value: a.host_id })));
  } catch { /* only a suggestion list */ }
}

/** Fills the form and the raw text from a JSON value. @param {string} text */
function setValue(text) {
  /** @type {HTMLTextAreaElement} */ ($('collect-raw')).value = text;
  let entries = [];
  try { entries = JSON.parse(text); } catch { entries = []; }
  const tb = /** @type {HTMLElement} */ ($('entries').querySelector('tbody'));
  tb.replaceChildren();
  if (Array.isArray(entries)) for (const e of entries) tb.append(entryRow(e));
}

/** @param {any} e */
function entryRow(e) {
  const fields = Object.entries(e.fields || {}).map(([k, v]) => `${k}=${v}`).join(', ');
  const tr = el('tr', {}, [
    el('td', {}, [el('input', { type: 'text', class: 'path', value: e.path || '', placeholder: '/var/log/app/*.log' })]),
    el('td', {}, [el('input', { type: 'text', class: 'topic', value: e.topic || '', placeholder: 'app_log' })]),
    el('td', {}, [el('input', { type: 'text', class: 'fields', value: fields, placeholder: 'env=prod' })]),
    el('td', {}, [el('input', { type: 'checkbox', class: 'json', checked: !!e.json })]),
    el('td', {}, [el('button', { onclick: () => tr.remove() }, ['Remove'])]),
  ]);
  tr.dataset.rest = JSON.stringify(Object.fromEntries(Object.entries(e).filter(([k]) => !['path', 'topic', 'fields', 'json'].includes(k))));
  return tr;
}

/** The value being edited, from the form or the raw text. */
function editedValue() {
  if (collect.raw) return /** @type {HTMLTextAreaElement} */ ($('collect-raw')).value;
  const rows = [...$('entries').querySelectorAll('tbody tr')].map((tr) => {
    const q = (/** @type {string} */ c) => /** @type {HTMLInputElement} */ (tr.querySelector('.' + c));
    /** @type {Record<string, any>} */
    const e = { ...JSON.parse(/** @type {HTMLElement} */ (tr).dataset.rest || '{}'), path: q('path').value.trim(), topic: q('topic').value.trim() };
    const f = q('fields').value.split(',').map((s) => s.trim()).filter(Boolean);
    if (f.length) e.fields = Object.fromEntries(f.map((kv) => { const i = kv.indexOf('='); return i < 0 ? [kv, ''] : [kv.slice(0, i).trim(), kv.slice(i + 1).trim()]; }));
    if (q('json').checked) e.json = true;
    return e;
  });
  return JSON.stringify(rows, null, 2);
}

function setRaw(/** @type {boolean} */ raw) {
  if (raw === collect.raw) return;
  if (raw) /** @type {HTMLTextAreaElement} */ ($('collect-raw')).value = editedValue();
  else setValue(/** @type {HTMLTextAreaElement} */ ($('collect-raw')).value);
  collect.raw = raw;
  $('collect-raw').hidden = !raw;
  $('collect-form').hidden = raw;
  $('tab-raw').classList.toggle('on', raw);
  $('tab-form').classList.toggle('on', !raw);
}

async function validateCollect() {
  say($('collect-error'), null); say($('collect-ok'), null);
  try {
    const v = await api(`/api/collect/${encodeURIComponent(collect.host)}/validate`, { method: 'POST', body: { value: editedValue(), expected: collect.revision } });
    $('collect-diff').hidden = false;
    $('collect-diff').textContent = v.diff || '(no change)';
    say($('collect-ok'), `Valid: ${v.entries} entries${v.checked_against.length ? ', checked against the allowed roots of ' + v.checked_against.join(', ') : ''}.`);
    return true;
  } catch (e) { say($('collect-error'), String(/** @type {Error} */ (e).message)); return false; }
}

async function saveCollect() {
  say($('collect-error'), null); say($('collect-ok'), null);
  try {
    const w = await api(`/api/collect/${encodeURIComponent(collect.host)}`, { method: 'PUT', body: { value: editedValue(), expected: collect.revision } });
    collect.revision = w.revision;
    $('collect-rev').textContent = `written at revision ${w.revision}`;
    $('collect-diff').hidden = false;
    $('collect-diff').textContent = w.diff || '(no change)';
    say($('collect-ok'), `Saved at revision ${w.revision}; the agent applies it within seconds (see Fleet).`);
    loadHistory();
  } catch (e) {
    const err = /** @type {ApiError} */ (e);
    if (err.status === 409) say($('collect-error'), `Conflict: someone changed ${collect.host}'s entries since you opened them (revision ${err.body.expected} → ${err.body.actual}). Your edit is kept here; open the host again to see theirs.`);
    else say($('collect-error'), String(err.message));
  }
}

async function loadHistory() {
  const ol = $('collect-history');
  ol.replaceChildren();
  try {
    const h = await api(`/api/collect/${encodeURIComponent(collect.host)}/history`);
    for (const r of h) {
      ol.append(el('li', {}, [
        el('details', {}, [
          el('summary', {}, [`revision ${r.revision}${r.value === null ? ' (deleted)' : ''} `,
            r.revision !== collect.revision && r.value !== null ? el('button', { onclick: () => rollback(r.revision) }, ['Roll back to this']) : el('span', { class: 'muted' }, [r.revision === collect.revision ? '(current)' : ''])]),
          el('pre', {}, [r.value || '']),
        ]),
      ]));
    }
  } catch (e) { ol.append(el('li', { class: 'error' }, [String(/** @type {Error} */ (e).message)])); }
}

async function rollback(/** @type {number} */ rev) {
  if (!confirm(`Roll ${collect.host}'s entries back to revision ${rev}?`)) return;
  try {
    const w = await api(`/api/collect/${encodeURIComponent(collect.host)}/rollback`, { method: 'POST', body: { revision: rev } });
    await openCollect(collect.host);
    say($('collect-ok'), `Rolled back to revision ${rev}: written at revision ${w.revision}.`);
  } catch (e) { say($('collect-error'), String(/** @type {Error} */ (e).message)); }
}

// ---------- keyboard ----------

function keys() {
  document.addEventListener('keydown', (e) => {
    const t = /** @type {HTMLElement} */ (e.target);
    const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName);
    if (e.key === 'Escape') { closeContext(); if (typing) t.blur(); return; }
    if (typing || state.view !== 'search' || e.ctrlKey || e.metaKey || e.altKey) return;
    const items = [...$('results').querySelectorAll('li[data-id]')];
    if (e.key === '/') { e.preventDefault(); $in('q').focus(); $in('q').select(); }
    else if (e.key === 'j' || e.key === 'k') {
      if (!items.length) return;
      results.sel = Math.max(0, Math.min(items.length - 1, results.sel + (e.key === 'j' ? 1 : -1)));
      items.forEach((li, i) => li.classList.toggle('sel', i === results.sel));
      items[results.sel].scrollIntoView({ block: 'nearest' });
    } else if (e.key === 'Enter' && results.sel >= 0) {
      /** @type {HTMLElement} */ (items[results.sel].querySelector('.row')).click();
    } else if (e.key === 'c' && results.sel >= 0) {
      openContext(/** @type {string} */ (/** @type {HTMLElement} */ (items[results.sel]).dataset.id));
    }
  });
}

// ---------- start ----------

async function start() {
  $('search-form').addEventListener('submit', (e) => { e.preventDefault(); if (state.range === 'abs') { state.from = fromInput($in('from').value); state.to = fromInput($in('to').value); } submit(); });
  $('range').addEventListener('change', () => {
    const v = /** @type {HTMLSelectElement} */ ($('range')).value;
    if (v === 'abs') { const [f, t] = currentRange(); state.from = f; state.to = t; }
    state.range = v;
    submit();
  });
  $('tz').addEventListener('change', () => { state.tz = /** @type {HTMLSelectElement} */ ($('tz')).value; localStorage.setItem('tz', state.tz); submit(); });
  $('wrap').addEventListener('change', () => { state.wrap = $in('wrap').checked; localStorage.setItem('wrap', state.wrap ? '1' : '0'); syncControls(); });
  $('live-toggle').addEventListener('click', () => { state.live = !state.live; submit(); });
  $('more').addEventListener('click', loadMore);
  $('context-close').addEventListener('click', closeContext);
  $('context').addEventListener('click', (e) => { if (e.target === $('context')) closeContext(); });
  $('context-before').addEventListener('click', () => { ctx.before += 20; openContext(ctx.id, true); });
  $('context-after').addEventListener('click', () => { ctx.after += 20; openContext(ctx.id, true); });
  $('collect-load').addEventListener('click', () => {
    const host = $in('collect-host').value.trim();
    const h = '#collect/' + encodeURIComponent(host);
    if (location.hash === h) openCollect(host); else location.hash = h;
  });
  $('entry-add').addEventListener('click', () => /** @type {HTMLElement} */ ($('entries').querySelector('tbody')).append(entryRow({})));
  $('tab-raw').addEventListener('click', () => setRaw(true));
  $('tab-form').addEventListener('click', () => setRaw(false));
  $('collect-validate').addEventListener('click', validateCollect);
  $('collect-save').addEventListener('click', async () => { if (await validateCollect()) saveCollect(); });
  $('logout').addEventListener('click', async () => { try { await api('/api/logout', { method: 'POST' }); } catch { /* gone anyway */ } location.reload(); });
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('/api/login', { method: 'POST', body: { name: $in('login-name').value, password: $in('login-password').value } });
      await session();
      route();
    } catch (err) { say($('login-error'), String(/** @type {Error} */ (err).message)); }
  });
  window.addEventListener('hashchange', () => { if (ignoreHash) { ignoreHash = false; return; } route(); });
  histogramDrag();
  liveScroll();
  keys();
  if (await session()) route();
}

async function session() {
  try {
    const s = await api('/api/session');
    me = s.user;
    $('who').textContent = s.auth_required ? `${s.user.name} (${s.user.role})` : 'local (no login on loopback)';
    $('logout').hidden = !s.auth_required;
    return true;
  } catch { showLogin(); return false; }
}

start();
