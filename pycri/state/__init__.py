"""What the daemon keeps: the metadata store, the records of pods and containers, name reservations, and the
modes of the directories it makes on the host."""
