import sys

from streamer.synthetic.cli import main

if __name__ == "__main__":
    sys.exit(main())
