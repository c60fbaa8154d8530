-- ARGV[4] mark, ARGV[5] ttl in seconds ('' = never forgotten). Reply: 1 for the first caller, else 0.
-- Marks past their time are dropped here (up to SWEEP_LIMIT per call) and by expire.lua.
forget_marks(NOW)
local mark = ARGV[4]
local until_ = redis.call('HGET', K_MARKS, mark)
if until_ and (until_ == '' or tonumber(until_) > NOW) then return 0 end
if ARGV[5] == '' then
  redis.call('HSET', K_MARKS, mark, '')
  redis.call('ZREM', K_MARK_EXPIRY, mark)
else
  local at = fmt(NOW + tonumber(ARGV[5]))
  redis.call('HSET', K_MARKS, mark, at)
  redis.call('ZADD', K_MARK_EXPIRY, at, mark)
end
return 1
