"""Helpers for the review and view tests: tiny run directories and Debian's chromium for Playwright."""
