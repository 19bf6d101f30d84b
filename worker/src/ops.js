// A Worker invocation may make at most 1,000 KV operations (a bulk get is one; each get, put,
// delete and list page is one). Handlers take operations from this counter before each call and
// stop when it is spent, reporting what they did not do so the client can send it again.
//
// Time is budgeted the same way: a Worker runs at most 6 KV calls at once, so 1,000 deletes can
// take longer than the client waits for an answer (10 s by default), and a request the client gave
// up on is not resent (it may have been done). Past TIME_BUDGET_MS no new operation starts: the
// answer reports what is left, in time for the client to read it.

export const DEFAULT_MAX_OPS = 1000;
export const DEFAULT_TIME_BUDGET_MS = 5000;
/** KV calls started together; the runtime queues those beyond its own limit. */
const WIDTH = 50;

function positive(raw, max) {
  const value = Number.parseInt(raw ?? "", 10);
  return value > 0 && value <= max ? value : max;
}

export class OpCounter {
  /** MAX_OPS and TIME_BUDGET_MS are set only by tests (to force partial work); absent, KV's
   * operation limit and DEFAULT_TIME_BUDGET_MS apply. */
  constructor(env) {
    this.limit = positive(env.MAX_OPS, DEFAULT_MAX_OPS);
    this.deadline = Date.now() + positive(env.TIME_BUDGET_MS, DEFAULT_TIME_BUDGET_MS);
    this.used = 0;
  }

  /** Operations that may still start: none once the time budget is spent, except that the
   * first round always starts (every request makes progress, however late it began). */
  get left() {
    return this.used === 0 || Date.now() < this.deadline ? this.limit - this.used : 0;
  }

  /** Takes n operations if that many are left; false (nothing taken) otherwise. */
  take(n = 1) {
    if (n > this.left) return false;
    this.used += n;
    return true;
  }
}

/**
 * Runs fn over items, WIDTH calls at a time, while operations and time are left; each attempted
 * item's result or error, in order (fewer than items.length when the budget stopped it).
 */
export async function settleWhileBudget(items, fn, ops) {
  const results = [];
  while (results.length < items.length) {
    const chunk = items.slice(results.length, results.length + Math.min(WIDTH, ops.left));
    if (!chunk.length || !ops.take(chunk.length)) break;
    results.push(...await Promise.allSettled(chunk.map(fn)));
  }
  return results;
}
