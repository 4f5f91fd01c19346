"""Analysis: evidence in, numbers out (metrics, statistics, comparisons, verdict, nightly gate); never a socket."""
