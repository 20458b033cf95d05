import sys

from streamer.synthetic.scenes import main

if __name__ == "__main__":
    sys.exit(main())
