"""Tests of hakit.config (a package so that test module names cannot clash with other suites)."""
