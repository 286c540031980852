"""One module per pipeline stage: the only modules the engines (via cpsl.cli) call."""
