"""The operator's toolkit (issue 12): what happened, and what a change would have done.

- ``receipts``: stream a receipt log (JSON lines of the Rust ``CostMetadata``,
  gzip by extension), validated as serde would, errors located
  ``file:line: field: problem``.
- ``costquery``: ``chio receipts cost`` (``query.rs``'s
  ``execute_cost_query``) over such a stream, same answers.
- ``samplelog``: a deterministic, realistic log to try everything on.
- ``lint``: policies + Rego checked in one pass.
- ``cli_*``: the typer commands; ``cli.register(app)`` adds them all.

Nothing here is on the guard's hot path; every command streams its input and
keeps memory bounded by the number of distinct keys, never by the log size.
"""
