"""The names the bus's two sides share: the topic, its dead letters, the projection, the notify channel.

Writers (the bus store, read-your-writes) and the projector both need them; keeping them here means
no writer module imports the projector.
"""

from __future__ import annotations

from typing import Final

DEFAULT_TOPIC: Final = "run-events"
DEAD_LETTER_SUFFIX: Final = ".dead-letters"
DEFAULT_PROJECTION: Final = "main"
# The channel the projector notifies on each commit; writers waiting for read-your-writes listen.
NOTIFY_CHANNEL: Final = "runevents_projected"
# And with a small batch's commit, the seqs it gave: `schema TAB projection TAB topic TAB id:seq,id:seq`,
# so the writers waiting on those events need not read them back. A channel of its own: a writer of an
# earlier version listens for offsets only.
SEQS_CHANNEL: Final = "runevents_projected_seqs"
