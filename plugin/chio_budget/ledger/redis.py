"""Counters in Redis: shared by every kernel replica that can reach the server.

Promises (on top of the ``Ledger`` contract in ``base.py``):

- Each operation is exactly one Lua script (``register_script``: EVALSHA,
  reloaded on NOSCRIPT), and Redis runs a script with nothing interleaved,
  so a reservation reads and bumps every counter it touches atomically no
  matter how many replicas call at once.
- Exact u64. Redis integers are signed 64-bit and Lua numbers are doubles
  (exact only to 2^53), so neither INCRBY nor Lua arithmetic is used on
  money: counters and amounts are canonical decimal strings added and
  subtracted digit by digit inside the script, saturating at 2^64-1 and
  flooring at 0 exactly like the memory ledger.
- Expiry works across replicas: held reservations sit in a sorted set
  scored by expiry time, and every script first gives back the ones that are
  due (up to 1,000 per call; ``expire()`` loops until none are left). Time
  is the Redis server's clock (``TIME``), one clock for every replica,
  unless a ``clock`` is passed (tests); one ledger never mixes the two.
- Any Redis error (unreachable, timeout, script error, a corrupt value)
  raises ``LedgerError``; the guard turns that into a deny (fail closed).
  After a timeout the operation may or may not have run: retrying it is safe
  because every operation is idempotent by ``receipt_id``.

All four keys share the hash tag ``{<prefix>}`` so the scripts stay legal on
Redis Cluster: ``{p}:counters`` (hash key -> units), ``{p}:reservations``
(hash receipt -> JSON record), ``{p}:held`` (zset receipt -> expires_at),
``{p}:settled`` (zset receipt -> settled_at, pruned after
``settled_retention`` seconds).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis as redis_py

from ..errors import LedgerError
from ..money import check_units
from .base import DEFAULT_TTL_SECONDS, Reservation, Settlement, parse_seconds

DEFAULT_PREFIX = "chio-budget"
DEFAULT_SETTLED_RETENTION = 86_400.0
SWEEP_LIMIT = 1000

# Shared prelude of every script. KEYS: counters, reservations, held, settled.
# ARGV[1]: now ('' = server TIME), ARGV[2]: settled retention (s); op args follow.
_LUA_LIB = r"""
-- Redis < 5 replicates scripts verbatim, which TIME would make non-deterministic;
-- ask for effects replication there (a no-op on Redis >= 5, the default since).
if redis.replicate_commands then redis.replicate_commands() end

local U64MAX = '18446744073709551615'

local function is_u64(s)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') then return false end
  if #s > 1 and string.sub(s, 1, 1) == '0' then return false end
  return #s < 20 or (#s == 20 and s <= U64MAX)
end

local function cmp(a, b)
  if #a ~= #b then if #a < #b then return -1 else return 1 end end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end

-- min(a + b, 2^64-1) on canonical decimals
local function dadd(a, b)
  local out, i, j, carry = {}, #a, #b, 0
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    if d >= 10 then d = d - 10; carry = 1 else carry = 0 end
    out[#out + 1] = string.char(48 + d)
  end
  local s = string.reverse(table.concat(out))
  if cmp(s, U64MAX) > 0 then return U64MAX end
  return s
end

-- max(a - b, 0) on canonical decimals
local function dsub(a, b)
  if cmp(a, b) <= 0 then return '0' end
  local out, i, j, borrow = {}, #a, #b, 0
  while i > 0 do
    local d = string.byte(a, i) - 48 - borrow; i = i - 1
    if j > 0 then d = d - (string.byte(b, j) - 48); j = j - 1 end
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    out[#out + 1] = string.char(48 + d)
  end
  local s = string.gsub(string.reverse(table.concat(out)), '^0+', '')
  if s == '' then return '0' end
  return s
end

local function counter(k)
  local v = redis.call('HGET', KEYS[1], k)
  if not v then return '0' end
  if not is_u64(v) then error('corrupt counter ' .. k .. ': ' .. tostring(v)) end
  return v
end

local function apply(keys, amount, sign)
  local out = {}
  for _, k in ipairs(keys) do
    local v = counter(k)
    if sign > 0 then v = dadd(v, amount) else v = dsub(v, amount) end
    redis.call('HSET', KEYS[1], k, v)
    out[#out + 1] = v
  end
  return out
end

local function fmt(x) return string.format('%.6f', x) end

local function clock()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function settle(id, r, state, amount, now)
  r.s = state; r.c = amount; r.t = fmt(now)
  redis.call('HSET', KEYS[2], id, cjson.encode(r))
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], fmt(now), id)
end

local function sweep(now)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now), 'LIMIT', 0, __SWEEP_LIMIT__)
  local gone = {}
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', KEYS[2], id)
    local r = raw and cjson.decode(raw)
    if r and r.s == 'held' then
      apply(r.k, r.a, -1)
      settle(id, r, 'expired', r.a, now)
      gone[#gone + 1] = id
    else
      redis.call('ZREM', KEYS[3], id)
    end
  end
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. fmt(now - tonumber(ARGV[2])),
                         'LIMIT', 0, __SWEEP_LIMIT__)
  for _, id in ipairs(old) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[4], id)
  end
  return gone
