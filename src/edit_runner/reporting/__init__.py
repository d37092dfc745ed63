"""Reporting: tables in the papers' layouts and plots of tracked series."""
