// peewee_kvcache's KV gateway: an authenticated, batched JSON API over a Workers KV binding.
//
// Why: Cloudflare's REST API allows 1,200 requests per 5 minutes for a whole account token; a
// Worker's binding has no such limit, reads through the edge cache and can batch what REST
// cannot (a sweep lists and deletes server-side in one request). Every answer uses the REST
// API's envelope and error codes, so the Python client parses both alike.
//
//   POST /v1/get      {keys: [<=100], values?: bool, expiration?: bool}
//   POST /v1/put      [{key, value (base64), expiration?, expiration_ttl?, metadata?}, ...]
//   POST /v1/delete   [key, ...]
//   GET  /v1/keys?prefix=&limit=10..1000&cursor=
//   POST /v1/sweep    {prefixes: {prefix: before_ms}, scope, cursor?, pending?}
//
// Bindings: KV (the namespace), SECRET (and SECRET_PREVIOUS while rotating; see auth.js).
// Test-only bindings, never set in production: MAX_OPS and TIME_BUDGET_MS (ops.js), and DELAY_MS,
// which holds every request that many milliseconds before it is answered, so a benchmark can put
// the gateway at the same distance as the KV server it compares it with
// (peewee_kvcache/testing/workerd.py).

import { checkHeaders, verify } from "./auth.js";
import { bulkDelete, bulkPut, listKeys, multiGet } from "./handlers.js";
import { ERR, KVLimitError, MAX_BODY_BYTES } from "./limits.js";
import { OpCounter } from "./ops.js";
import { sweep } from "./sweep.js";

const ROUTES = {
  "POST /v1/get": { handler: multiGet, mutating: false },
  "POST /v1/put": { handler: bulkPut, mutating: true },
  "POST /v1/delete": { handler: bulkDelete, mutating: true },
  "GET /v1/keys": { handler: listKeys, mutating: false, query: true },
  "POST /v1/sweep": { handler: sweep, mutating: true },
};

function reply(status, body) {
  return new Response(JSON.stringify(body), {
    status, headers: { "content-type": "application/json" },
  });
}

function failure(status, code, message) {
  return reply(status, { success: false, errors: [{ code, message }], messages: [], result: null });
}

function tooLarge(size) {
  return new KVLimitError(`Request body of ${size} bytes exceeds limit of ${MAX_BODY_BYTES}.`,
    ERR.PAYLOAD_TOO_LARGE, 413);
}

/**
 * The body, read as a stream and refused as soon as it passes MAX_BODY_BYTES: a body sent
 * without Content-Length (chunked) is never held in memory past the limit, whatever its size.
 */
async function readBody(request) {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) throw tooLarge(declared);
  if (!request.body) return new ArrayBuffer(0);
  const reader = request.body.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      reader.cancel().catch(() => {});
      throw tooLarge(`more than ${MAX_BODY_BYTES}`);
    }
    chunks.push(value);
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.byteLength;
  }
  return body.buffer;
}

function parseJson(body) {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new KVLimitError("Malformed request: the body is not UTF-8 JSON.", ERR.MALFORMED, 400);
  }
}

/** DELAY_MS (test-only): the distance to the gateway, paid before anything is answered. */
function distance(env) {
  const ms = Number.parseInt(env.DELAY_MS ?? "", 10);
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, Math.min(ms, 10000))) : null;
}

async function handle(request, env) {
  await distance(env);
  const url = new URL(request.url);
  const route = ROUTES[`${request.method} ${url.pathname}`];
  if (!route) {
    return failure(404, 7000, `No route for ${request.method} ${url.pathname}`);
  }
  const signed = checkHeaders(request, env);
  const body = await readBody(request);
  await verify(request, body, signed, route.mutating);
  const ops = new OpCounter(env);
  if (route.query) {
    return reply(200, { success: true, errors: [], messages: [],
      ...await route.handler(env.KV, url.searchParams, ops) });
  }
  const result = await route.handler(env.KV, parseJson(body), ops);
  return reply(200, { success: true, errors: [], messages: [], result });
}

export default {
  async fetch(request, env) {
    try {
      return await handle(request, env);
    } catch (error) {
      if (error instanceof KVLimitError) return failure(error.status, error.code, error.message);
      // a KV binding failure: its message (never a secret or a signature) for the operator
      return failure(500, ERR.INTERNAL, `KV operation failed: ${String(error?.message ?? error)}`);
    }
  },
};
