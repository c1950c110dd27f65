-- Abandons a claim: the key is free again. KEYS[1]: the key's hash. ARGV[1]: the token.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and
   redis.call('HGET', KEYS[1], 'state') == 'running' then
  return redis.call('DEL', KEYS[1])
end
return 0
