-- ARGV[4] receipt, ARGV[5] attempt ('' = any). Reply: {outcome, amount}.
-- With an attempt, a reservation created by another attempt is left alone ('unknown').
local id = ARGV[4]
local r = find(id, NOW)
if not r or (r.s == 'held' and ARGV[5] ~= '' and r.x ~= ARGV[5]) then return {'unknown', '0'} end
if r.s == 'expired' then return {'expired', r.a} end
if r.s ~= 'held' then return {already(r.s), '0'} end
change(r.k, nil, nil, r.a)
settle(id, r, 'released', r.a, NOW, false)
return {'released', r.a}
