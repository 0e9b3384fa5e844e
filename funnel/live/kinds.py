"""Event types by name and what each does to a user's live state: plain names, so the build can
read exported events without the gRPC code (`funnel/live/schema.py` checks them against the proto)."""

RECENT, DISMISSED, SERVED = "recent", "dismissed", "served"
STATE_OF_TYPE = {
    "impression": SERVED,
    "click": RECENT,
    "view": RECENT,
    "like": RECENT,
    "purchase": RECENT,
    "rating": RECENT,
    "dismiss": DISMISSED,
}
# Types that are interactions for training (an impression is an exposure, a dismissal a refusal).
INTERACTION_TYPES = frozenset(kind for kind, group in STATE_OF_TYPE.items() if group == RECENT)
