"""Developer scripts; a package so that the tests import `scripts.emulators` by name."""
