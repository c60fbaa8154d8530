"""Redis Cluster clients for the Redis ledger: ``redis+cluster://host:port,host:port/0``.

The scripts are already legal on a cluster: every key of a ledger shares the
hash tag ``{<prefix>}``, so one ledger lives in one hash slot, on one shard,
and each script runs there atomically like on a single server. The client
is redis-py's ``RedisCluster``: it learns the slot map from any reachable
startup node and follows ``MOVED``/``ASK`` redirects itself (a redirect
means the command did not run, so following it is safe). Its own retries
after a connection error or timeout are turned off, as for a single server
(a resent ``add`` would count twice). A command whose keys span slots
(``CROSSSLOT``; only possible with a hand-made key list) is a ``LedgerError``
that says so.

To spread several budgets over the shards, give them different prefixes
(one per tenant or policy): each prefix is its own slot, placed by CRC16
like any key. ``docs/ledgers.md`` ("Redis Cluster") has the measurements
behind choosing one slot per prefix over one slot per policy.
"""

from __future__ import annotations

from typing import Any

from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ..errors import LedgerError

SCHEMES = ("redis+cluster", "rediss+cluster")


def cluster_client(uri: str, query: list[tuple[str, str]], options: dict[str, Any]) -> RedisCluster:
    """A ``RedisCluster`` for ``redis+cluster://[user:password@]host:port[,host:port...][/0]``."""
    scheme, _, rest = uri.partition("://")
    netloc, _, path = rest.split("?", 1)[0].partition("/")
    if path not in ("", "0"):
        raise LedgerError(f"redis ledger: {uri!r}: a cluster has only database 0, got /{path}")
    auth, _, hosts = netloc.rpartition("@")
    nodes = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise LedgerError(f"redis ledger: {uri!r}: expected host:port, got {host!r}")
        nodes.append(ClusterNode(name.strip("[]"), int(port)))
    if not nodes:
        raise LedgerError(f"redis ledger: {uri!r} names no cluster node")
    kwargs: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, "retry": Retry(NoBackoff(), 0)}
    if auth:
        user, _, password = auth.partition(":")
        kwargs.update(username=user or None, password=password or None)
    if scheme == "rediss+cluster":
        kwargs["ssl"] = True
    for name, value in query:
        parse = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            kwargs[name] = parse(value) if parse else value
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"redis ledger: {uri!r}: {name}: {exc}") from None
    kwargs.update(options)
    try:
        return RedisCluster(startup_nodes=nodes, **kwargs)
    except (RedisClusterException, Exception) as exc:  # noqa: BLE001 - redis-py raises several kinds here
        raise LedgerError(f"redis ledger: cannot reach the cluster at {hosts}: {type(exc).__name__}: {exc}") from None


def describe(exc: BaseException) -> str:
    """A cluster error as the ledger reports it; CROSSSLOT named plainly."""
    text = str(exc)
    if "CROSSSLOT" in text or "same key slot" in text:
        return ("CROSSSLOT: the keys of one ledger operation span several hash slots; every key of a ledger "
                f"must carry its '{{prefix}}' hash tag ({text})")
    return f"{type(exc).__name__}: {text}"
