-- ARGV[4] key, ARGV[5] '+' or '-', ARGV[6] magnitude (u64 decimal; the caller caps it).
-- spent moves by the signed amount, clamped to [0, 2^64-1]. Reply: {spent before, held, spent after}.
local k = ARGV[4]
local s, h = balance(k)
local m = need_u64(ARGV[6], 'delta')
local after
if ARGV[5] == '+' then after = cap(dadd(s, m)) else after = dsub(s, m) end
set_spent(k, after)
return {s, h, after}
