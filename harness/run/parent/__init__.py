"""The parent side of a run: it plans, launches and watches the ranks, judges what they
send, and stores the results; it runs no model itself."""