end

local function load(id)
  local raw = redis.call('HGET', KEYS[2], id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function already(r)
  if not r then return {'unknown', '0'} end
  if r.s == 'expired' then return {'expired', r.a} end
  if r.s == 'committed' then return {'already_committed', '0'} end
  return {'already_released', '0'}
end

local function need_u64(s, what)
  if not is_u64(s) then error(what .. ' is not a u64 decimal: ' .. tostring(s)) end
  return s
end
""".replace("__SWEEP_LIMIT__", str(SWEEP_LIMIT))

# ARGV[3] receipt, ARGV[4] cost, ARGV[5] ttl, ARGV[6..] keys (distinct).
# Reply: {created, state, amount, expires_at, n, keys..., befores...}
_RESERVE = _LUA_LIB + r"""
local now = clock()
sweep(now)
local id = ARGV[3]
local r = load(id)
local created = 0
if not r then
  local cost = need_u64(ARGV[4], 'cost')
  local keys, before = {}, {}
  for i = 6, #ARGV do
    local k = ARGV[i]
    local v = counter(k)
    keys[#keys + 1] = k
    before[#before + 1] = v
    redis.call('HSET', KEYS[1], k, dadd(v, cost))
  end
  local exp = fmt(now + tonumber(ARGV[5]))
  r = {k = keys, a = cost, b = before, e = exp, s = 'held'}
  redis.call('HSET', KEYS[2], id, cjson.encode(r))
  redis.call('ZADD', KEYS[3], exp, id)
  created = 1
end
local out = {created, r.s, r.a, r.e, #r.k}
for _, k in ipairs(r.k) do out[#out + 1] = k end
for _, b in ipairs(r.b) do out[#out + 1] = b end
return out
"""

# ARGV[3] receipt, ARGV[4] actual ('' = the reserved amount). Reply: {outcome, amount}
_COMMIT = _LUA_LIB + r"""
local now = clock()
sweep(now)
local id = ARGV[3]
local r = load(id)
if not r or r.s ~= 'held' then return already(r) end
local amount = r.a
if ARGV[4] ~= '' then amount = need_u64(ARGV[4], 'actual') end
local c = cmp(amount, r.a)
if c > 0 then apply(r.k, dsub(amount, r.a), 1) elseif c < 0 then apply(r.k, dsub(r.a, amount), -1) end
settle(id, r, 'committed', amount, now)
return {'committed', amount}
"""

# ARGV[3] receipt. Reply: {outcome, amount}
_RELEASE = _LUA_LIB + r"""
local now = clock()
sweep(now)
local id = ARGV[3]
local r = load(id)
if not r or r.s ~= 'held' then return already(r) end
apply(r.k, r.a, -1)
settle(id, r, 'released', r.a, now)
return {'released', r.a}
"""

# ARGV[3..] keys. Reply: their counters.
_TOTALS = _LUA_LIB + r"""
sweep(clock())
local out = {}
for i = 3, #ARGV do out[#out + 1] = counter(ARGV[i]) end
return out
"""

# ARGV[3] cost, ARGV[4..] keys (distinct). Reply: the new counters.
_ADD = _LUA_LIB + r"""
sweep(clock())
local keys = {}
for i = 4, #ARGV do keys[#keys + 1] = ARGV[i] end
return apply(keys, need_u64(ARGV[3], 'cost'), 1)
"""

# Reply: receipt ids expired by this call (at most SWEEP_LIMIT).
_EXPIRE = _LUA_LIB + r"""
return sweep(clock())
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLedger:
    """The ``Ledger`` contract over one Redis server (see the module docstring).

    Thread-safe (redis-py's connection pool) and fork-safe (the pool reconnects
    in a child). Many ``RedisLedger`` objects with the same ``prefix`` on the
    same server share the counters: that is how kernel replicas share a budget.
    """

    def __init__(self, client: "redis_py.Redis", *, prefix: str = DEFAULT_PREFIX,
                 default_ttl: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] | None = None,
                 settled_retention: float = DEFAULT_SETTLED_RETENTION):
        if not prefix or "{" in prefix or "}" in prefix:
            raise LedgerError(f"redis ledger: prefix must be non-empty and free of braces, got {prefix!r}")
        self.client = client
        self.prefix = prefix
        tag = "{" + prefix + "}"
        self.keys = [f"{tag}:counters", f"{tag}:reservations", f"{tag}:held", f"{tag}:settled"]
        self._default_ttl = float(default_ttl)
        self._clock = clock
        self._retention = str(float(settled_retention))
        self._reserve = client.register_script(_RESERVE)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._totals = client.register_script(_TOTALS)
        self._add = client.register_script(_ADD)
        self._expire = client.register_script(_EXPIRE)

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "RedisLedger":
        """``redis://host:port/db`` (also ``rediss://``, ``unix://``), as redis-py reads it.

        Ledger options may ride in the query (``?prefix=team-a&ttl=60
        &settled_retention=3600``); every other query parameter goes to
        redis-py (``socket_timeout=2`` ...). Keyword ``options`` win. Socket
        timeouts default to 5 s so a hung server denies instead of hanging.
        """
        parts = urlsplit(uri)
        ours: dict[str, Any] = {}
        theirs = []
        for name, value in parse_qsl(parts.query):
            if name == "prefix":
                ours["prefix"] = value
            elif name in ("ttl", "default_ttl", "settled_retention"):
                ours["default_ttl" if name == "ttl" else name] = parse_seconds(value, name, uri)
            else:
                theirs.append((name, value))
        ours.update({k: options.pop(k) for k in ("prefix", "default_ttl", "settled_retention", "clock")
                     if k in options})
        options.setdefault("socket_timeout", 5.0)
        options.setdefault("socket_connect_timeout", 5.0)
        try:
            base = uri.split("?", 1)[0]  # not urlunsplit: it turns unix:///x into unix:/x
            client = redis_py.Redis.from_url(base + ("?" + urlencode(theirs) if theirs else ""), **options)
        except (ValueError, redis_py.RedisError) as exc:
            raise LedgerError(f"redis ledger: bad URI {uri!r}: {exc}") from None
        return cls(client, **ours)

    # -- plumbing ----------------------------------------------------------------

    def _run(self, script: Any, *args: Any) -> Any:
        now = "" if self._clock is None else repr(float(self._clock()))
        try:
            return script(keys=self.keys, args=[now, self._retention, *args])
        except redis_py.RedisError as exc:
            raise LedgerError(f"redis ledger: {type(exc).__name__}: {exc}") from None

    def _ttl(self, ttl: float | None) -> float:
        return self._default_ttl if ttl is None else float(ttl)

    # -- Ledger ------------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None) -> Reservation:
        """Atomically add ``cost`` to every key and hold it until commit, release or expiry."""
        cost = check_units(cost, "cost")
        keys = tuple(dict.fromkeys(keys))
        reply = self._run(self._reserve, receipt_id, str(cost), repr(self._ttl(ttl)), *keys)
        created, state, amount, expires_at, n = reply[:5]
        n = int(n)
        rkeys = tuple(_s(k) for k in reply[5:5 + n])
        before = tuple(int(_s(b)) for b in reply[5 + n:5 + 2 * n])
        return Reservation(receipt_id, rkeys, int(_s(amount)), before, float(_s(expires_at)),
                           bool(int(created)), _s(state))  # type: ignore[arg-type]

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Turn a held reservation into spend (``actual`` replaces the estimate). Idempotent."""
        actual_arg = "" if actual is None else str(check_units(actual, "actual"))
        outcome, amount = self._run(self._commit, receipt_id, actual_arg)
        return Settlement(receipt_id, _s(outcome), int(_s(amount)))  # type: ignore[arg-type]

    def release(self, receipt_id: str) -> Settlement:
        """Give a held reservation back. Idempotent."""
        outcome, amount = self._run(self._release, receipt_id)
        return Settlement(receipt_id, _s(outcome), int(_s(amount)))  # type: ignore[arg-type]

    def totals(self, keys: Sequence[str]) -> list[int]:
        """Current counters, held reservations included, due ones given back first."""
        keys = list(keys)
        if not keys:
            self._run(self._expire)
            return []
        return [int(_s(v)) for v in self._run(self._totals, *keys)]

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """Seed-style ``record``: add without deciding, saturating at 2^64-1; new values."""
        cost = check_units(cost, "cost")
        keys = tuple(dict.fromkeys(keys))
        return [int(_s(v)) for v in self._run(self._add, str(cost), *keys)]

    def expire(self) -> list[str]:
        """Release every reservation past its TTL now; loops past the per-script sweep limit."""
        gone: list[str] = []
        while True:
            batch = [_s(i) for i in self._run(self._expire)]
            gone.extend(batch)
            if len(batch) < SWEEP_LIMIT:
                return gone

    def open_reservations(self) -> int:
        try:
            return int(self.client.zcard(self.keys[2]))
        except redis_py.RedisError as exc:
            raise LedgerError(f"redis ledger: {type(exc).__name__}: {exc}") from None

    def clear(self) -> None:
        """Delete every key of this prefix (tests, resets). Not part of ``Ledger``."""
        try:
            self.client.delete(*self.keys)
        except redis_py.RedisError as exc:
            raise LedgerError(f"redis ledger: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        try:
            self.client.close()
        except redis_py.RedisError:
            pass

    def __repr__(self) -> str:
        return f"RedisLedger(prefix={self.prefix!r})"
