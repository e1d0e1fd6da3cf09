"""Kubetune's runtime: the INT8 inference server (`kubetune serve`) and the router (`kubetune route`).

The `kubetune` dispatcher imports `cli` for serve and `router_cli` for route. Modules, one concept
each:

  server   settings, loading (base + adapter, merged, quantized), quantize (int8 modules),
           engine (batched KV-cached decoding), sampling, text_stream, batching (dynamic
           batches, bounded queue), schemas (OpenAI bodies), routes, app (`create_app`), state,
           auth (API key and body limit, before the body is read), errors, metrics,
           request_metrics, adapter_source (--fine-tune-job), process (run a server as a child
           process: tests and benchmarks), probes (a hostile client: abuse tests and bench)
  router   policy (pure complexity score), upstream (backend calls, fallback), router_app
           (`create_router_app`), calibrate (threshold from eval data)

The router modules import no torch, so a router-only process starts in about a second.
"""
