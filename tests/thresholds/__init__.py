"""Threshold files and tuning."""
