"""Engine load from the Prometheus text that vLLM and SGLang serve at ``/metrics``, pure.

Signals (per engine, summed over label sets such as ``model_name``):

- vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
  (``vllm:gpu_cache_usage_perc`` before vLLM 0.10), a fraction in [0, 1];
- SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage`` (a
  fraction of the KV pool in use).

Load is the KV-cache fraction in use, or 1.0 as soon as requests are queued: a waiting request
means the engine is saturated whatever its cache says. The router keeps each endpoint below the
configured target (default 0.7, the brief's "GPU load under 70 %").
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")


@dataclass(frozen=True)
class EngineLoad:
    """One scrape: requests running and waiting (counts), KV-cache use (fraction or ``None``)."""

    running: float
    waiting: float
    kv_usage: float | None

    @property
    def load(self) -> float:
        """1.0 when requests wait, else the KV-cache fraction in use (0 when not reported)."""
        if self.waiting > 0:
            return 1.0
        return self.kv_usage or 0.0


def parse_engine_load(text: str) -> EngineLoad | None:
    """Read vLLM/SGLang load from Prometheus exposition text; ``None`` when it has no engine
    metrics (or is not Prometheus text at all)."""
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    except ValueError:
        return None
    kv = next((values[name] for name in KV_USAGE if name in values), None)
    waiting = next((values[name] for name in WAITING if name in values), None)
    running = next((values[name] for name in RUNNING if name in values), None)
    if kv is None and waiting is None and running is None:
        return None
    # Several label sets (e.g. one per model) sum; a fraction cannot exceed 1.
    return EngineLoad(running or 0.0, waiting or 0.0, min(1.0, kv) if kv is not None else None)
