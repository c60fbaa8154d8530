-- ARGV[4] cost, ARGV[5..] keys (distinct). The Rust record: spent += cost. Reply: the new totals.
local keys = {}
for i = 5, #ARGV do keys[#keys + 1] = ARGV[i] end
return change(keys, need_u64(ARGV[4], 'cost'), nil, nil)
