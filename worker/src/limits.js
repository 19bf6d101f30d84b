// Workers KV's limits, checked before the binding is called so that a refused request gets the
// same error envelope (code, HTTP status, wording) as Cloudflare's REST API: the Python client
// reads both with one parser (peewee_kvcache/kv/transport.py) and the limit checks of
// peewee_kvcache/kv/limits.py use the same codes and messages.

export const MAX_KEY_BYTES = 512;
export const MAX_VALUE_BYTES = 25 * 1024 * 1024;
export const MAX_METADATA_BYTES = 1024;
export const MIN_EXPIRATION_TTL = 60;
export const BULK_WRITE_MAX_ITEMS = 10000;
export const BULK_DELETE_MAX_ITEMS = 10000;
export const BULK_GET_MAX_KEYS = 100;
export const LIST_MIN_LIMIT = 10;
export const LIST_MAX_LIMIT = 1000;
export const SWEEP_MAX_PREFIXES = 1000;
// A Worker has 128 MB of memory: one 25 MiB value in base64 (33.4 MiB) plus its JSON must fit,
// and the body, its text and the decoded value are in memory together.
export const MAX_BODY_BYTES = 36 * 1024 * 1024;

export const ERR = {
  AUTH: 10000,
  MALFORMED: 10012,
  PAYLOAD_TOO_LARGE: 10024,
  INVALID_LIMIT: 10028,
  KEY_TOO_LONG: 10030,
  INVALID_EXPIRATION: 10033,
  INVALID_EXPIRATION_TTL: 10034,
  INVALID_CURSOR: 10041,
  ILLEGAL_KEY: 10042,
  INVALID_METADATA: 10047,
  INTERNAL: 10001,
};

/** A refusal carried up to the handler, which turns it into Cloudflare's envelope. */
export class KVLimitError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const encoder = new TextEncoder();

function show(raw) {
  const text = String(raw);
  return text.length <= 64 ? text : text.slice(0, 61) + "...";
}

function asInt(raw) {
  if (typeof raw === "number" && Number.isInteger(raw)) return raw;
  if (typeof raw === "string" && /^-?[0-9]+$/.test(raw.trim())) return Number(raw);
  return null;
}

function keyLength(key, what) {
  if (typeof key !== "string") {
    throw new KVLimitError(`${what} must be a string, not ${typeof key}.`, ERR.ILLEGAL_KEY, 400);
  }
  const size = encoder.encode(key).length;
  if (size > MAX_KEY_BYTES) {
    throw new KVLimitError(`UTF-8 encoded length of ${size} exceeds key length limit of ` +
      `${MAX_KEY_BYTES}.`, ERR.KEY_TOO_LONG, 414);
  }
  return size;
}

export function validateKey(key) {
  if (keyLength(key, "Key name") === 0) {
    throw new KVLimitError("Key names must not be empty.", ERR.ILLEGAL_KEY, 400);
  }
  if (key === "." || key === "..") {
    throw new KVLimitError(`Illegal key name "${key}". Please use a different name.`,
      ERR.ILLEGAL_KEY, 400);
  }
  return key;
}

export function validatePrefix(prefix) {
  keyLength(prefix, "Prefix");
  return prefix;
}

export function validateMetadata(metadata) {
  if (metadata === undefined || metadata === null) return undefined;
  const size = encoder.encode(JSON.stringify(metadata)).length;
  if (size > MAX_METADATA_BYTES) {
    throw new KVLimitError(`Metadata length of ${size} exceeds limit of ${MAX_METADATA_BYTES}.`,
      ERR.INVALID_METADATA, 413);
  }
  return metadata;
}

/** The binding's put options for one pair; expiration_ttl wins when both are given (as KV). */
export function expiryOptions(expiration, expirationTtl, nowSeconds) {
  if (expirationTtl !== undefined && expirationTtl !== null) {
    const ttl = asInt(expirationTtl);
    if (ttl === null || ttl <= 0) {
      throw new KVLimitError(`Invalid expiration_ttl of ${show(expirationTtl)}. Please specify ` +
        "integer greater than 0.", ERR.INVALID_EXPIRATION_TTL, 400);
    }
    if (ttl < MIN_EXPIRATION_TTL) {
      throw new KVLimitError(`Invalid expiration_ttl of ${ttl}. Expiration TTL must be at least ` +
        `${MIN_EXPIRATION_TTL}.`, ERR.INVALID_EXPIRATION_TTL, 400);
    }
    return { expirationTtl: ttl };
  }
  if (expiration !== undefined && expiration !== null) {
    const at = asInt(expiration);
    if (at === null || at <= nowSeconds) {
      throw new KVLimitError(`Invalid expiration of ${show(expiration)}. Please specify integer ` +
        "greater than the current number of seconds since the UNIX epoch.",
        ERR.INVALID_EXPIRATION, 400);
    }
    if (at < nowSeconds + MIN_EXPIRATION_TTL) {
      throw new KVLimitError(`Invalid expiration of ${at}. Expiration times must be at least ` +
        `${MIN_EXPIRATION_TTL} seconds in the future.`, ERR.INVALID_EXPIRATION, 400);
    }
    return { expiration: at };
  }
  return {};
}

/** A base64 value decoded and checked against 25 MiB. */
export function decodeValue(text) {
  if (typeof text !== "string") {
    throw new KVLimitError("Malformed value: expected a base64 string.", ERR.MALFORMED, 400);
  }
  let binary;
  try {
    binary = atob(text);
  } catch {
    throw new KVLimitError("Malformed value: not valid base64.", ERR.MALFORMED, 400);
  }
  if (binary.length > MAX_VALUE_BYTES) {
    throw new KVLimitError(`Value length of ${binary.length} exceeds limit of ${MAX_VALUE_BYTES}.`,
      ERR.PAYLOAD_TOO_LARGE, 413);
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function validateListLimit(raw) {
  const count = asInt(raw);
  if (count === null || count < LIST_MIN_LIMIT || count > LIST_MAX_LIMIT) {
    throw new KVLimitError(`Invalid limit of ${show(raw)}. Please specify an integer between ` +
      `${LIST_MIN_LIMIT} and ${LIST_MAX_LIMIT}.`, ERR.INVALID_LIMIT, 400);
  }
  return count;
}

export function validateBulkCount(operation, items, maximum, what) {
  if (!Array.isArray(items)) {
    throw new KVLimitError(`bulk ${operation}: expected a JSON array of ${what}`, ERR.MALFORMED,
      400);
  }
  if (items.length > maximum) {
    throw new KVLimitError(`bulk ${operation}: 'received ${items.length} ${what}, but max allowed ` +
      `per request is: ${maximum}'`, ERR.MALFORMED, 400);
  }
  return items;
}
