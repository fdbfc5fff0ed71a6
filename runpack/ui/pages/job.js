// One job, live: params, progress, console, result (with a figpack preview), error.
// Readable without a key, as the original's /jobs/{id} that Neurosift links to.

import { api, getKey } from '../api.js';
import {
  FINAL, card, formatTime, h, json, runnerLink, safeUrl, statusBadge, statusLabel, throttle,
} from '../dom.js';
import { watchJob } from '../sse.js';
import { liveIndicator, pageHead } from './common.js';

export const section = 'jobs';
export const title = 'Job';

const RUNNING = new Set(['pending', 'claimed', 'in_progress']);
const RETRYABLE = new Set(['failed', 'expired', 'cancelled']);
const MAX_CONSOLE = 1_048_576;
const MAX_FIGURES = 3;
/** A pending job's place in line is read this often… */
const REFRESH_MS = 2000;
/** …and a running job's detail (its heartbeats' events move the times in between). */
const RUNNING_REFRESH_MS = 10_000;

export function render(ctx) {
  const [jobId] = ctx.params;
  ctx.setTitle(`Job ${jobId.slice(0, 8)}`);
  ctx.root.append(pageHead('Job', h('a', { href: '/ui/jobs', text: '← All jobs' })));
  ctx.root.append(jobView(ctx, jobId));
}

/** Every figpack_url in a result, however deep. */
function figpackUrls(value, found = []) {
  if (found.length >= MAX_FIGURES || value === null || typeof value !== 'object') return found;
  for (const [key, item] of Object.entries(value)) {
    if (key === 'figpack_url' && typeof item === 'string') {
      const url = safeUrl(item);
      if (url && !found.includes(url)) found.push(url);
    } else figpackUrls(item, found);
  }
  return found;
}

function isPage(url) {
  return /\.html?$/i.test(new URL(url).pathname);
}

/**
 * The live view of a job; the job page and the Playground both show it.
 * Returns its element; the stream closes with the page (ctx.onCleanup).
 */
