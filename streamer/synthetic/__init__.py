"""The built-in demo: labelled synthetic videos of moving shapes. ``new_actions`` holds the actions the
demo model never saw (for taught actions), ``scenes`` says what happens (classes, actors, shots),
``drawing`` turns it into pixels (a frame, the endless ``synthetic:`` stream), ``files`` writes a video
and its labels (and folders of teaching clips), ``actors`` puts several actors side by side, and ``cli``
is ``python -m streamer.synthetic --out FILE.mp4`` (contract 4). Imports run one way, in that order."""
