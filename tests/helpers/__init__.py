"""Tiny on-disk datasets for tests (tests/helpers is on sys.path through pytest's rootdir insertion)."""
