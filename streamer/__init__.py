"""Capture, transport, dispatch, overlay and event log of timesformer-stream."""
