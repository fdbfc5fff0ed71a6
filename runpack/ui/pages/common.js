// Pieces several pages share.

import { h } from '../dom.js';

const STATE_TEXT = {
  live: 'Live',
  connecting: 'Connecting…',
  reconnecting: 'Reconnecting…',
  closed: 'Finished',
  off: 'Offline',
};

/** A small "Live" pill that says whether a stream is connected. */
export function liveIndicator(initial = 'connecting') {
  const el = h('span', { class: 'live', role: 'status' });
  const set = (state) => {
    el.dataset.state = state;
    el.textContent = STATE_TEXT[state] || state;
  };
  set(initial);
  return { el, set };
}

/** The page's <h1> (focused after navigation) and anything beside it. */
export function pageHead(title, ...extras) {
  return h('div', { class: 'page-head' },
    h('h1', { tabindex: '-1', text: title }), h('div', { class: 'page-head-extra' }, ...extras));
}

/** The key-protected parts of a page are useless without a key: say so. */
export function needKeyNotice(kind) {
  return h('div', { class: 'notice' },
    `This needs the ${kind} key. `,
    h('a', { href: '/ui/settings', text: 'Enter it in Settings' }), '.');
}
