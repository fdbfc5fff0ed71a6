// Dashboard: job and runner counts, live activity and the newest jobs.

import { api } from '../api.js';
import {
  card, h, jobLink, runnerLink, statusBadge, table, throttle, timeEl, typeName,
} from '../dom.js';
import { subscribeAdmin } from '../sse.js';
import { liveIndicator, pageHead } from './common.js';

export const section = 'dashboard';
export const title = 'Dashboard';

const STATS = [
  ['total', 'Total jobs', (s) => s.jobs.total],
  ['pending', 'Pending', (s) => s.jobs.pending],
  ['running', 'Running', (s) => (s.jobs.claimed || 0) + (s.jobs.in_progress || 0)],
  ['completed', 'Completed', (s) => s.jobs.completed],
  ['failed', 'Failed', (s) => s.jobs.failed],
  ['cancelled', 'Cancelled', (s) => s.jobs.cancelled ?? 0],
  ['expired', 'Expired', (s) => s.jobs.expired],
  ['runners', 'Active runners', (s) => `${s.runners.active} / ${s.runners.total}`],
];
const RECENT = 10;
const MAX_ACTIVITY = 40;

export function render(ctx) {
  const live = liveIndicator();
  const values = new Map();
  const statGrid = h('div', { class: 'stats' }, STATS.map(([key, label]) => {
    const value = h('span', { class: 'stat-value', text: '—' });
    values.set(key, value);
    return h('div', { class: `stat stat-${key}`, 'data-stat': key },
      h('span', { class: 'stat-label', text: label }), value);
  }));
  const activity = h('ol', { class: 'activity', role: 'log', 'aria-label': 'Live activity' });
  const activityEmpty = h('p', { class: 'muted', text: 'Job events appear here as they happen.' });
  const recentSlot = h('div');
  const types = new Map();
  const bars = new Map();

  ctx.root.append(
    pageHead('Dashboard', live.el),
    statGrid,
    h('div', { class: 'columns' },
      card('Live activity', activityEmpty, activity),
      card('Recent jobs', recentSlot, h('p', { class: 'card-foot' },
        h('a', { href: '/ui/jobs', text: 'All jobs →' })))),
  );

  async function loadStats() {
    const stats = await api('/api/admin/stats', { key: 'admin', signal: ctx.signal });
    for (const [key, , pick] of STATS) values.get(key).textContent = String(pick(stats) ?? 0);
  }

  async function loadRecent() {
    const data = await api(`/api/admin/jobs?limit=${RECENT}`, { key: 'admin', signal: ctx.signal });
    bars.clear();
    const rows = data.jobs.map((job) => {
      types.set(job.job_id, job.job_type);
      const running = job.status === 'claimed' || job.status === 'in_progress';
      let progress = h('span', { class: 'muted', text: '—' });
      if (running) {
        progress = h('progress', { 'aria-label': `Progress of job ${job.job_id}` });
        bars.set(job.job_id, progress);
      }
      return h('tr', {},
        h('td', {}, jobLink(job.job_id)),
        h('td', {}, typeName(job.job_type)),
        h('td', {}, statusBadge(job.status)),
        h('td', { class: 'hide-sm' }, progress),
        h('td', { class: 'hide-sm' }, timeEl(job.created_at)));
    });
    const wide = (label) => ({ label, class: 'hide-sm' });
    for (const el of activity.querySelectorAll('[data-type-of]')) {
      if (!el.textContent) el.textContent = types.get(el.dataset.typeOf) || '';
    }
    const headers = ['Job', 'Type', 'Status', wide('Progress'), wide('Created')];
    recentSlot.replaceChildren(table(headers, rows, {
      caption: 'Recent jobs', empty: 'No jobs yet. Submit one in the Playground.',
    }));
  }

  const refresh = throttle(() => {
    loadStats().catch(ctx.fail);
    loadRecent().catch(ctx.fail);
  }, 200);
  ctx.onCleanup(refresh.cancel);

  function addActivity(data) {
    activityEmpty.hidden = true;
    const type = types.get(data.job_id);
    const extra = [];
    if (data.status === 'claimed' && data.runner_id) extra.push(' by ', runnerLink(data.runner_id));
    if (data.status === 'failed' && data.error) {
      extra.push(h('span', { class: 'activity-error', text: String(data.error).slice(0, 160) }));
    }
    activity.prepend(h('li', { class: 'activity-item' },
      timeEl(Date.now()),
      statusBadge(data.status),
      jobLink(data.job_id),
      h('span', { class: 'type', 'data-type-of': data.job_id, text: type || '' }),
      ...extra));
    while (activity.children.length > MAX_ACTIVITY) activity.lastElementChild.remove();
  }

  ctx.onCleanup(subscribeAdmin({
    state: live.set,
    event(type, data) {
      if (type === 'reset') refresh();
      else if (type === 'status') {
        addActivity(data);
        refresh();
      } else if (type === 'progress') {
        const bar = bars.get(data.job_id);
        if (bar && data.total > 0) {
          bar.max = data.total;
          bar.value = Math.min(data.current ?? 0, data.total);
        }
      }
    },
  }));
  loadStats().catch(ctx.fail);
  loadRecent().catch(ctx.fail);
}
