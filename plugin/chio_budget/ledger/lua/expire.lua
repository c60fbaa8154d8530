-- Reply: the receipt ids this call expired (at most SWEEP_LIMIT; the caller loops).
return EXPIRED
