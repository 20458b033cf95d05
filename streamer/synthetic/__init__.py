"""The built-in demo: labelled synthetic videos of moving shapes (``scenes``), one actor or several at
once (``actors``). ``python -m streamer.synthetic --out FILE.mp4`` renders one (contract 4)."""
