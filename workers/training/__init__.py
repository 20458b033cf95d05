"""Making and judging models: training, the datasets it reads (synthetic or folders of clips),
evaluation, and the hand-set motion features small models start from."""
