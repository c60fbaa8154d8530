-- ARGV[4..] keys. spent := 0 on each, held stays. Reply: {spent1, held1, spent2, held2, ...} before.
local out = flat_balances(4)
for i = 4, #ARGV do redis.call('HDEL', K_SPENT, ARGV[i]) end
return out
