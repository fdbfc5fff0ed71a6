// Playground: submit a job (type, JSON params), then follow it live.

import { api, getKey } from '../api.js';
import { h, shortId, statusLabel } from '../dom.js';
import { pageHead } from './common.js';
import { jobView } from './job.js';

export const section = 'playground';
export const title = 'Playground';

const EXAMPLES = [
  ['Hello world (5 s)', 'hello_world', { name: 'World', processing_time: 5 }],
  ['Hello world (30 s)', 'hello_world', { name: 'Runpack', processing_time: 30 }],
  ['A job that fails', 'hello_world', { name: 'Oops', processing_time: 2, test_exception: true }],
];

/** The params as an object, or a message saying what is wrong. */
export function parseParams(text) {
  if (!text.trim()) return { error: 'Enter the input parameters as a JSON object, e.g. {}.' };
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { error: `Invalid JSON: ${error.message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { error: 'The input parameters must be a JSON object ({ … }).' };
  }
  return { value };
}

export function render(ctx) {
  const typeInput = h('input', {
    id: 'pg-type', name: 'job_type', required: true, autocomplete: 'off', list: 'pg-types',
    spellcheck: 'false', value: 'hello_world',
  });
  const typeList = h('datalist', { id: 'pg-types' }, h('option', { value: 'hello_world' }));
  const paramsInput = h('textarea', {
    id: 'pg-params', name: 'input_params', rows: '8', spellcheck: 'false',
    'aria-describedby': 'pg-params-help pg-params-error',
  });
  paramsInput.value = JSON.stringify({ name: 'World', processing_time: 5 }, null, 2);
  const paramsError = h('p', {
    id: 'pg-params-error', class: 'field-error', 'aria-live': 'polite',
  });
  const priority = h('input', {
    id: 'pg-priority', name: 'priority', type: 'number', min: '-1000', max: '1000', step: '1',
    value: '0', inputmode: 'numeric',
  });
  const force = h('input', { id: 'pg-force', name: 'force', type: 'checkbox' });
  const submit = h('button', { type: 'submit', class: 'button primary', text: 'Submit job' });
  const outcome = h('div', { class: 'outcome', 'aria-live': 'polite' });
  const jobSlot = h('div', { class: 'job-slot' });
  let stopJob = null;

  const examples = h('div', { class: 'examples', role: 'group', 'aria-label': 'Examples' },
    EXAMPLES.map(([label, type, params]) => h('button', {
      type: 'button', class: 'button small', text: label,
      onclick: () => {
        typeInput.value = type;
        paramsInput.value = JSON.stringify(params, null, 2);
        validate();
      },
    })));

  const form = h('form', { class: 'card form', 'aria-label': 'Submit a job', novalidate: true },
    h('div', { class: 'field' },
      h('label', { for: 'pg-type', text: 'Job type' }), typeInput, typeList),
    h('div', { class: 'field' },
      h('label', { for: 'pg-params', text: 'Input parameters (JSON)' }),
      paramsInput,
      h('p', { id: 'pg-params-help', class: 'help', text: 'A JSON object; the same type and '
        + 'parameters always map to the same job, so a finished job answers from the cache.' }),
      paramsError),
    h('div', { class: 'field-row' },
      h('div', { class: 'field' }, h('label', { for: 'pg-priority', text: 'Priority' }), priority),
      h('div', { class: 'field check' }, force,
        h('label', { for: 'pg-force', text: 'Run again if it failed or expired' }))),
    h('div', { class: 'actions' },
      submit,
      h('button', {
        type: 'button', class: 'button', text: 'Format JSON',
        onclick: () => {
          const parsed = parseParams(paramsInput.value);
          if (parsed.value) paramsInput.value = JSON.stringify(parsed.value, null, 2);
          validate();
        },
      })),
    examples);

  ctx.root.append(pageHead('Playground'), form, outcome, jobSlot);

  function validate() {
    const parsed = parseParams(paramsInput.value);
    paramsError.textContent = parsed.error || '';
    if (parsed.error) paramsInput.setAttribute('aria-invalid', 'true');
    else paramsInput.removeAttribute('aria-invalid');
    return parsed;
  }
  paramsInput.addEventListener('input', validate);

  function show(jobId) {
    stopJob?.();
    const cleanups = [];
    const viewCtx = { ...ctx, onCleanup: (fn) => cleanups.push(fn) };
    stopJob = () => cleanups.splice(0).forEach((fn) => fn());
    jobSlot.replaceChildren(
      h('p', { class: 'job-link' }, h('a', { href: `/ui/jobs/${encodeURIComponent(jobId)}`,
        text: 'Open the job page →' })),
      jobView(viewCtx, jobId));
  }
  ctx.onCleanup(() => stopJob?.());

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const parsed = validate();
    const jobType = typeInput.value.trim();
    if (!jobType) {
      outcome.replaceChildren(
        h('div', { class: 'notice notice-error', text: 'Enter a job type.' }));
      typeInput.focus();
      return;
    }
    if (parsed.error) {
      paramsInput.focus();
      return;
    }
    const body = { job_type: jobType, input_params: parsed.value };
    const prio = Number.parseInt(priority.value || '0', 10);
    if (prio) body.priority = prio;
    if (force.checked) body.force = true;
    submit.disabled = true;
    outcome.replaceChildren(h('p', { class: 'muted', text: 'Submitting…' }));
    try {
      const reply = await api('/api/jobs/submit', {
        method: 'POST', body, key: 'submit', signal: ctx.signal,
      });
      outcome.replaceChildren(h('div', { class: 'notice notice-ok' },
        h('strong', { text: `Submitted ${shortId(reply.job_id)}` }),
        ` — ${reply.message || statusLabel(reply.status)}.`));
      const here = `/ui/playground?job=${encodeURIComponent(reply.job_id)}`;
      history.replaceState(history.state, '', here);
      show(reply.job_id);
    } catch (error) {
      if (error?.status === 401) return;
      outcome.replaceChildren(h('div', { class: 'notice notice-error', role: 'alert',
        text: `The server refused the job: ${error?.message || error}` }));
    } finally {
      submit.disabled = false;
    }
  });

  if (getKey('admin')) {
    api('/api/admin/runners', { key: 'admin', signal: ctx.signal, redirect: false })
      .then((data) => {
        const types = new Set(['hello_world']);
        for (const r of data.runners || []) for (const c of r.capabilities || []) types.add(c);
        typeList.replaceChildren(...[...types].sort().map((t) => h('option', { value: t })));
      })
      .catch(() => {});
  }
  const following = ctx.query.get('job');
  if (following) show(following);
}
