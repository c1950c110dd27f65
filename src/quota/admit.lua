-- Admits one upload atomically: checks every limit, then reserves against all or none.
-- KEYS: 1 uploads hash, 2 bytes hash (field: bucket number, value: amount), 3 slots zset
-- ARGV: 1 uploads/min, 2 bytes/hour, 3 concurrent, 4 bytes, 5 slot id, 6 lease ms,
--       7 upload bucket ms, 8 bytes bucket ms, 9 buckets per window
-- Returns {verdict, retry_after_ms, upload bucket, bytes bucket}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per_minute, per_hour, concurrent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bytes, lease, n = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[9])

-- The live buckets of a window (dead ones are deleted on the way), oldest first, and their sum.
local function live(key, bucket_ms)
  local current = math.floor(now / bucket_ms)
  local fields = redis.call('HGETALL', key)
  local total, list = 0, {}
  for i = 1, #fields, 2 do
    local number, amount = tonumber(fields[i]), tonumber(fields[i + 1])
    if number + n < current then
      redis.call('HDEL', key, fields[i])
    else
      total = total + amount
      list[#list + 1] = {number, amount}
    end
  end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  return total, list, current
end

-- Milliseconds until `need` more fits under `limit`: when enough of the oldest buckets are gone.
local function retry_after(list, total, need, limit, bucket_ms)
  for _, entry in ipairs(list) do
    total = total - entry[2]
    if total + need <= limit then
      return (entry[1] + n + 1) * bucket_ms - now
    end
  end
  return (n + 1) * bucket_ms
end

if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= concurrent then
    return {'quota_concurrency', 1000, 0, 0}
  end
end
local upload_ms, bytes_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local uploads, upload_list, upload_bucket = live(KEYS[1], upload_ms)
if per_minute > 0 and uploads + 1 > per_minute then
  return {'quota_uploads', retry_after(upload_list, uploads, 1, per_minute, upload_ms), 0, 0}
end
local used, bytes_list, bytes_bucket = live(KEYS[2], bytes_ms)
if per_hour > 0 and used + bytes > per_hour then
  return {'quota_bytes', retry_after(bytes_list, used, bytes, per_hour, bytes_ms), 0, 0}
end
if per_minute > 0 then
  redis.call('HINCRBY', KEYS[1], upload_bucket, 1)
  redis.call('PEXPIRE', KEYS[1], (n + 2) * upload_ms)
end
if per_hour > 0 then
  redis.call('HINCRBY', KEYS[2], bytes_bucket, bytes)
  redis.call('PEXPIRE', KEYS[2], (n + 2) * bytes_ms)
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], 2 * lease)
end
-- The buckets counted in; -1 for a limit that is off (nothing counted, nothing to settle).
return {'ok', 0, per_minute > 0 and upload_bucket or -1, per_hour > 0 and bytes_bucket or -1}
