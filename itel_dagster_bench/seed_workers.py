"""The two workers of the seed's workers.yaml, by name: what the benchmarks and tests measure.

The pipeline itself never names a worker (it finds one by final stage, asset or job); a bench
that drives the seed's two workers names them here, once.
"""

TRACKING_WORKER = "itel_cabinet_tracking_worker"
API_WORKER = "itel_cabinet_api_worker"
