"""The operator's toolkit (issue 12): what happened, and what a change would have done.

- ``receipts``: stream a receipt log (JSON lines of the Rust ``CostMetadata``,
  gzip by extension), validated as serde would, errors located
  ``file:line: field: problem``; ``progress``: the bar on a terminal.
- ``costquery``: ``chio receipts cost`` (``query.rs``'s
  ``execute_cost_query``) over such a stream, same answers; ``views``: its
  table (and the money/bytes/duration formatting every view uses).
- ``samplelog``: a deterministic, realistic log to try everything on.
- ``lint``: rates, policies and Rego checked in one pass.
- ``calls`` (records -> priced calls), ``ordering`` (timestamp order, external
  sort), ``simulate`` (the guard over the calls, the accumulated result),
  ``simrun`` (one run from its arguments), ``timeline`` + ``charts`` (the
  PNG), ``simviews`` (tables and the HTML page), ``diff`` (two runs compared).
- ``ledgertool``: counters by hand, with audit events.
- ``cli`` registers the commands (``cli_report``, ``cli_lint``,
  ``cli_simulate``, ``cli_ledger``) on the ``chio-budget`` app.

Nothing here is on the guard's hot path; every command streams its input and
keeps memory bounded by the number of distinct keys, never by the log size.
"""
