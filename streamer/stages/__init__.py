"""One module or package per process of the pipeline, each with ``run(config, stop)``: capture,
dispatcher (with its event tracker and log), worker, overlay, web, sinks and clips."""
