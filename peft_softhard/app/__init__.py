"""The application: the `softhard` command line, the demo, the built-in and custom tasks, model loading
(short names for the models shipped on PyPI), plots and printed reports."""
