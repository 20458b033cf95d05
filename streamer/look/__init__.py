"""What to look at in a frame: regions and crop modes, moving actors found (motion) and followed
(tracking), and the feeds that turn a capture's frames into windows per stream, region or track."""
