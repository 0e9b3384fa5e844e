"""Exit statuses of every Funnel process: the contract with whoever starts them (the launcher, the
tests, an orchestrator's restart policy). Free of imports, so tooling can read it without the
generated code."""

START_FAILED = 1  # artifacts or the model could not be loaded
CONFIG_ERROR = 2  # settings refused before anything was bound; the output names every problem
# A port this process was given cannot be bound (sysexits' EX_TEMPFAIL): whoever started it may start
# it again on other ports. Every port is bound before health answers, so a process whose health
# answers holds them all.
PORT_IN_USE = 75
