"""The built-in demo job (``nanscope demo``)."""
