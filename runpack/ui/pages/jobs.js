// Jobs: filter by status and type, page through, select and delete.

import { api } from '../api.js';
import {
  STATUSES, debounce, h, jobLink, runnerLink, statusBadge, statusLabel, table, throttle, timeEl,
  typeName,
} from '../dom.js';
import { subscribeAdmin } from '../sse.js';
import { liveIndicator, pageHead } from './common.js';

export const section = 'jobs';
export const title = 'Jobs';

const PAGE_SIZE = 25;
const wide = (label) => ({ label, class: 'hide-sm' });

export function render(ctx) {
  const state = {
    status: STATUSES.includes(ctx.query.get('status')) ? ctx.query.get('status') : '',
    type: ctx.query.get('type') || '',
    page: Math.max(1, Number.parseInt(ctx.query.get('page') || '1', 10) || 1),
  };
  const selected = new Set();
  // The `after` that starts a page, from the page before it: a deep page costs what
  // the first does. A page reached any other way (a link to ?page=N) uses offset.
  const afters = new Map();
  let shown = [];
  const live = liveIndicator();

  const statusSelect = h('select', { id: 'jobs-status', name: 'status' },
    h('option', { value: '', text: 'All statuses' }),
    STATUSES.map((s) => h('option', { value: s, text: statusLabel(s) })));
  statusSelect.value = state.status;
  const typeInput = h('input', {
    id: 'jobs-type', name: 'type', type: 'search', placeholder: 'e.g. hello', autocomplete: 'off',
  });
  typeInput.value = state.type;
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs' },
    h('div', { class: 'field' }, h('label', { for: 'jobs-status', text: 'Status' }), statusSelect),
    h('div', { class: 'field grow' },
      h('label', { for: 'jobs-type', text: 'Job type contains' }), typeInput));
  filters.addEventListener('submit', (e) => e.preventDefault());

  const count = h('span', { class: 'muted', 'aria-live': 'polite', text: 'No jobs selected' });
  const deleteButton = h('button', {
    type: 'button', class: 'button danger', disabled: true, text: 'Delete selected',
  });
  const toolbar = h('div', { class: 'toolbar' }, count, deleteButton);
  const tableSlot = h('div', { class: 'table-slot' },
    h('p', { class: 'muted loading', text: 'Loading…' }));
  const prev = h('button', { type: 'button', class: 'button', text: '← Previous' });
  const next = h('button', { type: 'button', class: 'button', text: 'Next →' });
  const pageText = h('span', { class: 'muted' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of jobs' }, prev, pageText, next);

  const dialogText = h('p');
  const confirmButton = h('button', { class: 'button danger', value: 'delete', text: 'Delete' });
  const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'jobs-dialog-title' },
    h('form', { method: 'dialog' },
      h('h2', { id: 'jobs-dialog-title', text: 'Delete jobs?' }), dialogText,
      h('div', { class: 'actions' },
        h('button', { class: 'button', value: 'cancel', text: 'Keep them' }), confirmButton)));

  ctx.root.append(pageHead('Jobs', live.el),
    h('section', { class: 'card', 'aria-label': 'Jobs list' }, filters, toolbar, tableSlot, pager),
    dialog);

  function syncUrl() {
    const q = new URLSearchParams();
    if (state.status) q.set('status', state.status);
    if (state.type) q.set('type', state.type);
    if (state.page > 1) q.set('page', String(state.page));
    const text = q.toString();
    history.replaceState(history.state, '', `/ui/jobs${text ? `?${text}` : ''}`);
  }

  function updateSelection() {
    for (const id of [...selected]) if (!shown.some((j) => j.job_id === id)) selected.delete(id);
    const n = selected.size;
    count.textContent = n ? `${n} selected` : 'No jobs selected';
    deleteButton.disabled = n === 0;
    deleteButton.textContent = n ? `Delete selected (${n})` : 'Delete selected';
    const all = tableSlot.querySelector('#jobs-select-all');
    if (all) {
      all.checked = n > 0 && n === shown.length;
      all.indeterminate = n > 0 && n < shown.length;
    }
  }

  function row(job) {
    const box = h('input', {
      type: 'checkbox', 'aria-label': `Select job ${job.job_id}`, 'data-job-id': job.job_id,
    });
    box.checked = selected.has(job.job_id);
    box.addEventListener('change', () => {
      if (box.checked) selected.add(job.job_id);
      else selected.delete(job.job_id);
      updateSelection();
    });
    return h('tr', { 'data-job-id': job.job_id },
      h('td', { class: 'select' }, box),
      h('td', {}, jobLink(job.job_id)),
      h('td', {}, typeName(job.job_type)),
      h('td', {}, statusBadge(job.status)),
      h('td', { class: 'hide-sm' }, timeEl(job.created_at)),
      h('td', { class: 'hide-sm' }, timeEl(job.updated_at)),
      h('td', { class: 'hide-sm' }, job.claimed_by ? runnerLink(job.claimed_by, job.runner_name) : '—'));
  }

  let loading = 0;
  async function load() {
    const mine = ++loading;
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const after = afters.get(state.page);
    if (after) q.set('after', after);
    else if (state.page > 1) q.set('offset', String((state.page - 1) * PAGE_SIZE));
    if (state.status) q.set('status', state.status);
    if (state.type) q.set('job_type', state.type);
    const data = await api(`/api/admin/jobs?${q}`, { key: 'admin', signal: ctx.signal });
    if (mine !== loading) return;
    shown = data.jobs;
    if (data.next) afters.set(state.page + 1, data.next);
    const selectAll = h('input', {
      type: 'checkbox', id: 'jobs-select-all', 'aria-label': 'Select all jobs on this page',
    });
    selectAll.addEventListener('change', () => {
      for (const job of shown) {
        if (selectAll.checked) selected.add(job.job_id);
        else selected.delete(job.job_id);
      }
      for (const box of tableSlot.querySelectorAll('tbody input[type=checkbox]')) {
        box.checked = selectAll.checked;
      }
      updateSelection();
    });
    const filtered = state.status || state.type;
    tableSlot.replaceChildren(table(
      [selectAll, 'Job', 'Type', 'Status', ...['Created', 'Updated', 'Runner'].map(wide)],
      shown.map(row),
      { caption: 'Jobs', empty: filtered ? 'No jobs match these filters.' : 'No jobs yet.' },
    ));
    prev.disabled = state.page <= 1;
    next.disabled = !data.next;
    pageText.textContent = `Page ${state.page}`;
    updateSelection();
  }

  const reload = () => load().catch(ctx.fail);
  const reloadSoon = throttle(reload, 250);
  ctx.onCleanup(reloadSoon.cancel);
  const refilter = () => {
    state.status = statusSelect.value;
    state.type = typeInput.value.trim();
    state.page = 1;
    afters.clear();
    selected.clear();
    syncUrl();
    reload();
  };
  const refilterSoon = debounce(refilter, 250);
  ctx.onCleanup(refilterSoon.cancel);
  statusSelect.addEventListener('change', refilter);
  typeInput.addEventListener('input', refilterSoon);
  typeInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      refilterSoon.cancel();
      refilter();
    }
  });
  prev.addEventListener('click', () => {
    state.page -= 1;
    syncUrl();
    reload();
  });
  next.addEventListener('click', () => {
    state.page += 1;
    syncUrl();
    reload();
  });

  deleteButton.addEventListener('click', () => {
    const n = selected.size;
    dialogText.textContent = `Delete ${n} job${n === 1 ? '' : 's'}? `
      + 'Their results and logs are removed for good.';
    confirmButton.textContent = `Delete ${n} job${n === 1 ? '' : 's'}`;
    dialog.showModal();
  });
  dialog.addEventListener('close', async () => {
    if (dialog.returnValue !== 'delete') return;
    const ids = [...selected];
    try {
      const result = await api('/api/admin/jobs/batch-delete', {
        method: 'POST', body: { job_ids: ids }, key: 'admin', signal: ctx.signal,
      });
      ctx.toast(result.message || `Deleted ${result.deleted} jobs`, 'success');
      selected.clear();
      await load();
    } catch (error) {
      ctx.fail(error);
    }
  });

  ctx.onCleanup(subscribeAdmin({
    state: live.set,
    event(type) {
      if (type === 'status' || type === 'reset') reloadSoon();
    },
  }));
  reload();
}
