"""The tuned threshold files (``*.yaml``), shipped inside the package as
``deltaconvert.configs`` and read through ``importlib.resources``."""
