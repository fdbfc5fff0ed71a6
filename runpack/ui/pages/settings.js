// Settings: the API keys, kept in this browser (localStorage) and sent only here.

import { api, getKey, setKey } from '../api.js';
import { h } from '../dom.js';
import { stopAdminStream } from '../sse.js';
import { pageHead } from './common.js';

export const section = 'settings';
export const title = 'Settings';

const NIL_JOB = '00000000-0000-4000-8000-000000000000';

/** 'ok', 'rejected' or a message: does the server take this key for that use? */
async function check(kind, signal) {
  const path = kind === 'admin' ? '/api/admin/stats' : `/api/jobs/${NIL_JOB}`;
  try {
    await api(path, { key: kind, signal, redirect: false });
    return 'ok';
  } catch (error) {
    if (error?.status === 404 && kind === 'submit') return 'ok';
    if (error?.status === 401 || error?.status === 403) return 'rejected';
    return error?.message || String(error);
  }
}

export function render(ctx) {
  const { message, returnTo } = ctx.state;
  const keyInput = (id, kind) => {
    const input = h('input', {
      id, name: kind, type: 'password', autocomplete: 'off', spellcheck: 'false',
      'aria-describedby': `${id}-help`,
    });
    input.value = getKey(kind);
    return input;
  };
  const submitKey = keyInput('set-submit', 'submit');
  const adminKey = keyInput('set-admin', 'admin');
  const show = h('input', { id: 'set-show', type: 'checkbox' });
  show.addEventListener('change', () => {
    for (const input of [submitKey, adminKey]) input.type = show.checked ? 'text' : 'password';
  });
  const status = h('div', { class: 'outcome', 'aria-live': 'polite' });

  const form = h('form', { class: 'card form', 'aria-label': 'API keys' },
    h('div', { class: 'field' },
      h('label', { for: 'set-admin', text: 'Admin key' }), adminKey,
      h('p', { id: 'set-admin-help', class: 'help', text: 'Dashboard, Jobs and Runners, and '
        + 'cancel, retry and delete. The runner key can read these pages but not change jobs.' })),
    h('div', { class: 'field' },
      h('label', { for: 'set-submit', text: 'Submit key' }), submitKey,
      h('p', { id: 'set-submit-help', class: 'help', text: 'Submitting jobs in the Playground. '
        + 'If empty, the admin key is used.' })),
    h('div', { class: 'field check' }, show, h('label', { for: 'set-show', text: 'Show keys' })),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'button primary', text: 'Save keys' }),
      h('button', {
        type: 'button', class: 'button', text: 'Forget keys',
        onclick: () => {
          setKey('submit', '');
          setKey('admin', '');
          submitKey.value = '';
          adminKey.value = '';
          stopAdminStream();
          status.replaceChildren(
            h('div', { class: 'notice', text: 'Keys removed from this browser.' }));
        },
      })),
    h('p', { class: 'help', text: 'Keys stay in this browser (localStorage) and are sent only to '
      + 'this server. Job pages (/ui/jobs/<id>) need no key.' }));

  ctx.root.append(pageHead('Settings'));
  if (message) {
    ctx.root.append(h('div', { class: 'notice notice-warn', role: 'alert', text: message }));
  }
  ctx.root.append(form, status);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    setKey('submit', submitKey.value);
    setKey('admin', adminKey.value);
    stopAdminStream();
    status.replaceChildren(h('p', { class: 'muted', text: 'Saved. Checking the keys…' }));
    const results = [];
    for (const [kind, input] of [['admin', adminKey], ['submit', submitKey]]) {
      if (!input.value.trim()) continue;
      results.push([kind, await check(kind, ctx.signal)]);
    }
    if (ctx.signal.aborted) return;
    const good = results.every(([, r]) => r === 'ok');
    status.replaceChildren(h('div', { class: `notice ${good ? 'notice-ok' : 'notice-error'}` },
      results.length ? 'Saved. ' : 'Saved (no keys). ',
      results.map(([kind, r]) => `${kind === 'admin' ? 'Admin' : 'Submit'} key: ${
        r === 'ok' ? 'accepted' : r === 'rejected' ? 'rejected by the server' : r}. `)));
    if (good && results.length && returnTo) ctx.navigate(returnTo);
  });
}
