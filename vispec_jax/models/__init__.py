"""Target model families. Each family module exposes the same small functional surface."""
