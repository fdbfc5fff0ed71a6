// The dashboard's entry: a small router over real paths under /ui/.

import { getKey, isAbort, onUnauthorized, setKey } from './api.js';
import { h, tickTimes } from './dom.js';
import { stopAdminStream } from './sse.js';
import * as dashboard from './pages/dashboard.js';
import * as jobs from './pages/jobs.js';
import * as job from './pages/job.js';
import * as runners from './pages/runners.js';
import * as runner from './pages/runner.js';
import * as playground from './pages/playground.js';
import * as settings from './pages/settings.js';

const ROUTES = [
  [/^\/ui\/?$/, dashboard],
  [/^\/ui\/jobs\/?$/, jobs],
  [/^\/ui\/jobs\/([^/]+)\/?$/, job],
  [/^\/ui\/runners\/?$/, runners],
  [/^\/ui\/runners\/([^/]+)\/?$/, runner],
  [/^\/ui\/playground\/?$/, playground],
  [/^\/ui\/settings\/?$/, settings],
];

const notFound = {
  section: null,
  title: 'Not found',
  render(ctx) {
    ctx.root.append(h('h1', { text: 'Page not found' }),
      h('p', {}, 'There is no such page. ', h('a', { href: '/ui/', text: 'Go to the dashboard' })));
  },
};

let current = null;

export function navigate(path, { replace = false, state = null } = {}) {
  if (replace) history.replaceState(state, '', path);
  else history.pushState(state, '', path);
  render({ focus: true });
}

/** A short message in the corner (read out by screen readers). */
export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const item = h('div', { class: `toast toast-${kind}`, text: message });
  box.append(item);
  setTimeout(() => item.remove(), 5000);
}

function render({ focus = false } = {}) {
  if (current) {
    current.controller.abort();
    for (const fn of current.cleanups.splice(0)) {
      try {
        fn();
      } catch (error) {
        console.error(error);
      }
    }
  }
  let page = notFound;
  let params = [];
  for (const [pattern, module] of ROUTES) {
    const match = pattern.exec(location.pathname);
    if (match) {
      page = module;
      params = match.slice(1).map((p) => decodeURIComponent(p));
      break;
    }
  }
  const root = document.getElementById('main');
  root.replaceChildren();
  const controller = new AbortController();
  const cleanups = [];
  current = { controller, cleanups };
  for (const a of document.querySelectorAll('.nav a')) {
    if (a.dataset.section === page.section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${page.title} · Runpack`;
  const ctx = {
    root,
    params,
    query: new URLSearchParams(location.search),
    state: history.state || {},
    signal: controller.signal,
    onCleanup: (fn) => cleanups.push(fn),
    setTitle: (title) => { document.title = `${title} · Runpack`; },
    navigate,
    toast,
    /** Show an error from a load, unless it was an abort or a 401 (handled already). */
    fail: (error) => {
      if (isAbort(error) || error?.status === 401 || controller.signal.aborted) return;
      toast(error?.message || String(error), 'error');
    },
  };
  try {
    page.render(ctx);
  } catch (error) {
    console.error(error);
    root.append(h('div', { class: 'notice notice-error', role: 'alert', text: String(error) }));
  }
  if (focus) (root.querySelector('h1') || root).focus({ preventScroll: false });
}

onUnauthorized((error) => {
  const kind = error.kind === 'submit' ? 'submit' : 'admin';
  const had = kind === 'submit' ? getKey('submit') || getKey('admin') : getKey('admin');
  const message = had
    ? `The server rejected the ${kind} key (${error.message}). Enter a valid ${kind} key.`
    : `This page needs the ${kind} key. Enter it below.`;
  if (kind === 'admin') stopAdminStream();
  const returnTo = location.pathname.match(/^\/ui\/settings\/?$/)
    ? history.state?.returnTo || null
    : location.pathname + location.search;
  navigate('/ui/settings', { replace: true, state: { message, returnTo } });
});

document.addEventListener('click', (event) => {
  const a = event.target instanceof Element ? event.target.closest('a[href]') : null;
  if (!a || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  if (a.getAttribute('href').startsWith('#')) return;
  if (a.target || a.hasAttribute('download') || a.origin !== location.origin) return;
  if (!/^\/ui(\/|$)/.test(a.pathname) || a.pathname.startsWith('/ui/static/')) return;
  event.preventDefault();
  if (a.pathname + a.search === location.pathname + location.search && !a.hash) return;
  navigate(a.pathname + a.search);
});

/**
 * The sign-in link `runpack serve` prints in local development mode:
 * /ui/#submit_key=…&admin_key=… keeps the keys and drops them from the address.
 * Honoured only on a loopback address, where that link is printed.
 */
function signInFromLink() {
  if (!location.hash.includes('_key=')) return;
  const params = new URLSearchParams(location.hash.slice(1));
  history.replaceState(history.state, '', location.pathname + location.search);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(location.hostname)) return;
  for (const kind of ['submit', 'admin']) {
    const value = params.get(`${kind}_key`);
    if (value) setKey(kind, value);
  }
}

window.addEventListener('popstate', () => render({ focus: true }));
setInterval(tickTimes, 10000);
signInFromLink();
render();
