// The gateway's operations over the KV binding. Each takes the parsed request and an OpCounter,
// and returns the `result` of Cloudflare's envelope (or throws KVLimitError for a refusal).

import {
  BULK_DELETE_MAX_ITEMS, BULK_GET_MAX_KEYS, BULK_WRITE_MAX_ITEMS, ERR, KVLimitError, decodeValue,
  expiryOptions, validateBulkCount, validateKey, validateListLimit, validateMetadata,
  validatePrefix,
} from "./limits.js";
import { settleWhileBudget } from "./ops.js";

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** The binding has no expiration on reads: the key's own listing (1 op) carries it. */
async function expirationOf(kv, key) {
  const page = await kv.list({ prefix: key, limit: 10 });
  const found = page.keys.find((info) => info.name === key);
  return found?.expiration ?? null;
}

/** Reads are not split: a read that cannot fit this invocation's KV operations is refused. */
function need(ops, n, what) {
  if (!ops.take(n)) {
    throw new KVLimitError(`${what}: ${n} KV operations exceed this invocation's limit of ` +
      `${ops.limit}`, ERR.MALFORMED, 400);
  }
}

/**
 * Multi-get of <= 100 keys: {values: {key: null | {value?, metadata, expiration?}}}.
 * `values: false` (existence re-checks) is one bulk read; otherwise each key is read as bytes
 * (the bulk read has text and JSON types only, which would mangle binary values).
 * `expiration: true` adds the key's expiry, from its listing (one more op per found key).
 */
export async function multiGet(kv, body, ops) {
  const keys = [...new Set(validateBulkCount("get", body?.keys, BULK_GET_MAX_KEYS, "keys"))];
  keys.forEach(validateKey);
  const withValues = body.values !== false;
  const withExpiration = body.expiration === true;
  const values = {};
  if (!keys.length) return { values };
  if (!withValues) {
    need(ops, 1, "get");
    const found = await kv.getWithMetadata(keys, { type: "text" });
    for (const key of keys) {
      const item = found.get(key);
      values[key] = item && item.value !== null ? { metadata: item.metadata ?? null } : null;
    }
  } else {
    need(ops, keys.length, "get");
    const read = await Promise.all(keys.map((key) => kv.getWithMetadata(key, { type: "arrayBuffer" })));
    keys.forEach((key, i) => {
      const { value, metadata } = read[i];
      values[key] = value === null ? null : { value: base64(value), metadata: metadata ?? null };
    });
  }
  if (withExpiration) {
    const found = keys.filter((key) => values[key] !== null);
    need(ops, found.length, "get");
    const expirations = await Promise.all(found.map((key) => expirationOf(kv, key)));
    found.forEach((key, i) => { values[key].expiration = expirations[i]; });
  }
  return { values };
}

/** Writes as many pairs as the op budget allows; the rest come back as unattempted_keys. */
export async function bulkPut(kv, body, ops) {
  const items = validateBulkCount("put", body, BULK_WRITE_MAX_ITEMS, "key/value pairs");
  const now = Math.floor(Date.now() / 1000);
  const writes = items.map((item) => {
    if (!item || typeof item !== "object") {
      throw new KVLimitError("bulk put: each item must be an object", ERR.MALFORMED, 400);
    }
    const key = validateKey(item.key);
    const options = expiryOptions(item.expiration, item.expiration_ttl, now);
    const metadata = validateMetadata(item.metadata);
    if (metadata !== undefined) options.metadata = metadata;
    return { key, value: decodeValue(item.value), options };
  });
  return partial(writes.map((w) => w.key), ops, (i) => {
    const { key, value, options } = writes[i];
    return kv.put(key, value, options);
  });
}

export async function bulkDelete(kv, body, ops) {
  const keys = validateBulkCount("delete", body, BULK_DELETE_MAX_ITEMS, "keys");
  keys.forEach(validateKey);
  return partial(keys, ops, (i) => kv.delete(keys[i]));
}

/** One op per key while the budget lasts: per-key failures and the keys not attempted. */
async function partial(keys, ops, call) {
  const results = await settleWhileBudget([...keys.keys()], call, ops);
  const count = results.length;
  const unsuccessful = keys.filter((_, i) => i < count && results[i].status === "rejected");
  return {
    successful_key_count: count - unsuccessful.length,
    unsuccessful_keys: unsuccessful,
    unattempted_keys: keys.slice(count),
  };
}

const CURSOR_TAG = "pkv1.";

/** One list page, in the REST API's shape: [{name, expiration?, metadata?}] and a cursor. */
export async function listKeys(kv, params, ops) {
  const prefix = validatePrefix(params.get("prefix") ?? "");
  const limit = validateListLimit(params.get("limit") ?? "1000");
  const given = params.get("cursor") || undefined;
  // Cursors are KV's, tagged: a cursor this gateway did not issue is refused as KV refuses one
  // (Miniflare would accept any text).
  if (given !== undefined && !given.startsWith(CURSOR_TAG)) {
    throw new KVLimitError("Invalid cursor.", ERR.INVALID_CURSOR, 400);
  }
  const cursor = given?.slice(CURSOR_TAG.length);
  need(ops, 1, "list");
  let page;
  try {
    page = await kv.list({ prefix, limit, cursor });
  } catch (error) {
    if (cursor && /cursor/i.test(String(error?.message))) {
      throw new KVLimitError("Invalid cursor.", ERR.INVALID_CURSOR, 400);
    }
    throw error;
  }
  const result = page.keys.map(({ name, expiration, metadata }) => {
    const info = { name };
    if (expiration !== undefined) info.expiration = expiration;
    if (metadata !== undefined) info.metadata = metadata;
    return info;
  });
  const next = page.list_complete ? "" : CURSOR_TAG + page.cursor;
  return { result, result_info: { count: result.length, cursor: next } };
}
