"""The suite's shared fixtures, one copy each, loaded for every test module.

Fixtures come from the ``support`` package through ``pytest_plugins``; a
test names them as parameters and never imports them. Helpers that are not
fixtures (policies, contexts, workloads) are imported from the same modules
by name. See ``support/__init__.py`` for what lives where.
"""

import pytest

pytest.register_assert_rewrite("support")  # asserts in helpers report like asserts in tests

pytest_plugins = ["support.backends", "support.clock", "support.guards", "support.opa"]
