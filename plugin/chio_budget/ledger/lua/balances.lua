-- ARGV[4..] keys. Reply: {spent1, held1, spent2, held2, ...}.
local out = {}
for i = 4, #ARGV do
  local s, h = balance(ARGV[i])
  out[#out + 1] = s
  out[#out + 1] = h
end
return out
