// The gateway's local API, as the page uses it (endpoints: gateway/api.py).
//
// The token lives in sessionStorage: it is gone when the tab closes, is never
// shared with other tabs, and is only ever sent in the Authorization header
// of requests to this origin -- never in a URL, never logged.

const KEY = "lumeau.api-token";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function hasToken() {
  return sessionStorage.getItem(KEY) !== null;
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

// Check a token against the gateway; keep it only if the gateway accepts it.
export async function signIn(token) {
  await request("/nodes?limit=1", { token });
  sessionStorage.setItem(KEY, token);
}

// `raw`: bytes sent as they are (a release image for POST /campaigns), not JSON.
export async function request(path, { method = "GET", body, token, text = false, raw } = {}) {
  const headers = { Accept: text ? "text/plain" : "application/json", Authorization: "Bearer " + (token ?? sessionStorage.getItem(KEY) ?? "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (raw !== undefined) headers["Content-Type"] = "application/octet-stream";
  let r;
  try {
    r = await fetch(path, {
      method, headers, body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit", redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "the gateway did not answer");
  }
  if (r.status === 401) throw new Unauthorized("the gateway refused the token");
  if (text && r.ok) return r.text();
  const doc = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, (doc && doc.error) || r.statusText || "HTTP " + r.status);
  return doc;
}
