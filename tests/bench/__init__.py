"""Tests of the benchmark package, the scripts and the installed wheel."""
