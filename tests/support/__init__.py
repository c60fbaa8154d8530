"""Test support, one copy of each piece, for every test module (and only for tests).

The fixture modules are loaded for the whole suite by ``pytest_plugins`` in
``tests/conftest.py``, so a test names a fixture as a parameter and never
imports it. Plain helpers (policies, contexts, workloads) are imported from
these modules by name:

- ``support.backends`` - the one ledger backend picker (``store``,
  ``shared_store``: memory, a real SQLite file, the real Redis under a key
  prefix of its own, the session's Redis Cluster, PostgreSQL under a schema
  of its own), reachability, fault injection over a real ledger.
- ``support.clock`` - the one fake clock (``clock``).
- ``support.guards`` - paths, the Rust tests' policy and metadata, the one
  guard builder (``guard_for``; the ``make_guard`` fixture closes what it built).
- ``support.chain`` - kernel contexts, simple kernel guards, the chain-guard builder.
- ``support.windows`` - spending helpers for the window tests.
- ``support.workload`` - the overspend workload and the functions child
  processes run (they must be importable by name in a fresh interpreter).
- ``support.redis_servers`` - Redis servers and a 3-master Redis Cluster of
  the tests' own, started and stopped by PID (durable ones for the fault test).
- ``support.tcp_proxy`` - a loopback proxy that delays, holds or cuts traffic.
- ``support.fleet_replica`` - one kernel replica process of the fault test.
- ``support.toolkit`` - receipt-log builders for the toolkit tests (``rec``: the Rust tests'
  ``make_record``; ``write_log``, gzip by extension).
- ``support.rust_query`` - ``query.rs``'s ``execute_cost_query`` transcribed line for line (the
  report's oracle; not streaming, sharing no code with ``chio_budget.toolkit``).
- ``support.sidecar`` - a real ``chio-budget serve`` process on a free loopback port (``start_sidecar``),
  the sidecar tests' policies and ``/v1/evaluate`` bodies: the black-box tests talk HTTP only.
"""
