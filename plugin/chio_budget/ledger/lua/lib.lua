-- Shared prelude of every Redis ledger script (redis.py puts it in front of each).
-- KEYS: 1 version, 2 spent (hash key -> u64), 3 held (hash key -> uncapped sum),
--       4 reservations (hash receipt -> JSON), 5 expiry (zset receipt -> expires_at),
--       6 settled (zset receipt -> settled_at), 7 the schema-1 counters key,
--       8 marks (hash mark -> forgotten-at or ''), 9 mark expiry (zset mark -> forgotten-at);
--       import.lua adds 10, its staging hash. Every key shares one hash tag (one cluster slot).
-- ARGV: 1 now ('' = the server's TIME), 2 settled_retention (s), 3 settled_max; op args follow.
-- Amounts are canonical decimal strings. A Lua number is a double, exact only to 2^53, so only
-- amounts of at most 15 digits (< 10^15, whose sums stay below 2^53) are added as numbers;
-- longer ones are added and subtracted digit by digit. Counters are read with one HMGET per
-- hash and written with one HSET/HDEL per hash (``change``), not one call per counter.

-- Redis < 5 replicates scripts verbatim, which TIME would make non-deterministic;
-- ask for effects replication there (a no-op on Redis >= 5, the default since).
if redis.replicate_commands then redis.replicate_commands() end

local K_VERSION, K_SPENT, K_HELD, K_RES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_EXPIRY, K_SETTLED, K_V1, K_MARKS, K_MARK_EXPIRY = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local U64MAX = '18446744073709551615'
local SWEEP_LIMIT = 1000

local function is_dec(s)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') then return false end
  return #s == 1 or string.sub(s, 1, 1) ~= '0'
end

local function cmp(a, b)
  if #a ~= #b then if #a < #b then return -1 else return 1 end end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end

local function is_u64(s) return is_dec(s) and cmp(s, U64MAX) <= 0 end

local function need_u64(s, what)
  if not is_u64(s) then error(what .. ' is not a u64 decimal: ' .. tostring(s)) end
  return s
end

-- Below 10^15 (15 digits) both operands and their sum or difference are exact as doubles
-- (2^53 ~ 9.007e15), so short amounts take the fast path; longer ones go digit by digit.
local SHORT = 15

-- a + b, exact (no cap: held sums may pass 2^64-1)
local function dadd(a, b)
  if #a <= SHORT and #b <= SHORT then return string.format('%.0f', tonumber(a) + tonumber(b)) end
  local out, i, j, carry = {}, #a, #b, 0
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    if d >= 10 then d = d - 10; carry = 1 else carry = 0 end
    out[#out + 1] = string.char(48 + d)
  end
  return string.reverse(table.concat(out))
end

local function cap(s) if cmp(s, U64MAX) > 0 then return U64MAX end return s end

-- max(a - b, 0)
local function dsub(a, b)
  if #a <= SHORT and #b <= SHORT then
    local d = tonumber(a) - tonumber(b)
    if d <= 0 then return '0' end
    return string.format('%.0f', d)
  end
  if cmp(a, b) <= 0 then return '0' end
  local out, i, j, borrow = {}, #a, #b, 0
  while i > 0 do
    local d = string.byte(a, i) - 48 - borrow; i = i - 1
    if j > 0 then d = d - (string.byte(b, j) - 48); j = j - 1 end
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    out[#out + 1] = string.char(48 + d)
  end
  local s = string.gsub(string.reverse(table.concat(out)), '^0+', '')
  if s == '' then return '0' end
  return s
end

local function check_balance(k, s, h)
  if not is_u64(s) then error('corrupt counter ' .. k .. ' spent: ' .. tostring(s)) end
  if not is_dec(h) then error('corrupt counter ' .. k .. ' held: ' .. tostring(h)) end
end

local function balance(k)
  local s = redis.call('HGET', K_SPENT, k) or '0'
  local h = redis.call('HGET', K_HELD, k) or '0'
  check_balance(k, s, h)
  return s, h
end

local CHUNK = 1000  -- fields per HMGET/HSET/HDEL (unpack has a stack limit)

-- redis.call(cmd, hash, <items[1..]>...) in chunks; a no-op without items
local function each_chunk(cmd, hash, items, step)
  for i = 1, #items, CHUNK * step do
    redis.call(cmd, hash, unpack(items, i, math.min(i + CHUNK * step - 1, #items)))
  end
end

-- spent and held of each key (two HMGETs per chunk of keys): two lists in key order
local function balances_of(keys)
  local S, H = {}, {}
  for i = 1, #keys, CHUNK do
    local last = math.min(i + CHUNK - 1, #keys)
    local s = redis.call('HMGET', K_SPENT, unpack(keys, i, last))
    local h = redis.call('HMGET', K_HELD, unpack(keys, i, last))
    for j = 1, last - i + 1 do
      local k = keys[i + j - 1]
      S[i + j - 1], H[i + j - 1] = s[j] or '0', h[j] or '0'
      check_balance(k, S[i + j - 1], H[i + j - 1])
    end
  end
  return S, H
end

-- {spent1, held1, spent2, held2, ...} of the keys ARGV[first..]
local function flat_balances(first)
  local keys, out = {}, {}
  for i = first, #ARGV do keys[#keys + 1] = ARGV[i] end
  local S, H = balances_of(keys)
  for i = 1, #keys do
    out[#out + 1] = S[i]
    out[#out + 1] = H[i]
  end
  return out
end

-- a counter at zero keeps no field (so HLEN counts counters that hold something)
local function set_spent(k, s)
  if s == '0' then redis.call('HDEL', K_SPENT, k) else redis.call('HSET', K_SPENT, k, s) end
end

-- spent += spend (saturating), held += hold_add, held -= hold_sub (exact, floored at 0);
-- nil leaves that part alone. ``keys`` are distinct; S, H their balances when already read
-- (else read here). Reads and writes are batched: HMGET, then one HSET/HDEL per hash.
-- Returns the new totals min(spent + held, 2^64-1).
local function change(keys, spend, hold_add, hold_sub, S, H)
  if not S then S, H = balances_of(keys) end
  local out, sset, sdel, hset, hdel = {}, {}, {}, {}, {}
  for i, k in ipairs(keys) do
    local s, h = S[i], H[i]
    if spend then
      s = cap(dadd(s, spend))
      if s == '0' then sdel[#sdel + 1] = k else sset[#sset + 1] = k; sset[#sset + 1] = s end
    end
    if hold_add or hold_sub then
      if hold_add then h = dadd(h, hold_add) end
      if hold_sub then h = dsub(h, hold_sub) end
      if h == '0' then hdel[#hdel + 1] = k else hset[#hset + 1] = k; hset[#hset + 1] = h end
    end
    out[i] = cap(dadd(s, h))
  end
  each_chunk('HSET', K_SPENT, sset, 2)
  each_chunk('HDEL', K_SPENT, sdel, 1)
  each_chunk('HSET', K_HELD, hset, 2)
  each_chunk('HDEL', K_HELD, hdel, 1)
  return out
end

local function fmt(x) return string.format('%.6f', x) end

local function clock()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function forget(id)
  redis.call('HDEL', K_RES, id)
  redis.call('ZREM', K_SETTLED, id)
end

local function settle(id, r, state, amount, now, late)
  r.s = state; r.c = amount; r.t = fmt(now)
  if late then r.l = 1 end
  redis.call('HSET', K_RES, id, cjson.encode(r))
  redis.call('ZREM', K_EXPIRY, id)
  redis.call('ZADD', K_SETTLED, fmt(now), id)
  local over = redis.call('ZCARD', K_SETTLED) - tonumber(ARGV[3])
  if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', K_SETTLED, 0, math.min(over, SWEEP_LIMIT) - 1)) do forget(old) end
  end
end

local function load(id)
  local raw = redis.call('HGET', K_RES, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- the record, or nil when unknown or settled longer ago than the retention
local function find(id, now)
  local r = load(id)
  if r and r.s ~= 'held' and tonumber(r.t) < now - tonumber(ARGV[2]) then return nil end
  return r
end

local function already(state)
  if state == 'committed' then return 'already_committed' end
  if state == 'released' then return 'already_released' end
  return 'expired'
end

local function sweep(now)
  local gone = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_EXPIRY, '-inf', fmt(now), 'LIMIT', 0, SWEEP_LIMIT)) do
    local r = load(id)
    if r and r.s == 'held' then
      change(r.k, nil, nil, r.a)
      settle(id, r, 'expired', r.a, now)
      gone[#gone + 1] = id
    else
      redis.call('ZREM', K_EXPIRY, id)
    end
  end
  local cutoff = '(' .. fmt(now - tonumber(ARGV[2]))
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_SETTLED, '-inf', cutoff, 'LIMIT', 0, SWEEP_LIMIT)) do
    forget(id)
  end
  return gone
end

-- drop marks whose time has come (up to SWEEP_LIMIT per call)
local function forget_marks(now)
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', K_MARK_EXPIRY, '-inf', fmt(now), 'LIMIT', 0, SWEEP_LIMIT)) do
    redis.call('HDEL', K_MARKS, old)
    redis.call('ZREM', K_MARK_EXPIRY, old)
  end
end

-- Schema 1 kept one combined counter per key in K_V1 and the expiry zset at K_HELD.
-- Schema 2: held = sum of the live reservations per key, spent = old counter - held.
-- K_V1 is left as a string so that schema-1 code still running fails (WRONGTYPE): a deny,
-- never a counter nobody reads.
local function migrate_v1()
  local held = {}
  local raw = redis.call('HGETALL', K_RES)
  for i = 1, #raw, 2 do
    local r = cjson.decode(raw[i + 1])
    if r.s == 'held' then
      for _, k in ipairs(r.k) do held[k] = dadd(held[k] or '0', r.a) end
    end
  end
  local expiry = {}
  if redis.call('TYPE', K_HELD)['ok'] == 'zset' then
    expiry = redis.call('ZRANGE', K_HELD, 0, -1, 'WITHSCORES')
  end
  redis.call('DEL', K_HELD)
  for i = 1, #expiry, 2 do redis.call('ZADD', K_EXPIRY, expiry[i + 1], expiry[i]) end
  local old = redis.call('HGETALL', K_V1)
  for i = 1, #old, 2 do
    redis.call('HSET', K_SPENT, old[i], dsub(need_u64(old[i + 1], 'schema-1 counter ' .. old[i]), held[old[i]] or '0'))
  end
  for k, h in pairs(held) do redis.call('HSET', K_HELD, k, h) end
  redis.call('DEL', K_V1)
  redis.call('SET', K_V1, 'migrated to schema 2 (see ' .. K_VERSION .. ')')
end

local function schema()
  local v = redis.call('GET', K_VERSION)
  if v == '2' then return end
  if v then error('schema version ' .. tostring(v) .. ' at this prefix; this code knows 1 and 2') end
  local t = redis.call('TYPE', K_V1)['ok']
  if t == 'hash' then migrate_v1() elseif t ~= 'none' then error('unexpected ' .. t .. ' at ' .. K_V1) end
  redis.call('SET', K_VERSION, '2')
end

schema()
local NOW = clock()
local EXPIRED = sweep(NOW)
