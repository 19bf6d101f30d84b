"""Cloudflare API error codes, in one place: the limit checks raise them, the REST client
recognises them and the test server answers with them."""

ERR_RATE_LIMITED = 971  # with HTTP 429 and Retry-After
ERR_NO_ROUTE = 7000
ERR_BAD_ACCOUNT = 7003
ERR_AUTH = 10000  # 401 without credentials, 403 with wrong ones
ERR_KEY_NOT_FOUND = 10009
ERR_MALFORMED_REQUEST = 10012  # also what KV answers for an oversized bulk request
ERR_NAMESPACE_NOT_FOUND = 10013
ERR_PAYLOAD_TOO_LARGE = 10024
ERR_INVALID_LIMIT = 10028
ERR_KEY_TOO_LONG = 10030
ERR_INVALID_EXPIRATION = 10033
ERR_INVALID_EXPIRATION_TTL = 10034
ERR_INVALID_CURSOR = 10041
ERR_ILLEGAL_KEY = 10042
ERR_INVALID_METADATA = 10047
