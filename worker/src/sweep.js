// The server side of an invalidation sweep: list each prefix, delete what the rule says.
//
// The rule is peewee_kvcache/kv/sweep.py's (`doomed_keys`), kept identical here: a listed key is
// deleted when its metadata "c" (unix ms when its query started) is missing or <= the prefix's
// boundary, together with the key its metadata "e" names (a marker's entry) when that name
// starts with the request's scope. Later results are fresh and stay.

import { validateKey, validatePrefix, KVLimitError, ERR, SWEEP_MAX_PREFIXES } from "./limits.js";
import { settleWhileBudget } from "./ops.js";

/** The keys one listed key condemns under `beforeMs` (the rule above). */
export function doomedKeys(name, metadata, beforeMs, scope) {
  const created = metadata && typeof metadata === "object" ? metadata.c : undefined;
  if (Number.isInteger(created) && created > beforeMs) return [];
  const target = metadata && typeof metadata === "object" ? metadata.e : undefined;
  return typeof target === "string" && target.startsWith(scope) ? [name, target] : [name];
}

function checkRequest(body) {
  const { prefixes, scope, cursor, pending } = body ?? {};
  if (!prefixes || typeof prefixes !== "object" || Array.isArray(prefixes)) {
    throw new KVLimitError("sweep: 'prefixes' must be an object of prefix: before_ms",
      ERR.MALFORMED, 400);
  }
  const entries = Object.entries(prefixes);
  if (entries.length > SWEEP_MAX_PREFIXES) {
    throw new KVLimitError(`sweep: 'received ${entries.length} prefixes, but max allowed per ` +
      `request is: ${SWEEP_MAX_PREFIXES}'`, ERR.MALFORMED, 400);
  }
  for (const [prefix, before] of entries) {
    validatePrefix(prefix);
    if (!Number.isSafeInteger(before)) {
      throw new KVLimitError(`sweep: before_ms of ${JSON.stringify(prefix)} must be an integer`,
        ERR.MALFORMED, 400);
    }
  }
  if (typeof scope !== "string") {
    throw new KVLimitError("sweep: 'scope' must be a string", ERR.MALFORMED, 400);
  }
  if (cursor !== undefined && cursor !== null && typeof cursor !== "string") {
    throw new KVLimitError("sweep: 'cursor' must be a string", ERR.INVALID_CURSOR, 400);
  }
  if (pending !== undefined && !Array.isArray(pending)) {
    throw new KVLimitError("sweep: 'pending' must be an array of keys", ERR.MALFORMED, 400);
  }
  (pending ?? []).forEach(validateKey);
  return { entries, scope, cursor: cursor || undefined, pending: pending ?? [] };
}

/**
 * Sweeps as far as the operation budget allows. The answer's `next`, when `done` is false, is
 * the request body that continues the sweep: the prefixes not finished (the first one resumes
 * at `cursor`) and `pending`, the keys already listed but not yet deleted (so a resumed sweep
 * never lists a page twice, even where KV's list still shows keys deleted a moment ago).
 */
export async function sweep(kv, body, ops) {
  let { entries, scope, cursor, pending } = checkRequest(body);
  const seen = new Set();
  const unsuccessful = [];
  let deleted = 0;
  for (;;) {
    pending = [...new Set(pending)].filter((key) => !seen.has(key));
    const results = await settleWhileBudget(pending, (key) => kv.delete(key), ops);
    results.forEach((result, i) => {
      seen.add(pending[i]);
      if (result.status === "fulfilled") deleted++;
      else unsuccessful.push(pending[i]);
    });
    pending = pending.slice(results.length);
    if (pending.length || !entries.length || !ops.take(1)) break;
    const [prefix, beforeMs] = entries[0];
    const page = await kv.list({ prefix, cursor, limit: 1000 });
    for (const key of page.keys) pending.push(...doomedKeys(key.name, key.metadata, beforeMs, scope));
    cursor = page.list_complete ? undefined : page.cursor;
    if (!cursor) entries = entries.slice(1);
  }
  const done = !pending.length && !entries.length;
  const result = { done, deleted_key_count: deleted, unsuccessful_keys: unsuccessful };
  if (!done) {
    result.next = { prefixes: Object.fromEntries(entries), scope, pending };
    if (cursor) result.next.cursor = cursor;
  }
  return result;
}
