"""The untimed requests after a session's timed runs: a request's token ids, and its top-3 logprobs (`--margins`).

Each is the timed request sent again, non-streamed (`abtest.measure.protocol.request_body`, so the
same prompt and sampling), over `abtest.server.api` rather than a timed transport: nothing here is
timed, and the run's start-up does not import httpx for it.
"""

from __future__ import annotations

from typing import Any

from ..server.api import ApiClient, ApiError
from .protocol import COMPLETION_PATH, StreamRequest, request_body

# the top 3: the margin between the chosen token and its runner-up, also where the raw top-1 is an
# end-of-generation token that ignore_eos bars (greedy then picks the second; seen on SmolLM2, H200)
MARGIN_N_PROBS = 3


def fetch_token_ids(client: ApiClient, req: StreamRequest) -> list[int] | None:
    """One extra non-streamed /completion with return_tokens, for when streamed ids were incomplete."""
    path, body = request_body(req)
    if path != COMPLETION_PATH:
        return None
    try:
        tokens = client.post_json(path, {**body, "stream": False, "return_tokens": True}).get("tokens")
    except (ApiError, AttributeError):
        return None
    if isinstance(tokens, list) and all(type(t) is int for t in tokens):
        return tokens
    return None


def fetch_top_logprobs(client: ApiClient, req: StreamRequest) -> tuple[list[int], list[list[list[Any]]]] | None:
    """One extra non-streamed /completion with n_probs 3 (`--margins`): the generated ids and, per
    token, the top 3 as [id, logprob, piece]; None when the server does not give them."""
    path, body = request_body(req)
    if path != COMPLETION_PATH:
        return None
    try:
        data = client.post_json(path, {**body, "stream": False, "return_tokens": True, "n_probs": MARGIN_N_PROBS})
        tokens, steps = data.get("tokens"), data.get("completion_probabilities")
        if not (isinstance(tokens, list) and all(type(t) is int for t in tokens) and isinstance(steps, list)):
            return None
        top = [[[int(t["id"]), float(t["logprob"]), str(t.get("token", ""))] for t in step["top_logprobs"]]
               for step in steps]
        return (tokens, top) if len(top) == len(tokens) else None
    except (ApiError, ValueError, AttributeError, KeyError, TypeError):
        return None
