-- Completes a claim. KEYS[1]: the key's hash. ARGV: token, status, content_type, body,
-- body_sha256, ttl (ms). Only the claim's owner may complete it.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'content_type', ARGV[3],
  'body', ARGV[4], 'body_sha256', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
