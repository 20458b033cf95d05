"""Labels as people read them; free of OpenCV so that log-writing stages (the dispatcher) can use it."""


def label_words(label: str) -> str:
    """A class name as people read it: ``rotating_anticlockwise`` → ``rotating anticlockwise``."""
    return " ".join(label.replace("_", " ").split())
