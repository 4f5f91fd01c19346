"""Rendering: analysis results as tables, Markdown, CSV, JSON and figures; reads no evidence itself."""
