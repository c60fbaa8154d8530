-- ARGV[4] receipt, ARGV[5] cost, ARGV[6] ttl (s), ARGV[7] attempt ('' none), ARGV[8] book JSON ('' none),
-- ARGV[9] n, ARGV[10 .. 9+n] keys (distinct), then per key: a count c and c keys it reads
-- (windowed reads: their totals are added to that key's before, nothing is held on them).
-- Reply: {created (0|1), record JSON}.
local id = ARGV[4]
local r = find(id, NOW)
if r then return {0, cjson.encode(r)} end
local cost = need_u64(ARGV[5], 'cost')
local n = tonumber(ARGV[9])
local keys, before = {}, {}
-- every counter read, once (the request's keys first): one HMGET per hash
local every, index = {}, {}
local function want(k)
  if not index[k] then every[#every + 1] = k; index[k] = #every end
end
for i = 10, 9 + n do keys[#keys + 1] = ARGV[i]; want(ARGV[i]) end
local j = 10 + n
for _ = 1, n do
  for x = j + 1, j + tonumber(ARGV[j]) do want(ARGV[x]) end
  j = j + tonumber(ARGV[j]) + 1
end
local S, H = balances_of(every)
local function total(k) return cap(dadd(S[index[k]], H[index[k]])) end
j = 10 + n
for i = 1, n do
  local acc = total(keys[i])
  for x = j + 1, j + tonumber(ARGV[j]) do acc = dadd(acc, total(ARGV[x])) end
  j = j + tonumber(ARGV[j]) + 1
  before[i] = cap(acc)
end
change(keys, nil, cost, nil, S, H)  -- the request's keys are every[1..n], so S and H line up
local exp = fmt(NOW + tonumber(ARGV[6]))
r = {k = keys, a = cost, b = before, e = exp, s = 'held'}
if ARGV[7] ~= '' then r.x = ARGV[7] end
if ARGV[8] ~= '' then r.m = ARGV[8] end
local record = cjson.encode(r)
redis.call('ZREM', K_SETTLED, id)  -- a forgotten record of the same id, not yet pruned
redis.call('HSET', K_RES, id, record)
redis.call('ZADD', K_EXPIRY, exp, id)
return {1, record}
