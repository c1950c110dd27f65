-- Extends the leases of the slots this sidecar holds, so they outlive it only by one lease.
-- KEYS: the slots zsets; ARGV: 1 lease ms, then one slot id per key
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * lease)
end
return 1
