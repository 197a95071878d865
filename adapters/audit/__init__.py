"""What auditors and analysts use: the history as CloudEvents, point-in-time replay,
provable read-model rebuilds, and the hash chain's signed digests."""
