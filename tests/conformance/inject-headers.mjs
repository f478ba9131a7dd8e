// Preload for the MCP conformance suites (node --import <this file> …/conformance/dist/index.js server --url …):
// their CLI cannot send a credential, so this adds the test's headers to every request the suite makes to the
// bridge's origin, whichever way it makes it: fetch and undici.request (both through undici's global dispatcher)
// and node:http.request (the header-validation scenario, which keeps exact header casing). Nothing else changes.
// Env: CONFORMANCE_INJECT_ORIGIN=http://127.0.0.1:PORT  CONFORMANCE_INJECT_HEADERS='{"X-API-Key":"…"}'
//      CONFORMANCE_DIR=<the install whose node_modules holds undici>
import { createRequire } from 'node:module';
import path from 'node:path';
import http from 'node:http';

const req = createRequire(path.join(process.env.CONFORMANCE_DIR || process.cwd(), 'noop.js'));
const { Agent, setGlobalDispatcher } = req('undici');
const origin = new URL(process.env.CONFORMANCE_INJECT_ORIGIN).origin;
const extra = Object.entries(JSON.parse(process.env.CONFORMANCE_INJECT_HEADERS || '{}'));

function addHeaders(h) {
  if (h == null) return Object.fromEntries(extra);
  if (Array.isArray(h)) return h.length && Array.isArray(h[0]) ? [...h, ...extra] : [...h, ...extra.flat()];
  if (typeof h[Symbol.iterator] === 'function') return [...h, ...extra];
  return { ...h, ...Object.fromEntries(extra) };
}

setGlobalDispatcher(new Agent().compose((dispatch) => (opts, handler) => {
  const target = typeof opts.origin === 'string' ? opts.origin : opts.origin?.origin;
  if (target && new URL(target).origin === origin) opts = { ...opts, headers: addHeaders(opts.headers) };
  return dispatch(opts, handler);
}));

const bridge = new URL(origin);
const originalRequest = http.request;
http.request = function (...args) {
  const options = args.find((a) => a && typeof a === 'object' && !(a instanceof URL));
  const given = args.find((a) => typeof a === 'string' || a instanceof URL);
  const url = given ? new URL(given) : null;
  const host = url ? url.hostname : (options?.hostname ?? options?.host);
  const port = String(url ? (url.port || 80) : (options?.port ?? 80));
  if (options && host === bridge.hostname && port === String(bridge.port || 80)) {
    options.headers = { ...(options.headers || {}), ...Object.fromEntries(extra) };
  }
  return originalRequest.apply(this, args);
};
