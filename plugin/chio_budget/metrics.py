"""Prometheus metrics for the budget guard, on a registry of their own.

Each ``BudgetMetrics`` owns a ``CollectorRegistry`` (not the process-global
one), so two guards - or two tests - never share counters and never collide
on registration. ``serve()`` exposes it on ``/metrics`` (loopback by default).

Metric names (namespace ``chio_budget``):

- ``chio_budget_decisions_total{policy_id,outcome,scope}`` - outcome
  ``allow`` | ``deny`` | ``error``; scope is the primary violation's scope
  (``none`` when allowed, ``error`` when the engine or ledger failed).
- ``chio_budget_violations_total{policy_id,scope}`` - every violation, not
  only the primary one.
- ``chio_budget_eval_seconds{policy_id,engine}`` - histogram of the OPA
  evaluation time (the engine's ``decide``, nothing else).
- ``chio_budget_reservations_open{policy_id}`` - reservations held in the
  guard's ledger for calls still running (every process sharing the ledger),
  read from the ledger when scraped.
- ``chio_budget_orphan_cleanup_failures_total{policy_id}`` - holds the guard
  tried to give back (after a failed or denied reservation) and could not;
  each stays until its TTL.
- ``chio_budget_spend_units_total{policy_id,currency,scope,key}`` - committed
  spend in minor units: scope ``total`` (key ``""``) and ``tool`` (key
  ``server:tool``); ``agent`` and ``session`` (key = the id) only with
  ``agent_labels=True`` / ``session_labels=True``.
- ``chio_budget_settlements_total{policy_id,outcome}`` and
  ``chio_budget_over_estimate_total{policy_id}``.
- ``chio_budget_shadow_disagreements_total{policy_id,shadow_policy_id}``.
- ``chio_budget_decision_log_errors_total``.
- ``chio_budget_warnings_total{policy_id,scope,threshold}`` - soft-limit
  thresholds crossed, once per threshold, window and counter (``threshold``
  as written, ``0.8``: bounded by the policy's ``warn_at``).
- ``chio_budget_policy_revision_info{policy_id,policy_revision,rego_revision}``
  - 1 for the version in force (one series per policy: a reload replaces it),
  with ``chio_budget_policy_loaded_timestamp_seconds{policy_id}`` and
  ``chio_budget_reloads_total{policy_id,outcome}`` (``ok`` | ``failed``).
- ``chio_budget_label_values_folded_total{label}`` - observations whose
  label value was folded into ``other`` because the cap was reached.

Every label value is bounded, so a scrape stays small however many agents,
sessions and tools there are: ``policy_id``, ``engine`` and
``shadow_policy_id`` come from configuration; ``outcome`` from a fixed set;
``scope``, ``tool``, ``agent`` and ``session`` values are capped at
``max_label_values`` distinct values each (default 1000), and later new
values are counted under ``other``. Agent and session ids are unbounded in
a long-running kernel, so they are not labels at all unless asked for.

Prometheus samples are floats: spend above 2^53 units is shown rounded. The
ledger is the source of truth for money; these are for watching it.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

_EVAL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


OTHER = "other"


class LabelCap:
    """At most ``limit`` distinct values of one label; any later new value becomes ``other``.

    The first ``limit`` values seen keep their own series for the life of
    the process. Thread-safe; a value already admitted costs one set lookup.
    """

    def __init__(self, limit: int, on_fold: Any = None):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._on_fold = on_fold

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen or len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        if self._on_fold is not None:
            self._on_fold()
        return OTHER


def _check_limit(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"max_label_values must be an int >= 0, got {n!r}")
    return n


class BudgetMetrics:
    """The guard's Prometheus metrics; see the module docstring for names and label bounds.

    ``agent_labels`` / ``session_labels`` add per-agent / per-session spend
    series (off by default: their ids are unbounded); ``max_label_values``
    caps the distinct values of each request-derived label.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "chio_budget",
                 agent_labels: bool = False, session_labels: bool = False, max_label_values: int = 1000):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.agent_labels = agent_labels
        self.session_labels = session_labels
        self.max_label_values = _check_limit(max_label_values)
        r, ns = self.registry, namespace
        self.label_values_folded = Counter("label_values_folded",
                                           "Observations whose label value was folded into 'other' (cap reached)",
                                           ["label"], namespace=ns, registry=r)
        self._caps = {label: LabelCap(self.max_label_values, self.label_values_folded.labels(label).inc)
                      for label in ("scope", "tool", "agent", "session")}
        self.decisions = Counter("decisions", "Budget decisions by outcome and primary violation scope",
                                 ["policy_id", "outcome", "scope"], namespace=ns, registry=r)
        self.violations = Counter("violations", "Budget violations by scope (all of them)",
                                  ["policy_id", "scope"], namespace=ns, registry=r)
        self.eval_seconds = Histogram("eval_seconds", "OPA decision evaluation time",
                                      ["policy_id", "engine"], namespace=ns, registry=r, buckets=_EVAL_BUCKETS)
        self.reservations_open = Gauge("reservations_open", "Reservations held in the ledger for calls still running",
                                       ["policy_id"], namespace=ns, registry=r)
        self.cleanup_failures = Counter("orphan_cleanup_failures",
                                        "Holds the guard could not give back (their TTL will)",
                                        ["policy_id"], namespace=ns, registry=r)
        self.spend_units = Counter("spend_units", "Committed spend in minor units, by budget counter",
                                   ["policy_id", "currency", "scope", "key"], namespace=ns, registry=r)
        self.settlements = Counter("settlements", "Settlements by outcome", ["policy_id", "outcome"],
                                   namespace=ns, registry=r)
        self.over_estimate = Counter("over_estimate", "Settlements whose actual cost exceeded the estimate",
                                     ["policy_id"], namespace=ns, registry=r)
        self.shadow_disagreements = Counter("shadow_disagreements",
                                            "Shadow decisions whose allow differs from the enforced one",
                                            ["policy_id", "shadow_policy_id"], namespace=ns, registry=r)
        self.log_errors = Counter("decision_log_errors", "Decision-log writes that failed",
                                  namespace=ns, registry=r)
        self.warnings = Counter("warnings", "Soft-limit thresholds crossed (once per threshold, window, counter)",
                                ["policy_id", "scope", "threshold"], namespace=ns, registry=r)
        self.policy_info = Gauge("policy_revision_info", "The policy version in force (value 1)",
                                 ["policy_id", "policy_revision", "rego_revision"], namespace=ns, registry=r)
        self.policy_loaded = Gauge("policy_loaded_timestamp_seconds", "When the version in force was loaded",
                                   ["policy_id"], namespace=ns, registry=r)
        self.reloads = Counter("reloads", "Policy reloads by outcome", ["policy_id", "outcome"],
                               namespace=ns, registry=r)
        self._in_force: dict[str, tuple[str, str]] = {}
        self._info_lock = threading.Lock()

    # -- recording (called by the chain guard) ------------------------------

    def observe_decision(self, policy_id: str, decision: Any, eval_seconds: float | None, engine: str) -> None:
        """``decision`` is a ``Decision``: counted by outcome and primary scope."""
        if decision.error:
            outcome, scope = "error", "error"
        elif decision.allow:
            outcome, scope = "allow", "none"
        else:
            outcome, scope = "deny", decision.violations[0].scope if decision.violations else "unknown"
        cap = self._caps["scope"]
        self.decisions.labels(policy_id, outcome, cap(scope)).inc()
        for v in decision.violations:
            self.violations.labels(policy_id, cap(v.scope)).inc()
        if eval_seconds is not None:
            self.eval_seconds.labels(policy_id, engine).observe(eval_seconds)

    def follow(self, guard: Any) -> None:
        """Watch a ``BudgetGuard`` through its event hooks, never by wrapping it.

        ``reservations_open`` reads its ledger at scrape time; each failed
        orphan cleanup (``cleanup_failed``) counts in ``orphan_cleanup_failures``;
        the policy version in force is set now and after every reload
        (``reloaded``), and reloads are counted by outcome (``reload_failed``).
        """
        pid = guard.policy.id
        self.watch_open(pid, guard.ledger.open_reservations)
        guard.event_hooks["cleanup_failed"].append(lambda _rid, _exc: self.cleanup_failures.labels(pid).inc())
        self.set_policy(pid, guard.policy_revision, guard.rego_revision, guard.loaded_at)
        guard.event_hooks["reloaded"].append(self._reloaded)
        guard.event_hooks["reload_failed"].append(lambda g, _exc: self.observe_reload(g.policy.id, False))

    def _reloaded(self, guard: Any) -> None:
        self.set_policy(guard.policy.id, guard.policy_revision, guard.rego_revision, guard.loaded_at)
        self.observe_reload(guard.policy.id, True)

    def watch_open(self, policy_id: str, count: Callable[[], int]) -> None:
        """``reservations_open{policy_id}`` is ``count()`` at scrape time (nothing per call).

        The chain guard passes its ledger's ``open_reservations``; a count that
        fails reads as NaN rather than breaking the scrape.
        """
        def read() -> float:
            try:
                return float(count())
            except Exception:  # noqa: BLE001 - a scrape must not fail because the ledger is down
                return math.nan

        self.reservations_open.labels(policy_id).set_function(read)

    def observe_warning(self, policy_id: str, scope: str, threshold_bps: int) -> None:
        """One crossing; ``threshold`` is the fraction as written (``0.8``), a bounded label."""
        self.warnings.labels(policy_id, self._caps["scope"](scope), f"{threshold_bps / 10000:g}").inc()

    def set_policy(self, policy_id: str, policy_revision: str | None, rego_revision: str | None,
                   loaded_at: float) -> None:
        """The version in force for ``policy_id``: its info series replaces the previous one."""
        labels = (policy_revision or "", rego_revision or "")
        with self._info_lock:
            old = self._in_force.get(policy_id)
            if old is not None and old != labels:
                self.policy_info.remove(policy_id, *old)
            self._in_force[policy_id] = labels
            self.policy_info.labels(policy_id, *labels).set(1)
        self.policy_loaded.labels(policy_id).set(loaded_at)

    def observe_reload(self, policy_id: str, ok: bool) -> None:
        self.reloads.labels(policy_id, "ok" if ok else "failed").inc()

    def observe_settlement(self, policy_id: str, outcome: str, currency: str, committed: int,
                           request: dict[str, Any] | None, over_estimate: bool) -> None:
        self.settlements.labels(policy_id, outcome).inc()
        if over_estimate:
            self.over_estimate.labels(policy_id).inc()
        if not committed or request is None:
            return
        spend = self.spend_units
        spend.labels(policy_id, currency, "total", "").inc(committed)
        spend.labels(policy_id, currency, "tool", self._caps["tool"](request["tool_key"])).inc(committed)
        if self.agent_labels:
            spend.labels(policy_id, currency, "agent", self._caps["agent"](request["agent_id"])).inc(committed)
        if self.session_labels and request.get("session_id") is not None:
            spend.labels(policy_id, currency, "session", self._caps["session"](request["session_id"])).inc(committed)

    # -- exposing -----------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format, as ``/metrics`` would serve it."""
        return generate_latest(self.registry)

    def serve(self, port: int = 0, addr: str = "127.0.0.1"):
        """Start ``/metrics`` on ``addr:port`` in a daemon thread (port 0: any free one).

        Returns the ``(server, thread)`` pair; ``server.server_port`` is the
        bound port and ``server.shutdown()`` stops it.
        """
        return start_http_server(port, addr=addr, registry=self.registry)
