// One runner: its state, slots, job types and the jobs it ran.

import { api } from '../api.js';
import {
  card, formatTime, h, jobLink, statusBadge, table, throttle, timeEl, typeName,
} from '../dom.js';
import { subscribeAdmin } from '../sse.js';
import { liveIndicator, pageHead } from './common.js';
import { facts, stateBadges } from './runners.js';

export const section = 'runners';
export const title = 'Runner';

const REFRESH_MS = 5000;

export function render(ctx) {
  const [runnerId] = ctx.params;
  const live = liveIndicator();
  const back = h('a', { href: '/ui/runners', text: '← All runners' });
  const heading = pageHead('Runner', live.el, back);
  const body = h('div', { class: 'stack' }, h('p', { class: 'muted loading', text: 'Loading…' }));
  ctx.root.append(heading, body);

  async function load() {
    let runner;
    try {
      runner = await api(`/api/admin/runners/${encodeURIComponent(runnerId)}`, {
        key: 'admin', signal: ctx.signal,
      });
    } catch (error) {
      if (error?.status !== 404) throw error;
      body.replaceChildren(h('div', { class: 'notice notice-error', role: 'alert' },
        'No runner has the id ', h('span', { class: 'mono', text: runnerId }), '.'));
      return;
    }
    ctx.setTitle(`Runner ${runner.name}`);
    heading.querySelector('h1').textContent = `Runner ${runner.name}`;
    const rows = (runner.jobs || []).map((job) => h('tr', {},
      h('td', {}, jobLink(job.job_id)),
      h('td', {}, typeName(job.job_type)),
      h('td', {}, statusBadge(job.status)),
      h('td', {}, timeEl(job.created_at)),
      h('td', { class: 'hide-sm' }, timeEl(job.updated_at))));
    const details = facts(runner);
    details.append(h('dt', { text: 'Registered' }),
      h('dd', { text: formatTime(runner.registered_at) }));
    const summary = h('section', { class: 'card', 'aria-label': 'Runner summary' },
      h('div', { class: 'runner-head' },
        h('p', { class: 'mono', text: runner.runner_id }), stateBadges(runner)),
      details);
    const updated = { label: 'Updated', class: 'hide-sm' };
    const jobsTable = table(['Job', 'Type', 'Status', 'Created', updated], rows, {
      caption: 'Jobs of this runner', empty: 'This runner has not run any job yet.',
    });
    body.replaceChildren(summary, card('Jobs', jobsTable));
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
