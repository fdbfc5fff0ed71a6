// Runners: who is active, connected, how busy, running what.

import { api } from '../api.js';
import { badge, h, jobLink, throttle, timeEl } from '../dom.js';
import { subscribeAdmin } from '../sse.js';
import { liveIndicator, pageHead } from './common.js';

export const section = 'runners';
export const title = 'Runners';

const REFRESH_MS = 5000;

export function stateBadges(runner) {
  return h('span', { class: 'badges' },
    runner.is_active ? badge('Active', 'ok') : badge('Inactive', 'off'),
    runner.connected ? badge(`Connected · ${runner.transport || 'socket'}`, 'info') : null,
    runner.connected && runner.instance ? badge(`Instance ${runner.instance}`, 'off') : null);
}

export function slots(runner) {
  if (!runner.connected || typeof runner.concurrency !== 'number') {
    return h('span', { class: 'muted', text: 'Not connected' });
  }
  const busy = Math.max(0, runner.concurrency - (runner.free_slots ?? 0));
  return h('span', { class: 'slots' },
    h('meter', {
      min: '0', max: String(runner.concurrency), value: String(busy),
      'aria-label': `Busy slots of ${runner.name}`,
    }),
    h('span', { text: `${busy} of ${runner.concurrency} slots busy` }));
}

export function currentJobs(runner) {
  const ids = runner.current_jobs || [];
  if (!ids.length) return h('span', { class: 'muted', text: 'Idle' });
  return h('ul', { class: 'inline-list' }, ids.map((id) => h('li', {}, jobLink(id))));
}

export function capabilities(runner) {
  const caps = runner.capabilities || [];
  if (!caps.length) return h('span', { class: 'muted', text: 'None' });
  const versions = runner.versions || {};  // its handlers' versions, by job type
  const label = (c) => (Object.hasOwn(versions, c) ? `${c} ${versions[c]}` : c);
  return h('ul', { class: 'chips', 'aria-label': 'Job types' },
    caps.map((c) => h('li', { class: 'chip', text: label(c) })));
}

// The images it allows container jobs, if it sent a list (docs/containers.md).
export function images(runner) {
  if (!runner.images.length) return h('span', { class: 'muted', text: 'None' });
  return h('ul', { class: 'chips', 'aria-label': 'Images' },
    runner.images.map((i) => h('li', { class: 'chip', text: i })));
}

export function facts(runner) {
  const item = (label, value) => [h('dt', { text: label }), h('dd', {}, value)];
  return h('dl', { class: 'meta' },
    ...item('Slots', slots(runner)),
    ...item('Current jobs', currentJobs(runner)),
    ...item('Job types', capabilities(runner)),
    ...(runner.images ? item('Images', images(runner)) : []),
    ...item('Last seen', timeEl(runner.last_seen)));
}

function runnerCard(runner) {
  const titleId = `runner-${runner.runner_id}`;
  return h('article', { class: 'card runner-card', 'aria-labelledby': titleId },
    h('div', { class: 'runner-head' },
      h('h2', { class: 'card-title', id: titleId },
        h('a', { href: `/ui/runners/${encodeURIComponent(runner.runner_id)}`, text: runner.name })),
      stateBadges(runner)),
    h('p', { class: 'mono muted small', text: runner.runner_id }),
    facts(runner));
}

export function render(ctx) {
  const live = liveIndicator();
  const summary = h('p', { class: 'muted', 'aria-live': 'polite' });
  const grid = h('div', { class: 'runner-grid' },
    h('p', { class: 'muted loading', text: 'Loading…' }));
  ctx.root.append(pageHead('Runners', live.el), summary, grid);

  async function load() {
    const data = await api('/api/admin/runners', { key: 'admin', signal: ctx.signal });
    const runners = data.runners || [];
    const active = runners.filter((r) => r.is_active).length;
    const connected = runners.filter((r) => r.connected).length;
    summary.textContent = `${runners.length} registered · ${active} active · `
      + `${connected} connected here`;
    grid.replaceChildren(...(runners.length
      ? runners.map(runnerCard)
      : [h('div', { class: 'notice' }, 'No runner has registered yet. Start one with ',
        h('code', { text: 'runpack-runner' }), '.')]));
  }

  const reload = () => load().catch(ctx.fail);
  const reloadSoon = throttle(reload, 250);
  const timer = setInterval(reload, REFRESH_MS);
  ctx.onCleanup(() => {
    clearInterval(timer);
    reloadSoon.cancel();
  });
  ctx.onCleanup(subscribeAdmin({
    state: live.set,
    event(type) {
      if (type === 'status' || type === 'reset') reloadSoon();
    },
  }));
  reload();
}
