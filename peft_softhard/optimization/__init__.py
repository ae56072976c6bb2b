"""Optimisation: the one loop (`loop.optimize`) and its strategies: soft prompt training (`training`), the token
searches (`token_search`: growth, PEZ, projected SGD, GCG), the label-word search (`label_words`), template edits
(`template_edits`), the pipeline of them `softhard discover` runs (`discovery`), and the Trainer callback that
keeps the best hard prompt when the Hugging Face Trainer trains one."""
