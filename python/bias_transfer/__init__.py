"""Compatibility package: the import paths recipe files of the original framework use."""
