"""``python -m workers.evaluate``: kept where the README's commands name it; the code is in workers.training."""
import sys

from workers.training.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
