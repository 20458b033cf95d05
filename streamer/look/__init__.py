"""What to look at in a frame: regions and crop modes, moving actors found (motion) and followed
(tracking), and the windowing that turns a capture's frames into windows per stream, region or track."""
