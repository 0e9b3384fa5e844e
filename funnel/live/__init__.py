"""The online store: users' live state (recent interactions, dismissals, what was served) and the
event log, in Redis. The events service writes it; the gateway reads it once per request."""
