-- Reply: the receipt ids this call expired (at most SWEEP_LIMIT; the caller loops). Also drops due marks.
forget_marks(NOW)
return EXPIRED
