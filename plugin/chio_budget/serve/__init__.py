"""``chio-budget serve``: the budget guard as an HTTP sidecar the Chio kernel calls.

``options`` (what the command line said), ``sidecar`` (one worker's guards:
every policy over one engine and one ledger), ``models`` (the request and
response bodies of ``docs/openapi.json``), ``app`` (the FastAPI routes and
the request gate), ``runner`` (uvicorn, workers, signals). Needs the
``[serve]`` extra: ``pip install 'chio-budget-guard[serve]'``.
"""
