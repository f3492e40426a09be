"""Experiments: notebook parameters, the grid and its engines, tables, the report, the batch."""
