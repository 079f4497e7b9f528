"""`harness explore`: a hypothesis search over scenarios (harness.scenario) in the parent,
each example run on the ranks through one CaseStream, failures shrunk, explained by their
neighbours, kept as a corpus and stored as a run of kind `explore`."""
