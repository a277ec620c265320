"""Before the long run: checks of data, model, optimizer and schedule (``nanscope.check``)."""
