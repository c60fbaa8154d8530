-- ARGV[4] receipt. Reply: its record JSON, or nil when unknown or forgotten.
local r = find(ARGV[4], NOW)
if not r then return false end
return cjson.encode(r)
