-- KEYS[10] the staging hash (key -> spent to add), filled by the caller; ARGV[4] merge ('1' or '0').
-- Without merge, refuses when any counter holds something. Adds (saturating), deletes the staging hash.
-- Reply: {'ok', n written} or {'refused', a key that holds something}.
local staging = KEYS[10]

-- a field of hash h whose value is not '0', or nil
local function nonzero(h)
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', h, cursor, 'COUNT', 1000)
    for i = 1, #page[2], 2 do
      if page[2][i + 1] ~= '0' then return page[2][i] end
    end
    cursor = page[1]
  until cursor == '0'
  return nil
end

if ARGV[4] ~= '1' then
  local found = nonzero(K_HELD) or nonzero(K_SPENT)
  if found then redis.call('DEL', staging); return {'refused', found} end
end
local staged = redis.call('HGETALL', staging)  -- not HSCAN: it may return a field twice
for i = 1, #staged, 2 do
  local s = balance(staged[i])
  set_spent(staged[i], cap(dadd(s, need_u64(staged[i + 1], 'import spent'))))
end
redis.call('DEL', staging)
return {'ok', #staged / 2}
