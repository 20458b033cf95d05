"""The web stage: live annotated streams in a browser, a JSON API, Prometheus metrics and health checks.

``config`` (the frozen :class:`~streamer.config.stages.WebConfig`, no heavy imports), ``state`` (what the
stage knows, fed by the pipeline's messages), ``feeds`` (JPEG frames, encoded once however many
watch), ``metrics`` (the Prometheus text), ``server`` (the aiohttp routes and ``run``).
"""
