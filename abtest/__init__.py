"""abtest: is this inference-server configuration better than that one, on this box?

Data flow (one way): config -> launch arms -> stream -> evidence JSONL -> report.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
