// HMAC-SHA256 signed requests.
//
// The client signs, with the shared secret,
//   "PKV1\n" + timestamp + "\n" + nonce + "\n" + METHOD + "\n" + path_and_query + "\n" +
//   hex(sha256(body))
// and sends X-PKV-Timestamp (unix seconds), X-PKV-Nonce and X-PKV-Signature (lowercase hex).
// The secret never travels, so a captured request does not reveal it, and a captured request
// is only good within +-WINDOW_S of its timestamp.
//
// Nonces of accepted mutating requests are remembered for the window, in this isolate only:
// Cloudflare runs many isolates, so a replay that reaches another one is not caught. That is
// acceptable for this cache: deletes and sweeps are idempotent, and a replayed put of an entry
// computed before an invalidation is deleted by the re-sweep every invalidation runs after KV's
// 60 s propagation delay (its metadata "c" is older than the sweep's boundary). The memory only
// narrows what an eavesdropper can do within the window; TLS keeps requests from being seen.

import { ERR, KVLimitError } from "./limits.js";

export const WINDOW_S = 30;
export const MIN_SECRET_LENGTH = 32;
const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const SIGNATURE = /^[0-9a-f]{64}$/;
const encoder = new TextEncoder();

const seenNonces = new Map(); // nonce -> ms after which it may be forgotten (insertion order)
const keyCache = new Map(); // secret -> CryptoKey (the secrets are the Worker's own bindings)

function refuse(message) {
  return new KVLimitError(message, ERR.AUTH, 401);
}

async function hmacKey(secret) {
  let key = keyCache.get(secret);
  if (!key) {
    key = await crypto.subtle.importKey("raw", encoder.encode(secret),
      { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    keyCache.set(secret, key);
  }
  return key;
}

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(text) {
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

/** The secrets a signature may be made with: SECRET, and SECRET_PREVIOUS during a rotation. */
function secrets(env) {
  const found = [env.SECRET, env.SECRET_PREVIOUS].filter(
    (s) => typeof s === "string" && s.length >= MIN_SECRET_LENGTH);
  if (typeof env.SECRET !== "string" || env.SECRET.length < MIN_SECRET_LENGTH) {
    throw refuse(`the gateway has no SECRET of at least ${MIN_SECRET_LENGTH} characters ` +
      "configured: it refuses every request");
  }
  return found;
}

function forget(now) {
  for (const [nonce, until] of seenNonces) {
    if (until > now) break;
    seenNonces.delete(nonce);
  }
}

/**
 * The checks that need no body, made before it is read, so that a request without a configured
 * SECRET, without well-formed headers or outside the window is refused without reading (and
 * hashing) up to MAX_BODY_BYTES first. Throws KVLimitError(10000, 401); returns what `verify`
 * needs.
 */
export function checkHeaders(request, env) {
  const keys = secrets(env);
  const timestamp = request.headers.get("x-pkv-timestamp");
  const nonce = request.headers.get("x-pkv-nonce");
  const signature = request.headers.get("x-pkv-signature");
  if (!timestamp || !nonce || !signature) {
    throw refuse("missing authentication headers (X-PKV-Timestamp, X-PKV-Nonce, X-PKV-Signature)");
  }
  if (!/^[0-9]{1,12}$/.test(timestamp) || !NONCE.test(nonce) || !SIGNATURE.test(signature)) {
    throw refuse("malformed authentication headers");
  }
  const now = Date.now();
  if (Math.abs(now / 1000 - Number(timestamp)) > WINDOW_S) {
    throw refuse(`request timestamp is more than ${WINDOW_S} s away from the gateway's clock`);
  }
  return { keys, timestamp, nonce, signature, now };
}

/**
 * Throws KVLimitError(10000, 401) unless the request (its headers passed `checkHeaders`, which
 * gave `signed`) is signed with a configured secret and, for a mutating request, its nonce was
 * not used before in this isolate.
 */
export async function verify(request, body, signed, mutating) {
  const { keys, timestamp, nonce, signature, now } = signed;
  const url = new URL(request.url);
  const digest = hex(await crypto.subtle.digest("SHA-256", body));
  const message = encoder.encode(["PKV1", timestamp, nonce, request.method,
    url.pathname + url.search, digest].join("\n"));
  const given = unhex(signature);
  let valid = false;
  for (const secret of keys) {
    // crypto.subtle.verify compares in constant time
    if (await crypto.subtle.verify("HMAC", await hmacKey(secret), given, message)) {
      valid = true;
      break;
    }
  }
  if (!valid) throw refuse("invalid request signature");
  if (mutating) {
    forget(now);
    if (seenNonces.has(nonce)) throw refuse("request nonce already used (a replay)");
    seenNonces.set(nonce, now + 2 * WINDOW_S * 1000);
  }
}
