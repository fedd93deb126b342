pytest_plugins = ["portbroker.pytest_plugin"]
