-- Claims an idempotency key. KEYS[1]: the key's hash. ARGV[1]: this claim's token,
-- ARGV[2]: how long a running upload holds the key (ms).
-- Returns {"first"}, {"running"}, or {"done", status, content_type, body, body_sha256}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'running', 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'first'}
end
if state == 'done' then
  local a = redis.call('HMGET', KEYS[1], 'status', 'content_type', 'body', 'body_sha256')
  return {'done', a[1], a[2], a[3], a[4]}
end
return {'running'}
