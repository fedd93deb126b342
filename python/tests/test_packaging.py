"""What installing the package does, and does not do, to other pytest suites."""

import importlib.metadata

import pytest


def test_the_plugin_is_not_registered_for_every_suite():
    # A suite opts in with `pytest_plugins = ["portbroker.pytest_plugin"]`; an entry point in
    # group pytest11 would load the plugin into every suite of the environment instead.
    try:
        distribution = importlib.metadata.distribution("portbroker")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the package is not installed (run from the source tree)")
    groups = {entry.group for entry in distribution.entry_points}
    assert "pytest11" not in groups, distribution.entry_points
    assert not distribution.requires, "the package needs nothing at run time"
