"""Where action events go besides the event log: MQTT, webhooks and video clips.

Each runs in a stage of its own (``stage`` for MQTT and webhooks, ``clips`` for clips) fed by the
event-log lines the dispatcher publishes, so a broker, a web server or a disk that is slow or gone
can never hold up the pipeline: it costs that stage a bounded queue, and dropped events are counted.
"""
