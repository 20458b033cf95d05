"""The built-in demo: labelled synthetic videos of moving shapes. ``scenes`` says what happens (classes,
actors, shots), ``drawing`` turns it into pixels (a frame, the endless ``synthetic:`` stream), ``files``
writes a video and its labels, ``actors`` puts several actors side by side, and ``cli`` is
``python -m streamer.synthetic --out FILE.mp4`` (contract 4). Imports run one way, in that order."""
