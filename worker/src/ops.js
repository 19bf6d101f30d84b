// A Worker invocation may make at most 1,000 KV operations (a bulk get is one; each get, put,
// delete and list page is one). Handlers take operations from this counter before each call and
// stop when it is spent, reporting what they did not do so the client can send it again.

export const DEFAULT_MAX_OPS = 1000;

export class OpCounter {
  /** MAX_OPS is set only by tests (to force partial work); absent, KV's limit applies. */
  constructor(env) {
    const configured = Number.parseInt(env.MAX_OPS ?? "", 10);
    this.limit = configured > 0 && configured <= DEFAULT_MAX_OPS ? configured : DEFAULT_MAX_OPS;
    this.used = 0;
  }

  get left() {
    return this.limit - this.used;
  }

  /** Takes n operations if that many are left; false (nothing taken) otherwise. */
  take(n = 1) {
    if (this.used + n > this.limit) return false;
    this.used += n;
    return true;
  }
}

/** Runs fn over items, at most `width` calls at a time; each result or its error per item. */
export async function settleAll(items, fn, width = 50) {
  const results = [];
  for (let i = 0; i < items.length; i += width) {
    results.push(...await Promise.allSettled(items.slice(i, i + width).map(fn)));
  }
  return results;
}