export function jobView(ctx, jobId, { live = liveIndicator() } = {}) {
  let job = null;
  let stop = null;

  const badgeSlot = h('span');
  const typeText = h('span', { class: 'job-type' });
  const actions = h('div', { class: 'actions' });
  const meta = h('dl', { class: 'meta' });
  const notice = h('div');
  const bar = h('progress', { id: 'job-progress', 'aria-label': 'Job progress' });
  const barText = h('span', { class: 'progress-text', 'aria-hidden': 'true' });
  // Where a pending job stands (the server's sentence), or why no runner takes it.
  const queueText = h('p', { class: 'queue-text', id: 'job-queue', 'aria-live': 'polite' });
  queueText.hidden = true;
  const params = h('pre', { class: 'code', 'aria-label': 'Input parameters' });
  const consoleBox = h('pre', {
    class: 'console', role: 'log', 'aria-label': 'Console output', tabindex: '0',
  });
  const result = h('pre', { class: 'code', id: 'job-result', 'aria-label': 'Result JSON' });
  const figures = h('div', { class: 'figures' });
  const resultCard = card('Result', figures, result);
  const error = h('pre', { class: 'code error-text', 'aria-label': 'Error message' });
  const errorCard = card('Error', error);
  errorCard.classList.add('card-error');
  resultCard.hidden = true;
  errorCard.hidden = true;

  const summary = h('section', { class: 'card job-summary', 'aria-label': 'Job summary' },
    h('div', { class: 'job-head' },
      h('div', { class: 'job-title' }, typeText, badgeSlot, live.el),
      actions),
    h('p', { class: 'mono job-id', text: jobId }),
    meta);
  const progressCard = card('Progress',
    h('div', { class: 'progress-row' }, bar, barText), queueText);
  const root = h('div', { class: 'job-view', 'data-job-id': jobId },
    notice, summary, progressCard,
    h('div', { class: 'columns' }, card('Parameters', params), card('Console', consoleBox)),
    resultCard, errorCard);

  function setStatus(status) {
    job.status = status;
    badgeSlot.replaceChildren(statusBadge(status));
    badgeSlot.setAttribute('aria-label', `Status: ${statusLabel(status)}`);
    renderActions();
    if (status === 'deleted') {
      notice.replaceChildren(
        h('div', { class: 'notice', role: 'alert', text: 'This job was deleted.' }));
    }
    if (status === 'completed') {
      const total = job.progress?.total > 0 ? job.progress.total : 0;
      setProgress(total ? { current: total, total } : null);
    } else if (!job.progress) setProgress(null);
  }

  function setProgress(progress) {
    if (progress && progress.total > 0) {
      job.progress = progress;
      const current = Math.max(0, Math.min(progress.current ?? 0, progress.total));
      bar.max = progress.total;
      bar.value = current;
      const percent = Math.round((100 * current) / progress.total);
      barText.textContent = `${current} / ${progress.total} (${percent}%)`;
    } else if (job?.status === 'completed') {
      bar.max = 1;
      bar.value = 1;
      barText.textContent = 'Done';
    } else {
      bar.removeAttribute('value');
      barText.textContent = RUNNING.has(job?.status)
        ? (job.status === 'pending' ? 'Waiting for a runner…' : 'Running…')
        : '—';
    }
    setQueue();
  }

  function setQueue() {
    const message = job?.status === 'pending' ? job.queue?.message : '';
    queueText.hidden = !message;
    queueText.textContent = message || '';
    const stuck = Boolean(message) && job.queue?.runners === 0;
    queueText.classList.toggle('queue-stuck', stuck);
    if (message) barText.textContent = stuck ? 'No runner for its type' : 'Waiting in line…';
  }

  function setConsole(text) {
    const stick = consoleBox.scrollTop + consoleBox.clientHeight >= consoleBox.scrollHeight - 8;
    consoleBox.textContent = text.length > MAX_CONSOLE ? text.slice(-MAX_CONSOLE) : text;
    if (stick) consoleBox.scrollTop = consoleBox.scrollHeight;
  }

  function appendConsole(text) {
    setConsole(consoleBox.textContent + text);
  }

  function setResult(output) {
    if (output === undefined || output === null) {
      resultCard.hidden = true;
      return;
    }
    resultCard.hidden = false;
    result.textContent = json(output);
    figures.replaceChildren(...figpackUrls(output).map((url) => h('figure', { class: 'figure' },
      h('figcaption', {}, h('a', {
        href: url, target: '_blank', rel: 'noopener noreferrer', class: 'button',
        text: 'Open figure ↗',
      })),
      // a figure's page only (any other file is served as a download), sandboxed
      // without allow-same-origin: the figure cannot read this page's keys
      isPage(url) && h('div', { class: 'figure-frame' }, h('iframe', {
        src: url, title: 'Figure preview', loading: 'lazy', referrerpolicy: 'no-referrer',
        sandbox: 'allow-scripts allow-popups allow-downloads',
      })))));
  }

  function setError(message) {
    errorCard.hidden = !message;
    error.textContent = message || '';
  }

  function metaItem(label, value) {
    return [h('dt', { text: label }), h('dd', {}, value)];
  }

  function renderMeta() {
    meta.replaceChildren(
      ...metaItem('Created', formatTime(job.created_at)),
      ...metaItem('Updated', formatTime(job.updated_at)),
      ...metaItem('Runner', job.claimed_by ? runnerLink(job.claimed_by, job.runner_name) : '—'),
      ...metaItem('Attempts',
        job.max_attempts ? `${job.attempts ?? 0} of ${job.max_attempts}` : '—'),
      ...metaItem('Priority', String(job.priority ?? 0)),
      ...metaItem('Last heartbeat', formatTime(job.last_heartbeat)),
      ...metaItem('Hash', h('span', { class: 'mono', text: job.job_hash || '—' })),
    );
  }

  function renderActions() {
    const buttons = [];
    const admin = getKey('admin');
    const canCancel = admin
      ? RUNNING.has(job.status)
      : getKey('submit') && job.status === 'pending';
    if (canCancel) {
      buttons.push(h('button', {
        type: 'button', class: 'button danger', text: 'Cancel job',
        onclick: () => act('cancel'),
      }));
    }
    if (admin && RETRYABLE.has(job.status)) {
      buttons.push(h('button', {
        type: 'button', class: 'button primary', text: 'Retry job', onclick: () => act('retry'),
      }));
    }
    actions.replaceChildren(...buttons);
  }

  async function act(what) {
    const path = what === 'cancel'
      ? `/api/jobs/${encodeURIComponent(jobId)}/cancel`
      : `/api/admin/jobs/${encodeURIComponent(jobId)}/retry`;
    const key = what === 'retry' || getKey('admin') ? 'admin' : 'submit';
    for (const b of actions.querySelectorAll('button')) b.disabled = true;
    try {
      const reply = await api(path, { method: 'POST', key, signal: ctx.signal });
      ctx.toast(reply.message || 'Done', 'success');
      if (what === 'retry') {
        setConsole('');
        setResult(null);
        setError('');
        job.progress = null;
      }
      await load();
      follow();
    } catch (err) {
      ctx.fail(err);
      renderActions();
    }
  }

  function apply(data) {
    job = { ...job, ...data };
    typeText.textContent = job.job_type || '';
    params.textContent = json(job.input_params ?? {});
    renderMeta();
    setProgress(job.progress || null);
    setStatus(job.status);
    setConsole(job.console_output || '');
    setResult(job.status === 'completed' ? job.output_data ?? {} : null);
    setError(job.error_message || '');
  }

  async function load() {
    apply(await api(`/api/admin/jobs/${encodeURIComponent(jobId)}`, { signal: ctx.signal }));
  }

  /** What moves without an event of its own: timestamps, the runner, the place in line. */
  let refreshed = 0;
  async function refresh() {
    if (!job || FINAL.has(job.status)) return;
    refreshed = Date.now();
    const data = await api(`/api/admin/jobs/${encodeURIComponent(jobId)}`, { signal: ctx.signal });
    if (FINAL.has(job.status)) return; // the stream's final word came meanwhile
    for (const name of ['updated_at', 'last_heartbeat', 'claimed_by', 'claimed_at', 'runner_name',
      'attempts', 'queue']) {
      job[name] = data[name];
    }
    renderMeta();
    setQueue();
  }
  const timer = setInterval(() => {
    if (job?.status !== 'pending' && Date.now() - refreshed < RUNNING_REFRESH_MS) return;
    refresh().catch((err) => {
      if (err?.status === 404) clearInterval(timer); // deleted: the stream says so
      else ctx.fail(err);
    });
  }, REFRESH_MS);

  /** A heartbeat's event: the server just advanced the job's times. */
  const renderMetaSoon = throttle(renderMeta, 1000);
  ctx.onCleanup(renderMetaSoon.cancel);
  function beat() {
    if (!job || FINAL.has(job.status)) return;
    job.last_heartbeat = Date.now();
    job.updated_at = job.last_heartbeat;
    renderMetaSoon();
  }
  ctx.onCleanup(() => clearInterval(timer));

  function follow() {
    stop?.();
    if (FINAL.has(job.status)) {
      live.set('closed');
      return;
    }
    live.set('connecting');
    stop = watchJob(jobId, {
      state: live.set,
      snapshot: apply,
      progress(data) {
        setProgress(data);
        beat();
      },
      console(data) {
        if (typeof data.replace === 'string') setConsole(data.replace);
        if (typeof data.append === 'string') appendConsole(data.append);
        beat();
      },
      status(data) {
        if (data.runner_id && data.runner_id !== job.claimed_by) {
          job.claimed_by = data.runner_id;
          job.runner_name = undefined;
          refresh().catch(ctx.fail); // its name, and the claim's time
        }
        job.updated_at = Date.now();
        if (data.result) setResult(data.result.output_data ?? {});
        if (data.error) setError(data.error);
        setStatus(data.status);
        renderMeta();
      },
      final(data) {
        // the last word: final console output, timestamps and attempts
        if (data.status !== 'deleted') load().catch(ctx.fail);
      },
    });
  }
  ctx.onCleanup(() => stop?.());

  load().then(follow, (err) => {
    if (err?.status === 404) {
      live.set('off');
      root.replaceChildren(h('div', { class: 'notice notice-error', role: 'alert' },
        'No job has the id ', h('span', { class: 'mono', text: jobId }), '.'));
    } else ctx.fail(err);
  });
  return root;
}
