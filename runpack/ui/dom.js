// DOM helpers. Data only ever reaches the page as text nodes or checked attributes:
// nothing here (or anywhere in the dashboard) assigns innerHTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name.startsWith('on')) {
      // handlers only: an on* attribute would be script
      if (typeof value === 'function') el.addEventListener(name.slice(2), value);
    } else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const STATUSES = [
  'pending', 'claimed', 'in_progress', 'completed', 'failed', 'expired', 'cancelled',
];
export const FINAL = new Set(['completed', 'failed', 'expired', 'cancelled', 'deleted']);
const LABELS = { in_progress: 'In progress', deleted: 'Deleted' };

export function statusLabel(status) {
  const text = String(status ?? 'unknown');
  return LABELS[text] || text.charAt(0).toUpperCase() + text.slice(1).replaceAll('_', ' ');
}

export function statusBadge(status) {
  const known = STATUSES.includes(status) || status === 'deleted' ? status : 'unknown';
  return h('span', { class: `badge badge-${known}`, text: statusLabel(status) });
}

export function badge(text, kind = 'neutral') {
  return h('span', { class: `badge badge-${kind}`, text });
}

export function shortId(id) {
  return String(id ?? '').slice(0, 8);
}

export function formatTime(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '—';
  return new Date(ms).toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

export function ago(ms, now = Date.now()) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '—';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A <time> showing "3 min ago", the full date as its tooltip. */
export function timeEl(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return h('span', { text: '—' });
  return h('time', {
    datetime: new Date(ms).toISOString(), title: formatTime(ms), text: ago(ms), 'data-ms': ms,
  });
}

/** Keep every relative time on the page current. */
export function tickTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll('time[data-ms]')) {
    const text = ago(Number(el.dataset.ms), now);
    if (el.textContent !== text) el.textContent = text;
  }
}

/** A job type, with line-break chances after its underscores. */
export function typeName(type) {
  const parts = String(type ?? '').split('_');
  const out = h('span', { class: 'type' });
  parts.forEach((part, i) => {
    out.append(i < parts.length - 1 ? `${part}_` : part);
    if (i < parts.length - 1) out.append(h('wbr'));
  });
  return out;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

export function link(path, text, attrs = {}) {
  return h('a', { href: path, ...attrs }, text);
}

export function jobLink(id, text) {
  return link(`/ui/jobs/${encodeURIComponent(id)}`, text ?? shortId(id), {
    class: 'mono', title: id,
  });
}

export function runnerLink(id, text) {
  return link(`/ui/runners/${encodeURIComponent(id)}`, text || shortId(id), { title: id });
}

/** Only http(s) URLs may become links or frames. */
export function safeUrl(value) {
  try {
    const url = new URL(String(value), location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

export function debounce(fn, ms) {
  let timer = null;
  const run = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  run.cancel = () => clearTimeout(timer);
  return run;
}

/** Run ``fn`` at most once per ``ms``, always after the latest call (for live refreshes). */
export function throttle(fn, ms) {
  let timer = null;
  const run = () => {
    if (timer === null) {
      timer = setTimeout(() => {
        timer = null;
        fn();
      }, ms);
    }
  };
  run.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return run;
}

/** A card: <section> named by its heading, so it is a landmark region. */
let uid = 0;
export function card(title, ...children) {
  const id = `card-${++uid}`;
  return h('section', { class: 'card', 'aria-labelledby': id },
    h('h2', { id, class: 'card-title', text: title }), ...children);
}

/** A column header: text, a node, or {label, class} (e.g. 'hide-sm' for small screens). */
function headerCell(header) {
  if (header instanceof Node) return h('th', { scope: 'col' }, header);
  if (typeof header === 'object') {
    return h('th', { scope: 'col', class: header.class }, header.label);
  }
  return h('th', { scope: 'col', text: header });
}

export function table(headers, rows, { caption, empty = 'Nothing here yet.' } = {}) {
  const body = h('tbody');
  if (!rows.length) {
    body.append(h('tr', {}, h('td', { colspan: headers.length, class: 'empty', text: empty })));
  }
  for (const row of rows) body.append(row);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      caption ? h('caption', { class: 'sr-only', text: caption }) : null,
      h('thead', {}, h('tr', {}, headers.map(headerCell))),
      body));
}

export function errorBox(message) {
  return h('div', { class: 'notice notice-error', role: 'alert', text: message });
}
