"""Tests of demix.merging."""
