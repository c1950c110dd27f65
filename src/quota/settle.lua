-- Settles a reservation: the slot is released; a stored upload's bytes are set to what was sent,
-- a failed upload's upload and bytes are given back (in the buckets they were taken from).
-- KEYS: 1 uploads hash, 2 bytes hash, 3 slots zset
-- ARGV: 1 stored (1/0), 2 reserved bytes, 3 sent bytes, 4 upload bucket, 5 bytes bucket (-1: not
-- counted), 6 slot id
redis.call('ZREM', KEYS[3], ARGV[6])
-- A bucket of -1: that limit was off at admission, nothing was counted there.
local function adjust(key, field, delta)
  if delta ~= 0 and field ~= '-1' and redis.call('HEXISTS', key, field) == 1 then
    redis.call('HINCRBY', key, field, delta)
  end
end
if ARGV[1] == '1' then
  adjust(KEYS[2], ARGV[5], tonumber(ARGV[3]) - tonumber(ARGV[2]))
else
  adjust(KEYS[1], ARGV[4], -1)
  adjust(KEYS[2], ARGV[5], -tonumber(ARGV[2]))
end
return 1
