// The server's JSON API, with the keys this browser keeps in localStorage.

const STORAGE = { submit: 'runpack.submitKey', admin: 'runpack.adminKey' };

export function getKey(kind) {
  try {
    return localStorage.getItem(STORAGE[kind]) || '';
  } catch {
    return '';
  }
}

export function setKey(kind, value) {
  const clean = String(value || '').trim();
  if (clean) localStorage.setItem(STORAGE[kind], clean);
  else localStorage.removeItem(STORAGE[kind]);
}

export class ApiError extends Error {
  constructor(status, body) {
    const text = body && typeof body.error === 'string' ? body.error : `HTTP ${status}`;
    const details = body && typeof body.details === 'string' ? ` (${body.details})` : '';
    super(text + details);
    this.status = status;
    this.body = body;
  }
}

/** A 401: the key is missing or wrong. ``kind`` says which key was sent. */
export class AuthError extends ApiError {
  constructor(status, body, kind) {
    super(status, body);
    this.kind = kind;
  }
}

let unauthorized = () => {};

/** Who to tell about a 401 (the app sends the user to Settings). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function reportUnauthorized(error) {
  unauthorized(error);
}

/** The key a call uses: 'submit' falls back to the admin key, which opens it too. */
export function keyFor(kind) {
  if (kind === 'admin') return getKey('admin');
  if (kind === 'submit') return getKey('submit') || getKey('admin');
  return '';
}

/**
 * fetch() a JSON endpoint. ``key`` is null (public), 'submit' or 'admin'.
 * A 401 is reported (unless ``redirect`` is false) and thrown as AuthError.
 */
export async function api(path, options = {}) {
  const { method = 'GET', body, key = null, signal, redirect = true } = options;
  const headers = { Accept: 'application/json' };
  const token = key ? keyFor(key) : '';
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: 'no-store',
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text.slice(0, 200) || `HTTP ${resp.status}` };
  }
  if (resp.status === 401) {
    const error = new AuthError(resp.status, data, key);
    if (redirect) unauthorized(error);
    throw error;
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const isAbort = (error) => error && error.name === 'AbortError';
