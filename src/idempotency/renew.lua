-- Extends the holds of the keys whose uploads run on this sidecar, so a sidecar that dies
-- frees them one lease later. KEYS: the keys' hashes. ARGV: 1 lease ms, then the claim's token
-- per key. A key completed, abandoned or claimed anew since is left as it is.
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'token') == ARGV[i + 1] and
     redis.call('HGET', key, 'state') == 'running' then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return 1
