"""The scheduler's Prometheus metrics. Labels are bounded: model names, reasons, never request ids."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ferrum_infer_scheduler_requests_total", "Requests by outcome", ["model", "status"])
QUEUE_DEPTH = Gauge("ferrum_infer_queue_depth", "Requests waiting for a worker", ["model"])
QUEUE_TIME = Histogram("ferrum_infer_queue_time_seconds", "Time from submit to dispatch", ["model"],
                       buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
RUNNING = Gauge("ferrum_infer_running_sequences", "Requests assigned to workers and not finished", ["model"])
WORKERS = Gauge("ferrum_infer_workers", "Live workers", ["model"])
KV_USAGE = Gauge("ferrum_infer_kv_cache_usage_ratio", "KV cache usage reported by each worker", ["worker"])
ROUTING = Counter("ferrum_infer_routing_decisions_total", "Routing decisions", ["policy", "reason"])
INDEX_LOOKUPS = Counter("ferrum_infer_prefix_index_lookups_total", "Prefix index lookups")
INDEX_HIT_BLOCKS = Counter("ferrum_infer_prefix_index_hit_blocks_total", "Blocks found cached by lookups")
INDEX_LOOKUP_BLOCKS = Counter("ferrum_infer_prefix_index_lookup_blocks_total", "Blocks asked for by lookups")
REDIS_ERRORS = Counter("ferrum_infer_redis_errors_total", "Failed prefix-index calls", ["process"])
REQUEUED = Counter("ferrum_infer_requeued_requests_total", "Requests handed back by lost workers", ["model"])
