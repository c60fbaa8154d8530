-- ARGV[4] receipt, ARGV[5] actual ('' = the reserved amount). Reply: {outcome, amount}.
-- Held: held -= reserved, spent += actual. Expired: spent += actual, once (committed_late).
local id = ARGV[4]
local r = find(id, NOW)
if not r then return {'unknown', '0'} end
if r.s ~= 'held' and r.s ~= 'expired' then return {already(r.s), '0'} end
local amount = r.a
if ARGV[5] ~= '' then amount = need_u64(ARGV[5], 'actual') end
if r.s == 'held' then
  change(r.k, amount, nil, r.a)
  settle(id, r, 'committed', amount, NOW, false)
  return {'committed', amount}
end
change(r.k, amount, nil, nil)
settle(id, r, 'committed', amount, NOW, true)
return {'committed_late', amount}
