// Dashboard: job and runner counts, live activity and the newest jobs.

import { api } from '../api.js';
import {
  card, h, jobLink, runnerLink, statusBadge, table, throttle, timeEl,
} from '../dom.js';
import { subscribeAdmin } from '../sse.js';
import { liveIndicator, pageHead } from './common.js';

export const section = 'dashboard';

const RUNNING_OR_DONE = new Set(['claimed', 'in_progress', 'completed', 'failed']);
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
/** Runner names by id, read once per runner (live events name runners by id). */
const runnerNames = new Map();

function runnerName(id, signal) {
  if (!runnerNames.has(id)) {
    runnerNames.set(id, api(`/api/admin/runners/${encodeURIComponent(id)}`, { key: 'admin', signal })
      .then((r) => r.name, () => {
        runnerNames.delete(id);
        return null;
      }));
  }
  return runnerNames.get(id);
}

/** A link to a runner, showing its name once known. */
function namedRunner(id, name, signal) {
  const el = runnerLink(id, name);
  if (!name) runnerName(id, signal).then((found) => { if (found) el.textContent = found; });
  return el;
}

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
      if (job.claimed_by && job.runner_name) runnerNames.set(job.claimed_by, Promise.resolve(job.runner_name));
      const running = job.status === 'claimed' || job.status === 'in_progress';
      let progress = h('span', { class: 'muted', text: '—' });
      if (running) {
        progress = h('progress', { 'aria-label': `Progress of job ${job.job_id}` });
        bars.set(job.job_id, progress);
      } else if (job.status === 'completed') {
        progress = h('span', { class: 'progress-done' },
          h('progress', { max: '1', value: '1', 'aria-label': `Job ${job.job_id} is complete` }),
          h('span', { text: '100 %' }));
      }
      return h('tr', {},
        h('td', {}, jobLink(job.job_id)),
        // one line, even beside a progress bar (no break chances after underscores)
        h('td', { class: 'nowrap' }, h('span', { class: 'type', text: job.job_type })),
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
    if (!activity.children.length) showRecentPast(data.jobs);
  }

  /** Opened mid-run: the latest changes of the recent jobs, until live events come. */
  function showRecentPast(jobs) {
    const latest = [...jobs].sort((a, b) => b.updated_at - a.updated_at);
    for (const job of latest.slice(0, RECENT).reverse()) {
      addActivity({ job_id: job.job_id, status: job.status, runner_id: job.claimed_by,
        runner_name: job.runner_name }, job.updated_at, true);
    }
  }

  const refresh = throttle(() => {
    loadStats().catch(ctx.fail);
    loadRecent().catch(ctx.fail);
  }, 200);
  ctx.onCleanup(refresh.cancel);

  function addActivity(data, at = Date.now(), past = false) {
    activityEmpty.hidden = true;
    const type = types.get(data.job_id);
    const extra = [];
    const byRunner = past ? RUNNING_OR_DONE.has(data.status) : data.status === 'claimed';
    if (byRunner && data.runner_id) {
      extra.push(' by ', namedRunner(data.runner_id, data.runner_name, ctx.signal));
    }
    if (data.status === 'failed' && data.error) {
      extra.push(h('span', { class: 'activity-error', text: String(data.error).slice(0, 160) }));
    }
    activity.prepend(h('li', { class: past ? 'activity-item activity-past' : 'activity-item' },
      timeEl(at),
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
