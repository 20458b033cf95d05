"""Pictures in and out: sources and their readers (PyAV, OpenCV, the synthetic demo), conversion of a
decoded frame to model input, the ring buffer windows are cut from, and the H.264 writer."""
