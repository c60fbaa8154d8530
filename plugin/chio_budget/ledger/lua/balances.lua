-- ARGV[4..] keys. Reply: {spent1, held1, spent2, held2, ...}.
return flat_balances(4)
