"""The inference server: building and finding llama-server, running one process, reading its log."""
