"""Built-in job handlers (registered in pyproject.toml under ``runpack.handlers``)."""
