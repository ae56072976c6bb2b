"""Optimisation: the one loop (`loop.optimize`) and its strategies: soft prompt training (`training`), the
hard-prompt searches PEZ, projected SGD and GCG (`discovery`), and the Trainer callback that keeps the best
hard prompt when the Hugging Face Trainer trains one."""
