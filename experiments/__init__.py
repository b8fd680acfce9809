"""Thin absl binaries: flags -> config -> one library call."""
