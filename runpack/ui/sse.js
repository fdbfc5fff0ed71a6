// Live streams. One job: EventSource (no key needed). Everything: the admin stream,
// read with fetch() because it needs an Authorization header, which EventSource
// cannot send; it reconnects with Last-Event-ID after a drop.

import { AuthError, keyFor, reportUnauthorized } from './api.js';
import { FINAL } from './dom.js';

const JOB_EVENTS = ['snapshot', 'status', 'progress', 'console'];

/**
 * Follow one job. ``on`` has optional snapshot/status/progress/console(data),
 * final(data) and state('live' | 'reconnecting' | 'closed'). Returns a stop function.
 * The stream ends after a final status; it is closed then so it does not reconnect.
 */
export function watchJob(jobId, on) {
  const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
  for (const kind of JOB_EVENTS) {
    source.addEventListener(kind, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      on[kind]?.(data);
      if ((kind === 'status' || kind === 'snapshot') && FINAL.has(data.status)) {
        source.close();
        on.state?.('closed');
        on.final?.(data);
      }
    });
  }
  source.onopen = () => on.state?.('live');
  source.onerror = () => {
    on.state?.(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  };
  return () => source.close();
}

/** Parse a text/event-stream body, calling ``emit({id, event, data})`` per event. */
export async function readEventStream(body, emit) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let data = [];
  let type = '';
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end < 0 || (buffer[end] === '\r' && end === buffer.length - 1)) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith('\r\n', end) ? 2 : 1));
      if (line === '') {
        if (data.length) emit({ id, event: type || 'message', data: data.join('\n') });
        data = [];
        type = '';
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? '' : line.slice(colon + 1);
      if (text.startsWith(' ')) text = text.slice(1);
      if (field === 'data') data.push(text);
      else if (field === 'event') type = text;
      else if (field === 'id' && !text.includes('\0')) id = text;
    }
  }
}

// --- the admin stream, shared by every page that shows live data ------------------
const subscribers = new Set();
let stopCurrent = null;
let closeTimer = null;
let streamState = 'off';

function setState(state) {
  streamState = state;
  for (const sub of subscribers) sub.state?.(state);
}

function openAdminStream() {
  let stopped = false;
  let controller = null;
  let lastId = null;
  let delay = 500;
  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  async function loop() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${keyFor('admin')}` };
        if (lastId) headers['Last-Event-ID'] = lastId;
        const resp = await fetch('/api/admin/events', {
          headers, signal: controller.signal, cache: 'no-store',
        });
        if (resp.status === 401) {
          const body = await resp.json().catch(() => null);
          // Stopped meanwhile: another call's 401 has already sent the user to
          // Settings (and reading this body was cut short, so it says less).
          if (stopped) return;
          stopped = true;
          if (stopCurrent === stop) stopCurrent = null;
          setState('off');
          reportUnauthorized(new AuthError(401, body, 'admin'));
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        setState('live');
        delay = 500;
        await readEventStream(resp.body, (event) => {
          if (event.id) lastId = event.id;
          let data = {};
          try {
            data = JSON.parse(event.data);
          } catch {
            return;
          }
          for (const sub of subscribers) sub.event?.(event.event, data);
        });
      } catch {
        // a drop, an abort or a refused connection: retried below unless stopped
      }
      if (stopped) return;
      setState('reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }
  const stop = () => {
    stopped = true;
    controller?.abort();
  };
  loop();
  return stop;
}

/**
 * Get every job's events: ``on.event(type, data)`` and ``on.state(state)``.
 * The stream opens with the first subscriber and closes shortly after the last
 * leaves, so moving between pages does not reconnect. Returns an unsubscribe.
 */
export function subscribeAdmin(on) {
  subscribers.add(on);
  clearTimeout(closeTimer);
  if (!stopCurrent) {
    setState('connecting');
    stopCurrent = openAdminStream();
  } else {
    on.state?.(streamState);
  }
  return () => {
    subscribers.delete(on);
    if (!subscribers.size) closeTimer = setTimeout(stopAdminStream, 2000);
  };
}

/** Close the admin stream now (the admin key changed or was rejected). */
export function stopAdminStream() {
  clearTimeout(closeTimer);
  if (stopCurrent) stopCurrent();
  stopCurrent = null;
  streamState = 'off';
}
